"""Redis Sentinel broker URLs, in the form Celery and kombu document.

``broker_url: sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379/0``
lists the Sentinels (``;`` between them); ``broker_sentinel.master_name`` names the master
they watch (``sentinel monitor NAME ...`` in sentinel.conf). Clients ask the Sentinels
which Redis is the master and ask again after a failover. kombu reads the database number
and the master's credentials from the first address only, so that is where they belong.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SCHEME = "sentinel"
#: The port Sentinels listen on unless told otherwise (kombu's default too).
DEFAULT_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """The Sentinels to ask, and the database and credentials of the master they name."""

    addresses: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def is_sentinel_url(url: str | None) -> bool:
    return url is not None and url.startswith(f"{SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Split a ``sentinel://HOST:PORT[;sentinel://HOST:PORT...][/DB]`` broker URL.

    Raises:
        ValueError: saying which address is wrong and how to write it.
    """
    example = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0"
    addresses: list[tuple[str, int]] = []
    db = 0
    username = password = None
    for index, part in enumerate(url.split(";")):
        if "," in part:
            raise ValueError(
                f"{part!r}: separate the Sentinels with ';', each with its scheme ({example})"
            )
        try:
            split = urlsplit(part.strip())
            port = split.port
        except ValueError as exc:
            raise ValueError(
                f"{part!r} is not a Sentinel address ({exc}); write {example}"
            ) from None
        if split.scheme != SCHEME or not split.hostname:
            raise ValueError(
                f"{part!r} is not a Sentinel address: each one is sentinel://HOST:PORT, "
                f"separated by ';' (for example {example})"
            )
        if split.query or split.fragment:
            raise ValueError(
                f"{part!r}: a Sentinel address takes no '?' or '#' part; put the master's name "
                "in broker_sentinel.master_name"
            )
        path = split.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(
                f"{part!r}: the path is the Redis database number (/0), not {path!r}; put the "
                "master's name in broker_sentinel.master_name"
            )
        if index == 0:
            db = int(path or 0)
            username = unquote(split.username) if split.username else None
            password = unquote(split.password) if split.password is not None else None
        elif (path and int(path) != db) or split.username or split.password:
            # kombu would silently ignore them here: refuse rather than surprise.
            raise ValueError(
                f"{part!r}: the database number and the master's user and password are read "
                "from the first Sentinel address only; write them there"
            )
        addresses.append((split.hostname, port or DEFAULT_PORT))
    return SentinelUrl(tuple(addresses), db, username, password)

"""Sign-in against an LDAP directory or Active Directory (``monitor.ldap``), with ldap3
(imported only where ``monitor.ldap`` is configured).

A user is found by a DN template (a direct bind) or by a search as a service account,
then bound with their own password; their groups (a search under ``group_base`` for
``member``/``uniqueMember``, or their ``memberOf`` attribute) give the role: ``admin``
when in any admin group, else ``read-only`` when in any read-only group, else none (the
sign-in is refused). An empty password is refused before the directory is asked: LDAP
treats a bind with one as an anonymous bind, which succeeds.
"""

from __future__ import annotations

import logging
import math
import ssl
import warnings
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():
    # ldap3 2.9.1 imports names that pyasn1 0.6.2+ marks deprecated (harmless: aliases).
    warnings.filterwarnings(
        "ignore", r"(tagMap|typeMap) is deprecated", category=DeprecationWarning
    )
    from ldap3 import BASE, NONE, SUBTREE, Connection, Server, Tls
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import escape_rdn, parse_dn

from core.settings import MonitorLdapSettings
from monitor.auth import DirectoryUnavailableError

logger = logging.getLogger(__name__)

_INVALID_CREDENTIALS = 49


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    name: str
    dn: str
    #: ``admin``, ``read-only``, or None: in no group that may use the dashboard.
    role: str | None


def _entries(connection: Connection) -> list[dict[str, Any]]:
    """The entries of the connection's last search (not its referrals)."""
    return [e for e in connection.response or [] if e.get("type") == "searchResEntry"]


def _normal(dn: str) -> tuple[tuple[str, str], ...]:
    """A DN to compare: attribute names and values without case, spaces trimmed."""
    try:
        return tuple((a.strip().lower(), v.strip().lower()) for a, v, _sep in parse_dn(dn))
    except LDAPException:
        return (("", dn.strip().lower()),)


class Directory:
    def __init__(self, settings: MonitorLdapSettings) -> None:
        self.settings = settings
        tls = None
        if settings.url.startswith("ldaps://") or settings.start_tls:
            tls = Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=str(settings.ca_certificates) if settings.ca_certificates else None,
            )
        self._tls = tls
        self._roles = {
            role: {_normal(dn) for dn in dns} for role, dns in settings.role_groups.items()
        }

    def authenticate(self, name: str, password: str) -> DirectoryUser | None:
        """The user with their role for a correct name and password, else None.

        Raises:
            DirectoryUnavailableError: the directory is down, slow, or refused the
                service account; the message says which (never the password).
        """
        if not name or not password:
            return None
        try:
            dn = self._find(name)
            if dn is None:
                return None
            user = self._connection(dn, password)
            try:
                if not user.bind():
                    if user.result.get("result") != _INVALID_CREDENTIALS:
                        logger.warning(
                            "monitor: the directory refused a sign-in: %s",
                            user.result.get("description"),
                        )
                    return None
                groups = self._groups(user, dn)
            finally:
                user.unbind()
        except (LDAPException, OSError) as exc:  # OSError: ssl.SSLError, timeouts
            raise DirectoryUnavailableError(
                f"{self.settings.url}: {type(exc).__name__}: {exc}"
            ) from exc
        return DirectoryUser(name, dn, self._role(groups))

    def _connection(self, dn: str | None, password: str | None) -> Connection:
        # A Server per connection: ldap3 keeps per-address state on it (not thread-safe).
        server = Server(
            self.settings.url,
            get_info=NONE,
            tls=self._tls,
            connect_timeout=self.settings.timeout_seconds,
        )
        connection = Connection(
            server,
            user=dn,
            password=password,
            # Whole seconds: ldap3 packs it into SO_RCVTIMEO as an integer.
            receive_timeout=max(1, math.ceil(self.settings.timeout_seconds)),
            raise_exceptions=False,
            read_only=True,
        )
        try:
            connection.open()
        except (LDAPException, OSError):
            # ldap3 leaves the socket of a refused connection open.
            if connection.socket is not None:
                connection.socket.close()
            raise
        if self.settings.start_tls and not connection.start_tls():
            # Never go on unencrypted: the password would cross the network in clear.
            connection.unbind()
            raise DirectoryUnavailableError(
                f"{self.settings.url}: StartTLS failed ({connection.result.get('description')}); "
                "check the directory's certificate and monitor.ldap.ca_certificates"
            )
        return connection

    def _find(self, name: str) -> str | None:
        settings = self.settings
        if settings.bind_dn_template is not None:
            return settings.bind_dn_template.replace("{user}", escape_rdn(name))
        secret = settings.bind_password.get_secret_value() if settings.bind_password else None
        service = self._connection(settings.bind_dn, secret)
        try:
            if not service.bind():
                raise DirectoryUnavailableError(
                    f"{settings.url}: the service account {settings.bind_dn!r} could not bind "
                    f"({service.result.get('description')}); check monitor.ldap.bind_dn and "
                    "bind_password"
                )
            service.search(
                settings.search_base or "",
                settings.search_filter.replace("{user}", escape_filter_chars(name)),
                search_scope=SUBTREE,
                attributes=[],
                size_limit=2,
            )
            found = [str(e["dn"]) for e in _entries(service)]
        finally:
            service.unbind()
        return found[0] if len(found) == 1 else None

    def _groups(self, user: Connection, dn: str) -> list[str]:
        if self.settings.group_base is not None:
            escaped = escape_filter_chars(dn)
            user.search(
                self.settings.group_base,
                f"(|(member={escaped})(uniqueMember={escaped}))",
                search_scope=SUBTREE,
                attributes=[],
            )
            return [str(e["dn"]) for e in _entries(user)]
        user.search(dn, "(objectClass=*)", search_scope=BASE, attributes=["memberOf"])
        groups: list[str] = []
        for entry in _entries(user):
            groups.extend(str(g) for g in entry["attributes"].get("memberOf", []))
        return groups

    def _role(self, groups: list[str]) -> str | None:
        mine = {_normal(g) for g in groups}
        for role in ("admin", "read-only"):
            if mine & self._roles.get(role, set()):
                return role
        return None

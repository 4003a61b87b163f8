"""Password hashes for ``monitor.users[].password_hash`` (scrypt, RFC 7914).

Make one with ``python -m monitor.passwords`` (asks twice, prints the hash); put it in the
configuration instead of the password itself.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import secrets
import sys

#: CPU/memory cost: about 50 ms and 16 MiB per check here, which also slows guessing.
_N, _R, _P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` with a random 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    return "$".join(
        ["scrypt", str(_N), str(_R), str(_P), _b64(salt), _b64(digest)],
    )


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (constant time in the digest)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def main() -> int:
    password = getpass.getpass("password: ")
    if len(password) < 8:
        sys.stderr.write("at least 8 characters, please\n")
        return 1
    if getpass.getpass("again: ") != password:
        sys.stderr.write("the two entries differ\n")
        return 1
    sys.stdout.write(hash_password(password) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

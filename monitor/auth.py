"""Who is asking: users signed in with a session cookie, programs with a bearer token.

* With no users and no tokens configured (allowed only on the loopback interface), every
  visitor is *anonymous*: they may read the dashboard, without accession numbers or UIDs,
  and may not act.
* Otherwise everything but ``/healthz`` and ``/readyz`` needs a user (sign-in form, then
  an ``HttpOnly``, ``SameSite=Strict`` session cookie) or a token
  (``Authorization: Bearer ...``). Roles: ``read-only`` reads everything, ``admin`` may
  also act on jobs.
* Actions are POST requests. With a session cookie they must carry the session's CSRF
  token (form field ``csrf`` or header ``X-CSRF-Token``); a bearer token is not sent by
  browsers on their own, so requests with one need none.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.settings import MonitorSettings
from monitor.passwords import hash_password, verify_password

if TYPE_CHECKING:
    from monitor.directory import Directory

logger = logging.getLogger(__name__)

SESSION_COOKIE = "pacs_ai_session"
ADMIN = "admin"
READ_ONLY = "read-only"
#: Tokens of remote workers: the node's DICOMweb service (``/dicomweb``), nothing else.
WORKER = "worker"
#: Checked against when the user does not exist, so that the answer takes as long.
_DUMMY_HASH = hash_password(secrets.token_hex(16))


class DirectoryUnavailableError(Exception):
    """The sign-in directory (LDAP) could not be reached or would not answer."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    #: ``admin``, ``read-only``, or ``anonymous`` (no authentication configured).
    role: str
    #: ``session``, ``token``, ``cli`` (an operator command) or ``anonymous``.
    via: str
    csrf: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.via != "anonymous"

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


ANONYMOUS = Principal("anonymous", "anonymous", "anonymous")


@dataclass(slots=True)
class _Session:
    principal: Principal
    expires: float


class Authenticator:
    """Checks passwords and tokens, and keeps sessions (in memory: a restart signs out)."""

    def __init__(
        self, settings: MonitorSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._tokens = [
            (hashlib.sha256(t.token.get_secret_value().encode()).digest(), t.name, t.role)
            for t in settings.tokens
        ]
        self.directory: Directory | None = None
        if settings.ldap is not None:
            from monitor.directory import Directory  # noqa: PLC0415 (ldap3 only when used)

            self.directory = Directory(settings.ldap)

    @property
    def required(self) -> bool:
        return self.settings.requires_authentication

    def sign_in(self, name: str, password: str) -> tuple[str, Principal] | None:
        """A new session for a correct user name and password, else None."""
        user = next((u for u in self.settings.users if u.name == name), None)
        if user is None:
            verify_password(password, _DUMMY_HASH)
            return None
        # Hashed passwords only (a plaintext one is refused by the settings), so a known
        # and an unknown name cost the same scrypt check.
        stored = user.password_hash.get_secret_value() if user.password_hash else _DUMMY_HASH
        ok = verify_password(password, stored) and user.password_hash is not None
        if not ok:
            return None
        return self.open_session(user.name, user.role)

    def is_local(self, name: str) -> bool:
        """Whether ``name`` is in ``monitor.users`` (then never asked of the directory)."""
        return any(u.name == name for u in self.settings.users)

    def sign_in_with_directory(self, name: str, password: str) -> tuple[str, Principal] | None:
        """A new session for a directory user in a mapped group, else None.

        Raises:
            DirectoryUnavailableError: the directory could not be asked.
        """
        if self.directory is None or self.is_local(name):
            return None
        found = self.directory.authenticate(name, password)
        if found is None:
            return None
        if found.role is None:
            logger.warning(
                "monitor: directory user %r is in no group of monitor.ldap.role_groups; "
                "sign-in refused",
                name,
            )
            return None
        return self.open_session(found.name, found.role)

    def open_session(self, name: str, role: str) -> tuple[str, Principal]:
        session_id = secrets.token_urlsafe(32)
        principal = Principal(name, role, "session", csrf=secrets.token_urlsafe(32))
        expires = self._clock() + self.settings.session_hours * 3600
        with self._lock:
            self._forget_expired()
            self._sessions[session_id] = _Session(principal, expires)
        return session_id, principal

    def sign_out(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def from_session(self, session_id: str | None) -> Principal | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.expires < self._clock():
                self._sessions.pop(session_id, None)
                return None
            return session.principal

    def from_token(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for expected, name, role in self._tokens:
            # Compare with every token, so that timing tells nothing about which matched.
            if hmac.compare_digest(digest, expected):
                found = Principal(name, role, "token")
        return found

    def identify(self, *, authorization: str | None, session_id: str | None) -> Principal | None:
        """The principal of a request, ANONYMOUS where no authentication is configured, or
        None: not authenticated (answer 401)."""
        if not self.required:
            return ANONYMOUS
        if authorization:
            scheme, _sep, credentials = authorization.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return self.from_token(credentials.strip())
            return None
        return self.from_session(session_id)

    @staticmethod
    def csrf_ok(principal: Principal, supplied: str | None) -> bool:
        """Whether a state-changing request from ``principal`` carries its CSRF token."""
        if principal.via != "session":
            return True
        return (
            principal.csrf is not None
            and supplied is not None
            and hmac.compare_digest(principal.csrf.encode(), supplied.encode())
        )

    def _forget_expired(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]

"""What every page group shares: the services, who is asking (FastAPI dependencies for
the role checks), the CSRF check, form reading and the Jinja2 environment."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from core.settings import Settings
from monitor.actions import JobActions
from monitor.auth import WORKER, Authenticator, Principal
from monitor.formatting import redact, seconds, size, when
from monitor.metrics import MetricsEndpoint
from monitor.pulls import Pulls
from monitor.readings import Readings
from monitor.web.throttle import SignInThrottle

#: Largest request body accepted (sign-in and action forms are far smaller).
MAX_BODY = 64 * 1024
#: Password checks (scrypt, 16 MiB each) running at once; more wait their turn, so that a
#: burst of sign-ins cannot take the node's memory and CPU from the DICOM side.
PASSWORD_CHECKS_AT_ONCE = 2
SESSION_KEY = "sid"

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Services:
    settings: Settings
    readings: Readings
    actions: JobActions
    auth: Authenticator
    metrics: MetricsEndpoint
    throttle: SignInThrottle
    tls: bool
    #: Studies pulled from a PACS: listed with their progress, started by accession.
    pulls: Pulls
    password_checks: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(PASSWORD_CHECKS_AT_ONCE)
    )

    @property
    def title(self) -> str:
        return self.settings.node.ae_title


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class SignInRequiredError(Exception):
    """A page asked for without a session: answered with a redirect to the sign-in form."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class PageError(Exception):
    """A page-side refusal: answered as a plain-text page with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]


def identify(request: Request, svc: Services) -> Principal | None:
    session_id = request.session.get(SESSION_KEY) if "session" in request.scope else None
    return svc.auth.identify(
        authorization=request.headers.get("authorization"),
        session_id=session_id if isinstance(session_id, str) else None,
    )


def page_principal(request: Request, svc: ServicesDep) -> Principal:
    principal = identify(request, svc)
    if principal is None:
        raise SignInRequiredError(request.url.path)
    if principal.role == WORKER:
        raise PageError(403, "a worker token serves DICOMweb only")
    return principal


def api_principal(request: Request, svc: ServicesDep) -> Principal:
    principal = identify(request, svc)
    if principal is None:
        raise ApiError(
            401, "authentication required", {"WWW-Authenticate": 'Bearer realm="pacs-ai"'}
        )
    if principal.role == WORKER:
        # A remote worker's token opens the spool over DICOMweb, not the dashboard.
        raise ApiError(403, "a worker token serves DICOMweb only")
    return principal


PagePrincipal = Annotated[Principal, Depends(page_principal)]
ApiPrincipal = Annotated[Principal, Depends(api_principal)]


async def form_of(request: Request) -> dict[str, str]:
    """The request's form fields (urlencoded, multipart or a JSON object), as strings."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    if not content_type:
        return {}
    form = await request.form(max_files=0, max_fields=50)
    return {k: v for k, v in form.items() if isinstance(v, str)}


def csrf_refusal(request: Request, principal: Principal, form: dict[str, str]) -> str | None:
    """Why a state-changing request is refused (cross-site, or without the session's CSRF
    token), or None. Bearer-token requests need no token: browsers never send one."""
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin and origin != "null" and urlsplit(origin).netloc != host:
        return "cross-origin request refused"
    supplied = request.headers.get("x-csrf-token") or form.get("csrf")
    if not Authenticator.csrf_ok(principal, supplied):
        return "missing or wrong CSRF token; reload the page"
    return None


def safe_next(path: str) -> str:
    """A local path to return to after signing in: never another site, never a control
    character (CR/LF could otherwise split the Location header)."""
    if (
        not path.startswith("/")
        or path.startswith("//")
        or "\\" in path
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
    ):
        return "/"
    return path


def login_url(path: str) -> str:
    return "/login?next=" + quote(safe_next(path), safe="/")


def remote(request: Request) -> str:
    return request.client.host if request.client else "-"


# -- templates ------------------------------------------------------------------------------


def _when(at: float | None, now: float | None = None) -> Markup:
    return when(at, now=now)


def make_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = seconds
    env.filters["size"] = size
    env.filters["redact"] = lambda text, show: redact(text, show=show)
    return env


ENVIRONMENT = make_environment()


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    page = ENVIRONMENT.get_template(template).render(**context)
    return HTMLResponse(page, status_code=status)


def json_answer(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)

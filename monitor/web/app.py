"""The monitor's web application: FastAPI routes, Jinja2 pages, maintained middleware.

================================ ====== ===================================================
path                             method what
================================ ====== ===================================================
``/``                            GET    overview: jobs, charts, queues, workers, destinations
``/jobs/<id>``                   GET    one job: stages, history, outbox, actions
``/jobs/<id>/<action>``          POST   retry, resend, discard, release (admin, CSRF token)
``/pulls``                       POST   start a run for a study found by accession (admin)
``/audit``                       GET    the audit log
``/login``, ``/logout``          POST   sessions (a GET of /login shows the form)
``/api/jobs[/<id>]``             GET    JSON (``?state=FAILED&limit=50``)
``/api/jobs/<id>/<action>``      POST   JSON actions (admin token, or session + X-CSRF-Token)
``/api/queues`` ...              GET    also ``/api/workers``, ``/api/destinations``,
                                        ``/api/summary``, ``/api/audit``
``/api/docs``, ``/api/openapi.json`` GET the API's description and OpenAPI schema
``/metrics``                     GET    Prometheus text format
``/healthz``, ``/readyz``        GET    JSON; never need authentication
``/dicomweb/...``                GET    WADO-RS of the spool, and POST STOW-RS of results,
                                        for remote workers (``worker`` tokens only; see
                                        :mod:`monitor.web.dicomweb`)
================================ ====== ===================================================

Around the routes: the request-size limit (413 before any body is read), the Host check
(Starlette's TrustedHostMiddleware), signed session cookies (SessionMiddleware with
itsdangerous) and the security headers on every answer.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.ledger import Ledger
from core.queue import BrokerInspector
from core.settings import Settings
from monitor.actions import JobActions
from monitor.assets import REFRESH_SCRIPT, STYLE
from monitor.auth import SESSION_COOKIE, Authenticator
from monitor.health import readiness
from monitor.metrics import MetricsEndpoint, NodeStats
from monitor.pulls import Pulls, PullStarter
from monitor.readings import Readings
from monitor.web import api, dicomweb, login, models, pulls, views
from monitor.web.common import (
    MAX_BODY,
    ApiError,
    PageError,
    Services,
    SignInRequiredError,
    login_url,
    render,
)
from monitor.web.throttle import SignInThrottle

logger = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
_LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP answer (pure ASGI, no body buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _v in message.get("headers", [])}
                extra = [
                    (k.encode(), v.encode())
                    for k, v in SECURITY_HEADERS.items()
                    if k.encode() not in present
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses bodies over ``limit`` bytes: at once when ``Content-Length`` says so (no
    byte of the body read), else while a chunked body arrives. Malformed lengths
    (``-1``, ``1e9``) are refused by the HTTP parser (h11) before this. ``larger``: path
    prefixes with a limit of their own (STOW-RS uploads of result objects)."""

    def __init__(
        self, app: ASGIApp, *, limit: int = MAX_BODY, larger: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = next((n for p, n in self.larger.items() if path.startswith(p)), self.limit)
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                answer = PlainTextResponse(
                    f"request body over {limit} bytes refused", status_code=413
                )
                answer.headers["connection"] = "close"
                await answer(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(413, f"request body over {limit} bytes")
            return message

        await self.app(scope, counted, send)


def allowed_hosts(settings: Settings) -> list[str]:
    """Host header values accepted: the monitor's own address and the loopback names;
    any when it listens on every interface (the tokens and sessions protect it then)."""
    host = settings.monitor.host
    if host in ("0.0.0.0", "::", "") or ":" in host:  # noqa: S104 -- compared, not bound
        return ["*"]
    return list(dict.fromkeys([host, *_LOOPBACK_NAMES]))


def create_app(
    settings: Settings,
    ledger: Ledger,
    *,
    inspector: BrokerInspector | None,
    node_stats: NodeStats | None = None,
    tls: bool = False,
    pull_starter: PullStarter | None = None,
) -> FastAPI:
    readings = Readings(settings, ledger, inspector=inspector)
    services = Services(
        settings=settings,
        readings=readings,
        actions=JobActions(ledger, node=settings.node.name),
        auth=Authenticator(settings.monitor),
        metrics=MetricsEndpoint(readings, node_stats=node_stats),
        throttle=SignInThrottle(),
        tls=tls,
        pulls=Pulls(settings, ledger, starter=pull_starter),
    )
    app = FastAPI(
        title=f"pacs-ai {settings.node.ae_title} monitor",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.include_router(views.router)
    app.include_router(login.router)
    app.include_router(api.router)
    app.include_router(pulls.router)
    app.include_router(models.router)
    app.include_router(dicomweb.router)
    _public_routes(app, services)
    _error_handlers(app)
    # Added innermost first: the body limit and the security headers wrap everything.
    app.add_middleware(
        SessionMiddleware,
        secret_key=secrets.token_urlsafe(32),
        session_cookie=SESSION_COOKIE,
        max_age=int(settings.monitor.session_hours * 3600),
        same_site="strict",
        https_only=tls,
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(settings))
    app.add_middleware(SecurityHeaders)
    # Uploads of result objects (STOW-RS) are bounded per object and in number.
    uploads = {"/dicomweb/": dicomweb.MAX_UPLOAD_OBJECTS * settings.node.max_instance_bytes}
    app.add_middleware(BodyLimit, limit=MAX_BODY, larger=uploads)
    return app


def _public_routes(app: FastAPI, services: Services) -> None:
    @app.get("/healthz", summary="Liveness: always ok while the process answers")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "time": time.time()}

    @app.get("/readyz", summary="Readiness: ledger, broker, disk, workers")
    def readyz() -> JSONResponse:
        checks = readiness(services.readings)
        ready = all(c.ok for c in checks)
        body = {
            "ready": ready,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/static/style.css", include_in_schema=False)
    def style() -> Response:
        return Response(STYLE, media_type="text/css; charset=utf-8")

    @app.get("/static/refresh.js", include_in_schema=False)
    def script() -> Response:
        return Response(REFRESH_SCRIPT, media_type="text/javascript; charset=utf-8")

    @app.get("/api/docs", include_in_schema=False)
    def docs() -> Response:
        endpoints = [
            (method, path, operation.get("summary", ""))
            for path, item in app.openapi().get("paths", {}).items()
            for method, operation in item.items()
        ]
        return render("api_docs.html", title=services.title, endpoints=[
            (m.upper(), p, s) for m, p, s in endpoints
        ])  # fmt: skip


def _is_api(request: Request) -> bool:
    path = request.url.path
    return path.startswith("/api/") or path == "/metrics"


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> Response:
        return api.error_response(error)

    @app.exception_handler(SignInRequiredError)
    async def sign_in_required(_request: Request, error: SignInRequiredError) -> Response:
        return RedirectResponse(login_url(error.path), status_code=303)

    @app.exception_handler(PageError)
    async def page_error(_request: Request, error: PageError) -> Response:
        return PlainTextResponse(error.message, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        text = "not found" if error.status_code == 404 else str(error.detail)
        if _is_api(request):
            return JSONResponse({"error": text}, status_code=error.status_code)
        return PlainTextResponse(text, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> Response:
        return JSONResponse({"error": str(error.errors()[:3])}, status_code=400)

    @app.exception_handler(Exception)
    async def failed(request: Request, _error: Exception) -> Response:
        logger.error("monitor: %s %s failed", request.method, request.url.path)
        return PlainTextResponse("internal error (see the node's log)", status_code=500)

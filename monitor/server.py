"""The monitor's HTTP server: dashboard pages, JSON API, ``/metrics``, health endpoints.

Runs inside ``pacs-ai serve`` on ``monitor.host:monitor.port`` with the standard
library's threaded HTTP server (one thread per connection; no web framework and no
front-end build). Routes:

=========================== ====== =========================================================
path                        method what
=========================== ====== =========================================================
``/``                       GET    overview: jobs, charts, queues, workers, destinations
``/jobs/<id>``              GET    one job: stages, history, outbox, actions
``/jobs/<id>/<action>``     POST   retry, resend, discard, release (admin, CSRF token)
``/audit``                  GET    the audit log
``/login``, ``/logout``     POST   sessions (a GET of /login shows the form)
``/api/jobs[/<id>]``        GET    JSON (``?state=FAILED&limit=50``)
``/api/jobs/<id>/<action>`` POST   JSON actions (admin token, or session + X-CSRF-Token)
``/api/queues``             GET    queue depths; also ``/api/workers``, ``/api/destinations``,
                                   ``/api/summary``, ``/api/audit``
``/metrics``                GET    Prometheus text format
``/healthz``, ``/readyz``   GET    JSON; never need authentication
=========================== ====== =========================================================
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from core.errors import ConfigError
from core.ledger import Ledger, UnknownJobError
from core.queue import BrokerInspector
from core.settings import Settings
from monitor import api, pages
from monitor.actions import ActionRefusedError, JobActions
from monitor.assets import REFRESH_SCRIPT, STYLE
from monitor.auth import SESSION_COOKIE, Authenticator, Principal
from monitor.health import readiness
from monitor.metrics import MetricsEndpoint, NodeStats
from monitor.readings import DISPLAY_STATES, Readings

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    remote: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def param(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]

    def form(self) -> dict[str, str]:
        content_type = self.header("Content-Type") or ""
        if content_type.startswith("application/json"):
            try:
                data = json.loads(self.body or b"{}")
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    def cookie(self, name: str) -> str | None:
        try:
            jar = SimpleCookie(self.header("Cookie") or "")
        except CookieError:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel is not None else None


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, indent=1, sort_keys=False).encode()
    return Response(status, body, "application/json")


def _redirect(location: str, **headers: str) -> Response:
    return Response(HTTPStatus.SEE_OTHER, b"", headers={"Location": location, **headers})


class MonitorApp:
    """Routes requests; independent of the HTTP plumbing below."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        inspector: BrokerInspector | None,
        node_stats: NodeStats | None = None,
        tls: bool = False,
    ) -> None:
        self.settings = settings
        self.monitor = settings.monitor
        self.readings = Readings(settings, ledger, inspector=inspector)
        self.actions = JobActions(ledger)
        self.auth = Authenticator(settings.monitor)
        self.metrics = MetricsEndpoint(self.readings, node_stats=node_stats)
        self.tls = tls
        self.title = settings.node.ae_title

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if request.method == "GET":
            public = self._public(path)
            if public is not None:
                return public
        if path == "/login":
            return self._login(request)
        return self._protected(request, path)

    def _protected(self, request: Request, path: str) -> Response:
        parts = [p for p in path.split("/") if p]
        is_api = parts[:1] == ["api"] or path == "/metrics"
        principal = self.auth.identify(
            authorization=request.header("Authorization"),
            session_id=request.cookie(SESSION_COOKIE),
        )
        if principal is None:
            return _unauthenticated(request, api=is_api)
        if request.method == "POST":
            refusal = self._check_post(request, principal, api=is_api)
            if refusal is not None:
                return refusal
        if is_api:
            return self._api(request, principal, parts[1:] if parts[0] == "api" else parts)
        if request.method == "POST":
            return self._page_post(request, principal, path, parts)
        return self._page(request, principal, path, parts)

    def _public(self, path: str) -> Response | None:
        if path == "/healthz":
            return _json({"status": "ok", "time": time.time()})
        if path == "/readyz":
            checks = readiness(self.readings)
            ready = all(c.ok for c in checks)
            body = {
                "ready": ready,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
            }
            return _json(body, 200 if ready else HTTPStatus.SERVICE_UNAVAILABLE)
        if path == "/static/style.css":
            return Response(200, STYLE.encode(), "text/css; charset=utf-8")
        if path == "/static/refresh.js":
            return Response(200, REFRESH_SCRIPT.encode(), "text/javascript; charset=utf-8")
        return None

    def _check_post(self, request: Request, principal: Principal, *, api: bool) -> Response | None:
        origin = request.header("Origin")
        host = request.header("Host") or ""
        if origin and origin != "null" and urlsplit(origin).netloc != host:
            return self._forbidden("cross-origin request refused", api=api)
        supplied = request.header("X-CSRF-Token") or request.form().get("csrf")
        if not self.auth.csrf_ok(principal, supplied):
            return self._forbidden("missing or wrong CSRF token; reload the page", api=api)
        return None

    def _forbidden(self, message: str, *, api: bool) -> Response:
        if api:
            return _json({"error": message}, HTTPStatus.FORBIDDEN)
        return Response(HTTPStatus.FORBIDDEN, message.encode(), "text/plain; charset=utf-8")

    def _context(self, principal: Principal) -> pages.Context:
        return pages.Context(
            principal=principal,
            title=self.title,
            now=self.readings.now(),
            refresh_seconds=self.monitor.refresh_seconds,
            auth_required=self.auth.required,
        )

    # -- sessions --------------------------------------------------------------------------

    def _login(self, request: Request) -> Response:
        if not self.auth.required:
            return _redirect("/")
        next_path = _safe_next(request.param("next", "/"))
        if request.method != "POST":
            return _html(pages.login_page(self.title, next_path=next_path, failed=False))
        form = request.form()
        name = form.get("user", "")[:64]
        signed_in = self.auth.sign_in(name, form.get("password", ""))
        outcome = "ok" if signed_in else "failed"
        who = Principal(name or "(none)", signed_in[1].role if signed_in else "-", "session")
        self.actions.audit(who, "login", None, outcome, remote=request.remote)
        if signed_in is None:
            logger.warning("monitor: failed sign-in for %r from %s", name, request.remote)
            page = pages.login_page(
                self.title, next_path=_safe_next(form.get("next", "/")), failed=True
            )
            return _html(page, HTTPStatus.UNAUTHORIZED)
        session_id, _principal = signed_in
        cookie = (
            f"{SESSION_COOKIE}={session_id}; HttpOnly; SameSite=Strict; Path=/; "
            f"Max-Age={int(self.monitor.session_hours * 3600)}"
        )
        if self.tls:
            cookie += "; Secure"
        return _redirect(_safe_next(form.get("next", "/")), **{"Set-Cookie": cookie})

    # -- pages -----------------------------------------------------------------------------

    def _page_post(
        self, request: Request, principal: Principal, path: str, parts: list[str]
    ) -> Response:
        if path == "/logout":
            session_id = request.cookie(SESSION_COOKIE)
            if session_id:
                self.auth.sign_out(session_id)
            expired = f"{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
            return _redirect("/login" if self.auth.required else "/", **{"Set-Cookie": expired})
        if len(parts) == 3 and parts[0] == "jobs":
            return self._page_action(request, principal, parts[1], parts[2])
        ctx = self._context(principal)
        return _html(pages.message_page(ctx, "Not found", path), HTTPStatus.NOT_FOUND)

    def _page(
        self, request: Request, principal: Principal, path: str, parts: list[str]
    ) -> Response:
        ctx = self._context(principal)
        if path == "/":
            return _html(pages.overview_page(ctx, self._overview(request, principal)))
        if len(parts) == 2 and parts[0] == "jobs":
            return self._job_page(ctx, parts[1], flash=pages.ACTION_DONE.get(request.param("did")))
        if path == "/audit":
            if not principal.authenticated:
                return _html(
                    pages.message_page(ctx, "Audit log", "Sign-in is not configured."),
                    HTTPStatus.FORBIDDEN,
                )
            return _html(pages.audit_page(ctx, self.readings.audit(limit=500)))
        return _html(pages.message_page(ctx, "Not found", path), HTTPStatus.NOT_FOUND)

    def _overview(self, request: Request, principal: Principal) -> pages.Overview:
        chosen = request.param("filter", "all")
        chosen = chosen if chosen in pages.FILTERS else "all"
        jobs = self.readings.jobs(limit=self.monitor.jobs_shown, states=pages.FILTERS[chosen])
        accessions = (
            self.readings.accession_numbers({j.series_uid for j in jobs})
            if principal.authenticated
            else {}
        )
        now = self.readings.now()
        try:
            disk = self.readings.disk()
        except OSError:
            disk = None
        return pages.Overview(
            jobs=jobs,
            accessions=accessions,
            counts=self.readings.job_counts(),
            queues=self.readings.queues(),
            workers=self.readings.workers(),
            destinations=self.readings.destinations(),
            finished=self.readings.finished_since(now - self.monitor.chart_hours * 3600),
            chart_hours=self.monitor.chart_hours,
            readiness=readiness(self.readings),
            disk=disk,
            filter=chosen,
            held=self.readings.jobs(limit=self.monitor.jobs_shown, states=["NEEDS_REVIEW"]),
        )

    def _job_page(
        self,
        ctx: pages.Context,
        job_id: str,
        *,
        flash: str | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        detail = self.readings.job(job_id)
        if detail is None:
            return _html(
                pages.message_page(ctx, "Not found", f"no job {job_id}"), HTTPStatus.NOT_FOUND
            )
        show = ctx.principal.authenticated
        accession = (
            self.readings.accession_numbers([detail.job.series_uid]).get(detail.job.series_uid)
            if show
            else None
        )
        audit = self.readings.audit(job_id=job_id, limit=50) if show else []
        page = pages.job_page(
            ctx, detail, accession=accession, audit=audit, flash=flash, error=error
        )
        return _html(page, status)

    def _page_action(
        self, request: Request, principal: Principal, job_id: str, action: str
    ) -> Response:
        ctx = self._context(principal)
        try:
            self.actions.perform(
                action,
                job_id,
                principal,
                reason=request.form().get("reason", ""),
                remote=request.remote,
            )
        except PermissionError as exc:
            return self._job_page(ctx, job_id, error=str(exc), status=HTTPStatus.FORBIDDEN)
        except UnknownJobError as exc:
            return _html(pages.message_page(ctx, "Not found", str(exc)), HTTPStatus.NOT_FOUND)
        except ActionRefusedError as exc:
            return self._job_page(ctx, job_id, error=str(exc), status=HTTPStatus.CONFLICT)
        return _redirect(f"/jobs/{job_id}?did={action}")

    # -- API -------------------------------------------------------------------------------

    def _api(self, request: Request, principal: Principal, parts: list[str]) -> Response:
        if request.method == "POST":
            if len(parts) == 3 and parts[0] == "jobs":
                return self._api_action(request, principal, parts[1], parts[2])
            return _json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        if len(parts) == 2 and parts[0] == "jobs":
            return self._api_job(principal, parts[1])
        handler = {
            "metrics": self._api_metrics,
            "jobs": self._api_jobs,
            "queues": self._api_queues,
            "workers": self._api_workers,
            "destinations": self._api_destinations,
            "summary": self._api_summary,
            "audit": self._api_audit,
        }.get("/".join(parts))
        if handler is None:
            return _json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        return handler(request, principal)

    def _api_metrics(self, _request: Request, _principal: Principal) -> Response:
        return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    def _api_jobs(self, request: Request, principal: Principal) -> Response:
        show = principal.authenticated
        states = [s for s in request.query.get("state", []) if s in DISPLAY_STATES] or None
        try:
            limit = max(1, min(1000, int(request.param("limit", "50"))))
        except ValueError:
            return _json({"error": "limit: a number, please"}, HTTPStatus.BAD_REQUEST)
        jobs = self.readings.jobs(limit=limit, states=states)
        accessions = self.readings.accession_numbers(j.series_uid for j in jobs) if show else {}
        return _json(
            {
                "jobs": [
                    api.job_json(j, identifiers=show, accession=accessions.get(j.series_uid))
                    for j in jobs
                ]
            }
        )

    def _api_job(self, principal: Principal, job_id: str) -> Response:
        show = principal.authenticated
        detail = self.readings.job(job_id)
        if detail is None:
            return _json({"error": f"no job {job_id}"}, HTTPStatus.NOT_FOUND)
        uid = detail.job.series_uid
        accession = self.readings.accession_numbers([uid]).get(uid) if show else None
        return _json(api.job_detail_json(detail, identifiers=show, accession=accession))

    def _api_queues(self, _request: Request, _principal: Principal) -> Response:
        return _json(api.queues_json(self.readings.queues()))

    def _api_workers(self, _request: Request, _principal: Principal) -> Response:
        return _json({"workers": api.workers_json(self.readings.workers())})

    def _api_destinations(self, _request: Request, principal: Principal) -> Response:
        views = self.readings.destinations()
        shown = api.destinations_json(views, identifiers=principal.authenticated)
        return _json({"destinations": shown})

    def _api_summary(self, _request: Request, _principal: Principal) -> Response:
        counts = self.readings.job_counts()
        checks = readiness(self.readings)
        return _json(
            {
                "jobs": [
                    {"state": s, "model": m, "count": n} for (s, m), n in sorted(counts.items())
                ],
                "ready": all(c.ok for c in checks),
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
            }
        )

    def _api_audit(self, _request: Request, principal: Principal) -> Response:
        if not principal.authenticated:
            return _json({"error": "sign-in is not configured"}, HTTPStatus.FORBIDDEN)
        return _json({"audit": api.audit_json(self.readings.audit(limit=500))})

    def _api_action(
        self, request: Request, principal: Principal, job_id: str, action: str
    ) -> Response:
        try:
            result = self.actions.perform(
                action,
                job_id,
                principal,
                reason=request.form().get("reason", ""),
                remote=request.remote,
            )
        except PermissionError as exc:
            return _json({"error": str(exc)}, HTTPStatus.FORBIDDEN)
        except UnknownJobError as exc:
            return _json({"error": str(exc)}, HTTPStatus.NOT_FOUND)
        except ActionRefusedError as exc:
            return _json({"error": str(exc)}, HTTPStatus.CONFLICT)
        return _json({"ok": True, "action": action, "job_id": job_id, "message": result.message})


def _unauthenticated(request: Request, *, api: bool) -> Response:
    if api:
        return Response(
            HTTPStatus.UNAUTHORIZED,
            json.dumps({"error": "authentication required"}).encode(),
            "application/json",
            {"WWW-Authenticate": 'Bearer realm="pacs-ai"'},
        )
    return _redirect(f"/login?next={_safe_next(request.path)}")


def _html(page: str, status: int = 200) -> Response:
    return Response(status, page.encode())


def _safe_next(path: str) -> str:
    """A local path to return to after signing in (never another site)."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


# -- HTTP plumbing -----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30
    server_version = "pacs-ai-monitor"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_HEAD(self) -> None:
        self._serve("GET", head=True)

    def _serve(self, method: str, *, head: bool = False) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(Response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"too large"), head=head)
            return
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        request = Request(
            method=method,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            remote=str(self.client_address[0]),
        )
        try:
            response = self.server.app.handle(request)
        except Exception:
            logger.exception("monitor: %s %s failed", method, split.path)
            response = Response(500, b"internal error (see the node's log)", "text/plain")
        self._send(response, head=head)

    def _send(self, response: Response, *, head: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in {**_SECURITY_HEADERS, **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- base signature
        logger.debug("monitor: %s %s", self.client_address[0], format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: MonitorApp, *, ipv6: bool) -> None:
        self.address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up or fails the TLS handshake (plain HTTP to the HTTPS port)
        # is the client's problem: one debug line, no traceback on stderr.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            logger.debug("monitor: connection from %s failed: %s", client_address, error)
            return
        logger.error("monitor: request from %s failed", client_address, exc_info=error)


class MonitorServer:
    """The monitor, started and stopped with the node (``pacs-ai serve``)."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        inspector: BrokerInspector | None,
        node_stats: NodeStats | None = None,
    ) -> None:
        self.settings = settings
        tls = settings.monitor.tls
        self.app = MonitorApp(
            settings, ledger, inspector=inspector, node_stats=node_stats, tls=tls is not None
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the monitor is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.monitor.tls else "http"
        host = self.settings.monitor.host
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{self.port}/"

    def start(self) -> None:
        """Listen and serve in a background thread.

        Raises:
            ConfigError: the port cannot be bound (in use, or not allowed).
        """
        monitor = self.settings.monitor
        try:
            server = _Server((monitor.host, monitor.port), self.app, ipv6=":" in monitor.host)
        except OSError as exc:
            raise ConfigError(
                "monitor",
                [
                    f"monitor.port: cannot listen on {monitor.host}:{monitor.port} ({exc}); "
                    "choose another monitor.port, or set monitor.enabled: false"
                ],
            ) from exc
        if monitor.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(monitor.tls.certificate, monitor.tls.private_key)
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="monitor", daemon=True
        )
        self._thread.start()
        logger.info("monitor (dashboard, /metrics, /readyz) on %s", self.url)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

"""Signing in and out: the form, the session (Starlette's SessionMiddleware, signed with
itsdangerous, holding only a server-side session id so that signing out revokes it), the
rate limit and the audit lines."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from monitor.auth import DirectoryUnavailableError, Principal
from monitor.web.common import (
    SESSION_KEY,
    PageError,
    PagePrincipal,
    Services,
    ServicesDep,
    csrf_refusal,
    form_of,
    remote,
    render,
    safe_next,
)

logger = logging.getLogger(__name__)
router = APIRouter()

WRONG = "Wrong user name or password."
DIRECTORY_DOWN = (
    "The sign-in directory (LDAP) cannot be reached just now; try again in a minute, or "
    "ask an administrator (a local user can still sign in)."
)


def _form(svc: Services, next_path: str, failed: str | None, status: int = 200) -> HTMLResponse:
    return render("login.html", status, title=svc.title, next_path=next_path, failed=failed)


@router.get("/login", include_in_schema=False)
def login_form(request: Request, svc: ServicesDep) -> Response:
    if not svc.auth.required:
        return RedirectResponse("/", status_code=303)
    return _form(svc, safe_next(request.query_params.get("next", "/")), None)


@router.post("/login", include_in_schema=False)
async def login(request: Request, svc: ServicesDep) -> Response:
    if not svc.auth.required:
        return RedirectResponse("/", status_code=303)
    form = await form_of(request)
    name = form.get("user", "")[:64]
    next_path = safe_next(form.get("next", request.query_params.get("next", "/")))
    peer = remote(request)
    hold = svc.throttle.held(name, peer)
    if hold is not None:
        wait = max(1, round(hold.seconds))
        page = _form(svc, next_path, f"Too many failed sign-ins; try again in {wait} s.", 429)
        page.headers["Retry-After"] = str(wait)
        return page
    try:
        signed_in = await run_in_threadpool(_check, svc, name, form.get("password", ""))
    except DirectoryUnavailableError as exc:
        logger.warning("monitor: sign-in directory unavailable (%s)", exc)
        who = Principal(name or "(none)", "-", "session")
        await run_in_threadpool(
            svc.actions.audit, who, "login", None, "directory-unavailable", remote=peer
        )
        return _form(svc, next_path, DIRECTORY_DOWN, 503)
    who = Principal(name or "(none)", signed_in[1].role if signed_in else "-", "session")
    if signed_in is None:
        started = svc.throttle.failed(name, peer)
        await run_in_threadpool(svc.actions.audit, who, "login", None, "failed", remote=peer)
        for burst in started:
            detail = {"held": burst.key.partition(":")[0], "seconds": round(burst.seconds)}
            await run_in_threadpool(
                svc.actions.audit, who, "login-throttled", None, "held", detail=detail, remote=peer
            )
            logger.warning(
                "monitor: repeated failed sign-ins (%s from %s); answering them with delays",
                burst.key, peer,
            )  # fmt: skip
        logger.warning("monitor: failed sign-in for %r from %s", name, peer)
        return _form(svc, next_path, WRONG, 401)
    svc.throttle.succeeded(name, peer)
    await run_in_threadpool(svc.actions.audit, who, "login", None, "ok", remote=peer)
    session_id, _principal = signed_in
    old = request.session.get(SESSION_KEY)
    if isinstance(old, str):
        svc.auth.sign_out(old)
    request.session.clear()
    request.session[SESSION_KEY] = session_id
    return RedirectResponse(next_path, status_code=303)


def _check(svc: Services, name: str, password: str) -> tuple[str, Principal] | None:
    """The password check, a few at a time (scrypt takes 16 MiB and ~50 ms each), then,
    for a name that is not a local user, the directory (outside the scrypt limit: it may
    wait for the network). Every attempt costs one scrypt check, local name or not."""
    with svc.password_checks:
        signed_in = svc.auth.sign_in(name, password)
    if signed_in is None and svc.auth.directory is not None:
        return svc.auth.sign_in_with_directory(name, password)
    return signed_in


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, svc: ServicesDep, principal: PagePrincipal) -> Response:
    form = await form_of(request)
    refusal = csrf_refusal(request, principal, form)
    if refusal is not None:
        raise PageError(403, refusal)
    session_id = request.session.get(SESSION_KEY)
    if isinstance(session_id, str):
        svc.auth.sign_out(session_id)
    request.session.clear()
    return RedirectResponse("/login" if svc.auth.required else "/", status_code=303)

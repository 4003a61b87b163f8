"""Talking to the monitor over HTTP in tests: plain requests (redirects not followed)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any


class Headers(dict[str, str]):
    """Response headers; names compare without case, as in HTTP."""

    def __init__(self, items: Any) -> None:
        super().__init__((str(k).lower(), str(v)) for k, v in items)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


@dataclass
class Answer:
    status: int
    body: bytes
    headers: Headers

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def call(
    url: str,
    *,
    method: str = "GET",
    token: str | None = None,
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One HTTP request, redirects not followed, errors returned as answers."""
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    if body is not None:
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=body, headers=sent, method=method)  # noqa: S310
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return Answer(response.status, response.read(), Headers(response.headers.items()))
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.read(), Headers(error.headers.items()))


def sign_in_form(base_url: str, user: str, password: str) -> tuple[str, str]:
    """Sign in with the form; returns the session cookie and the CSRF token of the page."""
    answer = call(f"{base_url}/login", method="POST", data={"user": user, "password": password})
    assert answer.status == 303, answer.text
    cookie = SimpleCookie(answer.headers["Set-Cookie"])["pacs_ai_session"].value
    # Cookie attribute names compare without case (RFC 6265).
    assert "httponly" in answer.headers["Set-Cookie"].lower()
    assert "samesite=strict" in answer.headers["Set-Cookie"].lower()
    page = call(f"{base_url}/", headers={"Cookie": f"pacs_ai_session={cookie}"})
    assert page.status == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    return cookie, match.group(1)

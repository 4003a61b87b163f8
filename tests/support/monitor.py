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


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

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
            return Answer(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.read(), dict(error.headers))


def sign_in_form(base_url: str, user: str, password: str) -> tuple[str, str]:
    """Sign in with the form; returns the session cookie and the CSRF token of the page."""
    answer = call(f"{base_url}/login", method="POST", data={"user": user, "password": password})
    assert answer.status == 303, answer.text
    cookie = SimpleCookie(answer.headers["Set-Cookie"])["pacs_ai_session"].value
    assert "HttpOnly" in answer.headers["Set-Cookie"]
    assert "SameSite=Strict" in answer.headers["Set-Cookie"]
    page = call(f"{base_url}/", headers={"Cookie": f"pacs_ai_session={cookie}"})
    assert page.status == 200
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    return cookie, match.group(1)

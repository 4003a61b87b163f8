"""STOW-RS: storing DICOM objects on a DICOMweb server (PS3.18 10.5).

One HTTP POST of ``multipart/related; type="application/dicom"`` to ``{url}/studies``
per batch. The server answers a DICOM JSON object (PS3.18 F.2) listing the stored
instances (Referenced SOP Sequence, 0008,1199) and the failed ones (Failed SOP Sequence,
0008,1198) with a Failure Reason (0008,1197) taken from the C-STORE statuses.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import DicomWebDestination
from dicom_node.status import is_transient_failure

logger = logging.getLogger(__name__)

_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
#: HTTP statuses worth retrying: timeouts, throttling and server-side trouble.
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True, slots=True)
class StowOutcome:
    """What happened to one instance: stored, or the failure and whether it may pass later."""

    sop_instance_uid: str
    stored: bool
    status: int | None
    reason: str
    transient: bool


def stow(destination: DicomWebDestination, files: Sequence[tuple[str, Path]]) -> list[StowOutcome]:
    """Store ``files`` (SOP Instance UID, path) with one STOW-RS request.

    Never raises for the server's answer: every instance gets an outcome (network errors
    and unreadable responses are transient failures of the whole batch).
    """
    boundary = f"pacs-ai-{uuid.uuid4().hex}"
    body = bytearray()
    for _uid, path in files:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += path.read_bytes()
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(  # noqa: S310 -- the URL scheme is checked in the settings
        f"{destination.url.rstrip('/')}/studies",
        data=bytes(body),
        method="POST",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            **_auth_header(destination),
        },
    )
    context = None if destination.verify_tls else ssl._create_unverified_context()  # noqa: S323
    uids = [uid for uid, _path in files]
    try:
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=destination.timeout_seconds, context=context
        ) as response:
            payload = response.read()
            http_status = response.status
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        http_status = exc.code
        if not payload or http_status in _TRANSIENT_HTTP or http_status >= 500:
            return _all(
                uids,
                http_status,
                f"HTTP {http_status} {exc.reason}",
                transient=http_status in _TRANSIENT_HTTP or http_status >= 500,
            )
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return _all(uids, None, f"cannot reach {destination.url}: {reason}", transient=True)
    return _parse(uids, http_status, payload)


def _parse(uids: list[str], http_status: int, payload: bytes) -> list[StowOutcome]:
    try:
        answer: dict[str, Any] = json.loads(payload) if payload else {}
    except json.JSONDecodeError:
        return _all(
            uids, http_status, f"HTTP {http_status} with an unreadable body", transient=True
        )
    stored = {_uid_of(item) for item in _sequence(answer, _REFERENCED_SOP_SEQUENCE)}
    failed = {_uid_of(item): _reason_of(item) for item in _sequence(answer, _FAILED_SOP_SEQUENCE)}
    outcomes = []
    for uid in uids:
        if uid in stored and uid not in failed:
            outcomes.append(StowOutcome(uid, stored=True, status=0, reason="", transient=False))
        elif uid in failed:
            code = failed[uid]
            transient = code is not None and is_transient_failure(code)
            text = f"failure reason 0x{code:04X}" if code is not None else "failed"
            outcomes.append(
                StowOutcome(uid, stored=False, status=code, reason=text, transient=transient)
            )
        else:
            # Neither stored nor failed: a 4xx without a body, or a partial answer.
            transient = http_status >= 500 or http_status in _TRANSIENT_HTTP
            outcomes.append(
                StowOutcome(
                    uid,
                    stored=False,
                    status=http_status,
                    reason=f"HTTP {http_status}: not in the server's answer",
                    transient=transient,
                )
            )
    return outcomes


def _all(uids: list[str], status: int | None, reason: str, *, transient: bool) -> list[StowOutcome]:
    return [
        StowOutcome(uid, stored=False, status=status, reason=reason, transient=transient)
        for uid in uids
    ]


def _sequence(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = answer.get(tag) or {}
    value = element.get("Value") if isinstance(element, dict) else None
    return [item for item in value or [] if isinstance(item, dict)]


def _uid_of(item: dict[str, Any]) -> str:
    values = (item.get(_REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [""]
    return str(values[0])


def _reason_of(item: dict[str, Any]) -> int | None:
    values = (item.get(_FAILURE_REASON) or {}).get("Value") or [None]
    return int(values[0]) if values[0] is not None else None


def _auth_header(destination: DicomWebDestination) -> dict[str, str]:
    if destination.token is not None:
        return {"Authorization": f"Bearer {destination.token.get_secret_value()}"}
    if destination.username is not None:
        password = destination.password.get_secret_value() if destination.password else ""
        credentials = base64.b64encode(f"{destination.username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {credentials}"}
    return {}

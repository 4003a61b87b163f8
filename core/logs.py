"""Logging set-up: JSON lines for containers, plain text for terminals, job context.

Modules log with ``logging.getLogger(__name__)`` and %-style arguments. Job and series
identifiers travel in context variables, so that every line logged while a job runs names
it without each call passing it. Patient-identifying data is never logged above DEBUG:
log UIDs, not names; what libraries say goes through :mod:`core.library_logs`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal

from core.library_logs import install_library_log_guard

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "pacs_ai_log_context",
    default={},  # noqa: B039 -- never mutated; replaced on each bind
)


@contextlib.contextmanager
def log_context(**values: str) -> Iterator[None]:
    """Add ``values`` (job_id=..., series_uid=...) to every record logged inside the block."""
    token = _context.set({**_context.get(), **values})
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.context = _context.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        payload.update(getattr(record, "context", {}))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def _one_line(text: str) -> str:
    # A message quoting what a peer sent (an AE title, a UID, a library's error text)
    # must not be able to start a log line of its own.
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


class TextFormatter(logging.Formatter):
    """One line per record (control characters in the message escaped), then any
    traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 -- logging's name
        record.message = _one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = getattr(record, "context", {})
        if context:
            text += " [" + " ".join(f"{k}={v}" for k, v in sorted(context.items())) + "]"
        return text


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """Send every pacs-ai and library log line to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG and each association at INFO; that is noise in a
    # node that handles thousands of associations an hour.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    # pydicom's own warnings quote element values, which may be patient names; our readers
    # report the same problems per SOP instance, naming the attribute but not its value.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # Python warnings and what pydicom, highdicom and pynetdicom log: without their text
    # (which may quote patient data) above DEBUG.
    install_library_log_guard()

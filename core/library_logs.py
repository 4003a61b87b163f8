"""What libraries say, logged without the values they quote.

pydicom, highdicom and pynetdicom put DICOM element values in their messages: highdicom
warns that a single-component Patient's Name is "unlikely to represent the intended person
name", quoting it, on every SEG it writes; pydicom quotes every invalid value it reads;
pynetdicom's exceptions carry dataset text. Python warnings (``warnings.warn``, from any
module) and the records of those libraries' loggers therefore pass through one relay
(:func:`install_library_log_guard`, called by :func:`core.logs.configure_logging` in
``serve`` and ``worker`` and by ``demo``):

* at the record's own level (for a warning: WARNING the first time one code location
  warns in this process, INFO after that), one line saying where it came from and what
  kind it is (the warning category or the exception type), never its text; a library's
  own INFO records (highdicom writes several for every SEG) go to DEBUG only;
* the text itself at DEBUG only, for whoever turns DEBUG on to investigate.

Our own log calls follow the rule directly: UIDs, never names (see :mod:`core.logs`).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import TextIO

#: Loggers of libraries that handle DICOM data sets (their children included).
LIBRARY_LOGGERS = ("pydicom", "highdicom", "pynetdicom")
#: Where Python warnings are logged (the name :func:`logging.captureWarnings` uses).
WARNINGS_LOGGER = "py.warnings"
#: ``path:line: Category: text`` as :func:`warnings.formatwarning` writes it.
_FORMATTED_WARNING = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<category>\w+): ")
_WITHHELD = "(its text, which may quote DICOM values, is logged at DEBUG only)"
_WITH_EXCEPTION = " with a %s"


def install_library_log_guard() -> None:
    """Route Python warnings and library log records through the value-free relay.

    Idempotent. Library records no longer propagate on their own: the relay hands the
    root logger's handlers a value-free line (and the text at DEBUG). Python warnings are
    captured into logging (:func:`logging.captureWarnings`, so that Celery's own call to
    it later changes nothing) by our own ``showwarning``, which keeps the category and
    the origin apart from the text.
    """
    logging.captureWarnings(True)
    warnings.showwarning = _show_warning
    for name in (*LIBRARY_LOGGERS, WARNINGS_LOGGER):
        library = logging.getLogger(name)
        if not any(isinstance(h, ValueFreeRelay) for h in library.handlers):
            library.addHandler(_RELAY)
        library.propagate = False


class ValueFreeRelay(logging.Handler):
    """Passes library records and warnings to the root logger's handlers without their
    text above DEBUG (see the module)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self._seen: set[tuple[str, str, int]] = set()
        self._seen_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        root = logging.getLogger()
        if record.levelno <= logging.DEBUG:
            root.handle(record)
            return
        if record.levelno < logging.WARNING and record.name != WARNINGS_LOGGER:
            # A library's INFO (highdicom writes several for every SEG) is progress
            # chatter: a value-free summary of it would say nothing, so it goes to DEBUG.
            if root.isEnabledFor(logging.DEBUG):
                root.handle(self._derived(record, logging.DEBUG, "%s", (record.getMessage(),)))
            return
        if record.name == WARNINGS_LOGGER:
            level, summary, args = self._warning(record)
        else:
            kind = record.exc_info[0] if record.exc_info else None
            level = record.levelno
            summary = f"a record{_WITH_EXCEPTION if kind else ''} from %s line %d {_WITHHELD}"
            args = (*((kind.__name__,) if kind else ()), record.filename, record.lineno)
        root.handle(self._derived(record, level, summary, args))
        if root.isEnabledFor(logging.DEBUG):
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            root.handle(self._derived(record, logging.DEBUG, "%s", (text,)))

    def _warning(self, record: logging.LogRecord) -> tuple[int, str, tuple[object, ...]]:
        category = getattr(record, "warning_category", None)
        origin = getattr(record, "warning_origin", None)
        line = getattr(record, "warning_lineno", None)
        if category is None or origin is None or line is None:
            # A warning logged by logging's own showwarning: read its first line's head.
            match = _FORMATTED_WARNING.match(record.getMessage())
            if match is None:
                category, origin, line = "Warning", "unknown origin", 0
            else:
                category = match["category"]
                origin = _module_of(match["path"])
                line = int(match["line"])
        key = (str(category), str(origin), int(line))
        with self._seen_lock:
            first = key not in self._seen
            self._seen.add(key)
        level = logging.WARNING if first else logging.INFO
        return level, f"%s from %s line %d {_WITHHELD}", key

    @staticmethod
    def _derived(
        record: logging.LogRecord, level: int, msg: str, args: tuple[object, ...]
    ) -> logging.LogRecord:
        derived = logging.LogRecord(
            record.name, level, record.pathname, record.lineno, msg, args, None, record.funcName
        )
        derived.created, derived.msecs = record.created, record.msecs
        derived.process, derived.thread, derived.threadName = (
            record.process,
            record.thread,
            record.threadName,
        )
        return derived


_RELAY = ValueFreeRelay()


def _show_warning(  # noqa: PLR0917 -- warnings.showwarning's signature
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` that logs to ``py.warnings`` with its parts kept apart."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    if file is not None:  # someone asked for this very stream: as Python would
        file.write(text)
        return
    logging.getLogger(WARNINGS_LOGGER).warning(
        "%s",
        text.rstrip(),
        extra={
            "warning_category": category.__name__,
            "warning_origin": _module_of(filename),
            "warning_lineno": lineno,
        },
    )


def _module_of(filename: str) -> str:
    """The dotted module name of a source file, from the longest ``sys.path`` entry
    holding it (else the file's name)."""
    path = Path(filename)
    for entry in sorted((p for p in sys.path if p), key=len, reverse=True):
        try:
            relative = path.relative_to(entry)
        except ValueError:
            continue
        return ".".join(relative.with_suffix("").parts)
    return path.stem

"""multipart/related framing (RFC 2387) for DICOMweb bodies (PS3.18 8.6.1.2).

WADO-RS answers and STOW-RS requests carry DICOM instances as the parts of one
``multipart/related; type="application/dicom"`` body. Both sides here stream: a part is
written as its header and then its bytes (never assembled in memory), and
:class:`MultipartReader` is fed the body in whatever pieces the network delivers and
hands back each part's bytes as they come, holding at most one piece plus a delimiter.
:func:`whole_parts` reads a stream into whole parts, one at a time, each bounded, for a
reader that needs a part entire (a pulled instance, checked before it is filed).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

#: Largest header block of one part; ours are a few hundred bytes.
MAX_PART_HEADER = 16 * 1024
_CRLF = b"\r\n"
_BOUNDARY_RE = re.compile(r'boundary=(?:"([^"]+)"|([^";,\s]+))', re.IGNORECASE)
_TYPE_RE = re.compile(r'type="?([^";,\s]+)"?', re.IGNORECASE)


#: Bytes read from a stream at a time by :func:`whole_parts`.
READ_SIZE = 1024 * 1024


class MultipartError(ValueError):
    """The body is not well-formed multipart/related (a boundary or a header is wrong)."""


class PartTooLargeError(MultipartError):
    """A part is larger than the reader allows."""


def new_boundary() -> str:
    return f"pacs-ai-{secrets.token_hex(16)}"


def content_type(boundary: str, part_type: str = "application/dicom") -> str:
    """The Content-Type of a multipart/related body whose parts are ``part_type``."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def boundary_of(content_type_value: str) -> str:
    """The boundary parameter of a multipart Content-Type.

    Raises:
        MultipartError: it is not multipart, or names no boundary.
    """
    if not content_type_value.lower().lstrip().startswith("multipart/"):
        raise MultipartError(f"not a multipart body: Content-Type {content_type_value!r}")
    found = _BOUNDARY_RE.search(content_type_value)
    if found is None:
        raise MultipartError(f"no boundary in Content-Type {content_type_value!r}")
    return found.group(1) or found.group(2)


def root_type_of(content_type_value: str) -> str | None:
    """The ``type`` parameter of a multipart/related Content-Type (``application/dicom``)."""
    found = _TYPE_RE.search(content_type_value)
    return found.group(1).lower() if found else None


def part_head(boundary: str, headers: Mapping[str, str], *, first: bool) -> bytes:
    """The delimiter and header block that open a part (the CRLF ending the previous
    part's bytes included, except before the first part)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    lead = "" if first else "\r\n"
    return f"{lead}--{boundary}\r\n{lines}\r\n".encode("latin-1")


def closing(boundary: str, *, empty: bool = False) -> bytes:
    """The close delimiter that ends the body."""
    return f"{'' if empty else chr(13) + chr(10)}--{boundary}--\r\n".encode("latin-1")


@dataclass(frozen=True, slots=True)
class PartStart:
    """A new part begins; its headers, names in lower case."""

    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part's bytes are complete."""


Event = PartStart | PartData | PartEnd


class MultipartReader:
    """An incremental parser: :meth:`feed` it the body piece by piece; it yields the
    events of what is complete so far. :meth:`close` checks that the body ended.

    A table of steps, one per place in the body (before the first delimiter, after a
    delimiter, in a part's headers, in its bytes); each takes what it can from the buffer
    and says whether the next step may go on.
    """

    def __init__(self, boundary: str) -> None:
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # The body may start with the delimiter itself (no CRLF before it): pretend one.
        self._buffer = bytearray(_CRLF)
        self._state = "preamble"
        self._steps = {
            "preamble": self._preamble,
            "after-delimiter": self._after_delimiter,
            "headers": self._headers,
            "body": self._body,
        }

    @property
    def finished(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> Iterator[Event]:
        """Take the next piece of the body and yield what it completes.

        Raises:
            MultipartError: the body is malformed.
        """
        if self._state == "done":
            return  # the epilogue after the close delimiter is ignored (RFC 2046 5.1.1)
        self._buffer += data
        events: list[Event] = []
        while self._state != "done" and self._steps[self._state](events):
            pass
        yield from events

    def close(self) -> None:
        """Raises:
        MultipartError: the body ended before its close delimiter."""
        if self._state != "done":
            raise MultipartError("the body ended before its closing boundary (cut off?)")

    def _keep_tail(self) -> bytes:
        """Remove and return all of the buffer but what could start a delimiter."""
        cut = len(self._buffer) - (len(self._delimiter) - 1)
        if cut <= 0:
            return b""
        with memoryview(self._buffer) as view:
            head = bytes(view[:cut])
        del self._buffer[:cut]
        return head

    def _preamble(self, _events: list[Event]) -> bool:
        at = self._buffer.find(self._delimiter)
        if at < 0:
            self._keep_tail()
            return False
        del self._buffer[: at + len(self._delimiter)]
        self._state = "after-delimiter"
        return True

    def _after_delimiter(self, _events: list[Event]) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer[:2] == b"--":
            self._state = "done"
            self._buffer.clear()
            return False
        end = self._buffer.find(_CRLF)
        if end < 0:
            if len(self._buffer) > 1024:
                raise MultipartError("no line end after a boundary delimiter")
            return False
        if self._buffer[:end].strip(b" \t"):
            raise MultipartError("unexpected text after a boundary delimiter")
        del self._buffer[: end + 2]
        self._state = "headers"
        return True

    def _headers(self, events: list[Event]) -> bool:
        if self._buffer.startswith(_CRLF):
            end, skip = 0, 2  # a part without headers
        else:
            end, skip = self._buffer.find(b"\r\n\r\n"), 4
        if end < 0:
            if len(self._buffer) > MAX_PART_HEADER:
                raise MultipartError(f"a part's headers exceed {MAX_PART_HEADER} bytes")
            return False
        headers = parse_part_headers(bytes(self._buffer[:end]))
        del self._buffer[: end + skip]
        self._state = "body"
        events.append(PartStart(headers))
        return True

    def _body(self, events: list[Event]) -> bool:
        at = self._buffer.find(self._delimiter)
        if at < 0:
            data = self._keep_tail()
            if data:
                events.append(PartData(data))
            return False
        if at:
            with memoryview(self._buffer) as view:
                events.append(PartData(bytes(view[:at])))
        del self._buffer[: at + len(self._delimiter)]
        self._state = "after-delimiter"
        events.append(PartEnd())
        return True


def parse_part_headers(block: bytes) -> dict[str, str]:
    """A part's header lines (without the blank line that ends them), names lowercased.

    Raises:
        MultipartError: a line is not ``name: value``.
    """
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


class Readable(Protocol):
    """What :func:`whole_parts` reads from: an HTTP response, a file."""

    def read(self, size: int = -1, /) -> bytes: ...


def whole_parts(
    stream: Readable, boundary: str, *, max_part: int, read_size: int = READ_SIZE
) -> Iterator[bytes]:
    """The bodies of the parts of a multipart ``stream``, each whole, one at a time, read
    as they arrive: at most one part (of at most ``max_part`` bytes) and one piece read
    are held.

    Raises:
        PartTooLargeError: a part is larger than ``max_part`` bytes.
        MultipartError: the stream is not well-formed multipart (cut off, say).
    """
    reader = MultipartReader(boundary)
    part: bytearray | None = None
    while not reader.finished:
        chunk = stream.read(read_size)
        if not chunk:
            reader.close()
            return
        for event in reader.feed(chunk):
            if isinstance(event, PartStart):
                part = bytearray()
            elif isinstance(event, PartData):
                assert part is not None  # a PartStart comes first
                part += event.data
                if len(part) > max_part:
                    raise PartTooLargeError(f"a part is larger than {max_part} bytes")
            else:
                assert part is not None
                yield bytes(part)
                part = None

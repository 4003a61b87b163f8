"""A small DICOMweb client for workers: WADO-RS retrieval to files, STOW-RS upload from
files, both streamed (PS3.18 10.4, 10.5).

A retrieval writes each part of the ``multipart/related`` answer to its own file as it
arrives: a part with a ``Content-Length`` (the node gives each one) is read from the
socket straight into its file, without searching its bytes for the boundary; from the
first part without one, the rest of the answer is parsed by scanning for the boundary.
An upload sends each file a piece at a time. Neither holds more than one piece
(:data:`CHUNK`) in memory, whatever the series' size. Errors are sorted for the job's
three outcomes: a server that cannot be reached, answers 5xx or refuses the token is
:class:`ServerUnavailableError` (the job waits for it); anything else it answers wrongly
is a :class:`DicomWebError`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import ssl
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from core.errors import TransientError
from core.multipart import (
    MAX_PART_HEADER,
    Event,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
    closing,
    content_type,
    new_boundary,
    parse_part_headers,
    part_head,
)

logger = logging.getLogger(__name__)

#: Bytes read from the network (or a file) at a time.
CHUNK = 1024 * 1024
#: Pieces read but not yet written (each at most CHUNK): the memory a retrieval holds.
WRITE_QUEUE = 8
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE = "00081155"


class DicomWebError(TransientError):
    """A DICOMweb server answered, but not as it should (a missing instance, a size that
    differs from the ledger's, a refused object)."""


class ServerUnavailableError(TransientError):
    """The server cannot be reached, fails (5xx), or refuses our token (401, 403)."""


@dataclass(frozen=True, slots=True)
class ReceivedPart:
    """One retrieved part: where it was written, its size, and the SOP Instance UID its
    ``Content-Location`` names (None when the server gave none)."""

    path: Path
    size: int
    sop_instance_uid: str | None


class DicomWebClient:
    """Requests to one DICOMweb service root (``https://node:8090/dicomweb``)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca_certificates: Path | None = None,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self._parsed = parsed
        self._timeout = timeout
        self._headers = dict(headers or {})
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._context: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self._context = ssl.create_default_context(
                cafile=str(ca_certificates) if ca_certificates else None
            )
            self._context.minimum_version = ssl.TLSVersion.TLSv1_2

    def _connection(self) -> http.client.HTTPConnection:
        host = self._parsed.hostname or ""
        if self._context is not None:
            return http.client.HTTPSConnection(
                host, self._parsed.port, timeout=self._timeout, context=self._context
            )
        return http.client.HTTPConnection(host, self._parsed.port, timeout=self._timeout)

    def _path(self, relative: str, query: Mapping[str, str | Sequence[str]] | None = None) -> str:
        path = f"{self._parsed.path.rstrip('/')}/{relative.lstrip('/')}"
        if query:
            path += "?" + urllib.parse.urlencode(query, doseq=True)
        return path

    def retrieve(
        self,
        relative: str,
        folder: Path,
        *,
        on_part: Callable[[ReceivedPart], None] | None = None,
    ) -> list[ReceivedPart]:
        """GET ``relative`` (``studies/S/series/R``) and write each part of the answer to a
        file in ``folder`` as it arrives; ``on_part`` sees each part once complete.

        Raises:
            ServerUnavailableError: the server cannot be reached, fails or refuses us.
            DicomWebError: it answers something else than the parts (404: none held).
        """
        connection = self._connection()
        received: list[ReceivedPart] = []
        try:
            response = self._request(
                connection, "GET", self._path(relative), headers={"Accept": ACCEPT_DICOM}
            )
            if response.status != 200:
                raise DicomWebError(f"{self.url}/{relative}: HTTP {response.status}")
            boundary = boundary_of(response.getheader("content-type", ""))
            received = self._read_parts(response, boundary, folder, on_part)
        except ValueError as exc:  # MultipartError included
            raise DicomWebError(f"{self.url}/{relative}: malformed answer: {exc}") from exc
        finally:
            connection.close()
        return received

    def _read_parts(
        self,
        response: http.client.HTTPResponse,
        boundary: str,
        folder: Path,
        on_part: Callable[[ReceivedPart], None] | None,
    ) -> list[ReceivedPart]:
        """The parts of the answer, each in its file (PS3.18 8.6.1.2; RFC 2046 5.1.1).

        The network is read here and the files written by a thread of their own, so that
        writing overlaps waiting for the next bytes; at most WRITE_QUEUE pieces wait
        between the two.
        """
        files = _FileWriter(folder, on_part)
        files.start()
        try:
            self._read_into_files(response, boundary, files)
        finally:
            received = files.finish()
        return received

    def _read_into_files(
        self, response: http.client.HTTPResponse, boundary: str, files: _FileWriter
    ) -> None:
        delimiter = b"--" + boundary.encode("latin-1")
        line = self._line(response)
        while line.rstrip() != delimiter:  # the preamble
            if line.rstrip() == delimiter + b"--":
                return  # no parts
            line = self._line(response)
        while True:
            block = self._head(response)
            headers = parse_part_headers(block[:-4]) if block != b"\r\n" else {}
            size = _content_length(headers)
            if size is None:
                # A server that does not say how long its parts are: scan for the boundary.
                start = b"\r\n" + delimiter + b"\r\n" + block
                self._scan_parts(response, MultipartReader(boundary), start, files)
                return
            files.put(PartStart(headers))
            left = size
            while left:
                buffer = files.free_buffer()
                got = self._read_into(response, memoryview(buffer)[: min(left, len(buffer))])
                files.put(_Piece(buffer, got))
                left -= got
            files.put(PartEnd())
            if self._line(response) != b"\r\n":
                raise MultipartError("a part is longer than its Content-Length")
            line = self._line(response).rstrip()
            if line == delimiter + b"--":
                return
            if line != delimiter:
                raise MultipartError("a part is not followed by the boundary")

    def _line(self, response: http.client.HTTPResponse) -> bytes:
        """The next line of the answer (a boundary, a part header).

        Raises:
            ServerUnavailableError: the answer ended (cut off).
        """
        with self._cut_off():
            line = response.readline(MAX_PART_HEADER)
        if not line:
            raise ServerUnavailableError(f"{self.url}: the answer was cut off")
        return line

    def _head(self, response: http.client.HTTPResponse) -> bytes:
        """A part's header lines and the blank line after them."""
        block = bytearray()
        while not block.endswith(b"\r\n\r\n") and block != b"\r\n":
            block += self._line(response)
            if len(block) > MAX_PART_HEADER:
                raise MultipartError(f"a part's headers exceed {MAX_PART_HEADER} bytes")
        return bytes(block)

    def _read_into(self, response: http.client.HTTPResponse, buffer: memoryview) -> int:
        """Raises:
        ServerUnavailableError: the answer ended (cut off)."""
        with self._cut_off():
            got = response.readinto(buffer)
        if not got:
            raise ServerUnavailableError(f"{self.url}: the answer was cut off")
        return got

    @contextlib.contextmanager
    def _cut_off(self) -> Iterator[None]:
        """A read from the answer that fails is the answer cut off.

        Raises:
            ServerUnavailableError: the read raised OSError or an HTTP error.
        """
        try:
            yield
        except (OSError, http.client.HTTPException) as exc:
            raise ServerUnavailableError(
                f"{self.url}: the answer was cut off ({type(exc).__name__}: {exc})"
            ) from exc

    def _scan_parts(
        self,
        response: http.client.HTTPResponse,
        reader: MultipartReader,
        start: bytes,
        files: _FileWriter,
    ) -> None:
        chunk = start
        while chunk:
            for event in reader.feed(chunk):
                files.put(event)
            chunk = self._read(response)
        if not reader.finished:
            raise ServerUnavailableError(f"{self.url}: the answer was cut off")

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        try:
            return response.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise ServerUnavailableError(
                f"{self.url}: the answer was cut off ({type(exc).__name__}: {exc})"
            ) from exc

    def store(
        self,
        files: Sequence[Path],
        *,
        study: str | None = None,
        query: Mapping[str, str | Sequence[str]] | None = None,
    ) -> list[str]:
        """POST ``files`` to ``studies[/study]`` with STOW-RS, streamed; return the SOP
        Instance UIDs the server says it stored.

        Raises:
            ServerUnavailableError: the server cannot be reached, fails or refuses us.
            DicomWebError: it refused some or all of the objects (the reason given).
        """
        boundary = new_boundary()
        heads = [
            part_head(
                boundary,
                {"Content-Type": "application/dicom", "Content-Length": str(path.stat().st_size)},
                first=number == 0,
            )
            for number, path in enumerate(files)
        ]
        end = closing(boundary, empty=not files)
        length = sum(map(len, heads)) + sum(p.stat().st_size for p in files) + len(end)
        relative = f"studies/{study}" if study else "studies"
        connection = self._connection()
        try:
            response = self._request(
                connection,
                "POST",
                self._path(relative, query),
                headers={
                    "Content-Type": content_type(boundary),
                    "Content-Length": str(length),
                    "Accept": "application/dicom+json",
                },
                body=_upload_body(heads, files, end),
            )
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServerUnavailableError(f"{self.url}: upload cut off ({exc})") from exc
        finally:
            connection.close()
        return _stored_uids(self.url, response.status, payload)

    def _request(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        body: Iterator[bytes] | None = None,
    ) -> http.client.HTTPResponse:
        try:
            connection.request(method, path, body=body, headers={**self._headers, **headers})
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise ServerUnavailableError(
                f"cannot reach {self.url} ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status in (401, 403):
            detail = response.read(4096).decode("utf-8", "replace")
            raise ServerUnavailableError(
                f"{self.url} refuses this worker (HTTP {response.status} {detail.strip()}): "
                "check worker.fetch_token against a worker token in the node's monitor.tokens"
            )
        if response.status >= 500:
            detail = response.read(4096).decode("utf-8", "replace")
            raise ServerUnavailableError(f"{self.url}: HTTP {response.status} {detail.strip()}")
        return response


@dataclass(frozen=True, slots=True)
class _Piece:
    """The first ``size`` bytes of ``buffer``, one of :class:`_FileWriter`'s, for the part
    being written; the buffer goes back to the reader once written."""

    buffer: bytearray
    size: int


class _FileWriter(threading.Thread):
    """Writes the parts of a retrieval to files, from a thread of its own (see
    :meth:`DicomWebClient._read_parts`); an error it meets is raised by :meth:`put`,
    :meth:`free_buffer` or :meth:`finish` in the reading thread."""

    def __init__(self, folder: Path, on_part: Callable[[ReceivedPart], None] | None) -> None:
        super().__init__(name="dicomweb-files", daemon=True)
        self._folder = folder
        self._on_part = on_part
        self._queue: queue.Queue[Event | _Piece | None] = queue.Queue(maxsize=WRITE_QUEUE)
        # The reader's buffers not being filled or written: WRITE_QUEUE of CHUNK bytes.
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._buffers = 0
        self._error: BaseException | None = None
        self.received: list[ReceivedPart] = []

    def put(self, event: Event | _Piece) -> None:
        self._raise()
        self._queue.put(event)

    def free_buffer(self) -> bytearray:
        """A buffer to read the next piece into (waits while all are being written)."""
        if self._buffers < WRITE_QUEUE and self._free.empty():
            self._buffers += 1
            return bytearray(CHUNK)
        while True:
            self._raise()
            try:
                return self._free.get(timeout=1.0)
            except queue.Empty:
                continue

    def finish(self) -> list[ReceivedPart]:
        """Wait for everything queued to be written; raise what went wrong, if anything."""
        self._queue.put(None)
        self.join()
        self._raise()
        return self.received

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def run(self) -> None:
        writer: _PartWriter | None = None
        try:
            while (event := self._queue.get()) is not None:
                if isinstance(event, _Piece):
                    if writer is not None:
                        writer.write(memoryview(event.buffer)[: event.size])
                    self._free.put(event.buffer)
                elif isinstance(event, PartStart):
                    writer = _PartWriter(self._folder, event.headers)
                elif isinstance(event, PartData) and writer is not None:
                    writer.write(event.data)
                elif isinstance(event, PartEnd) and writer is not None:
                    part, writer = writer.finish(), None
                    self.received.append(part)
                    if self._on_part is not None:
                        self._on_part(part)
        except BaseException as exc:  # noqa: BLE001 -- handed to the reading thread
            self._error = exc
            # Take what the reader still puts until it sees the error (or ends).
            while (left := self._queue.get()) is not None:
                if isinstance(left, _Piece):
                    self._free.put(left.buffer)
        finally:
            if writer is not None:
                writer.discard()


class _PartWriter:
    def __init__(self, folder: Path, headers: Mapping[str, str]) -> None:
        location = headers.get("content-location", "")
        uid = location.rstrip("/").rsplit("/", 1)[-1] if "/instances/" in location else ""
        self.sop_instance_uid = uid or None
        self.path = folder / f".{uuid.uuid4().hex}.part"
        self._stream: BinaryIO = self.path.open("wb")
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self._stream.write(data)
        self.size += len(data)

    def finish(self) -> ReceivedPart:
        self._stream.close()
        return ReceivedPart(self.path, self.size, self.sop_instance_uid)

    def discard(self) -> None:
        self._stream.close()
        self.path.unlink(missing_ok=True)


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def _upload_body(heads: Sequence[bytes], files: Sequence[Path], end: bytes) -> Iterator[bytes]:
    for head, path in zip(heads, files, strict=True):
        yield head
        with path.open("rb") as stream:
            while piece := stream.read(CHUNK):
                yield piece
    yield end


def _stored_uids(url: str, status: int, payload: bytes) -> list[str]:
    """The SOP Instance UIDs a STOW-RS answer lists as stored (PS3.18 10.5.3).

    Raises:
        DicomWebError: the server refused some or all of the objects.
    """
    try:
        answer: dict[str, Any] = json.loads(payload) if payload else {}
    except json.JSONDecodeError:
        answer = {}
    if status not in (200, 202, 409):
        message = answer.get("error") if isinstance(answer, dict) else None
        raise DicomWebError(f"{url}: upload refused: HTTP {status} {message or ''}".strip())
    stored = [_uid(item) for item in _items(answer, _REFERENCED_SOP_SEQUENCE)]
    failed = _items(answer, _FAILED_SOP_SEQUENCE)
    if failed or status != 200:
        raise DicomWebError(
            f"{url}: {len(failed) or 'some'} object(s) refused (HTTP {status}); stored "
            f"{len(stored)}"
        )
    return stored


def _items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = answer.get(tag) or {}
    value = element.get("Value") if isinstance(element, dict) else None
    return [item for item in value or [] if isinstance(item, dict)]


def _uid(item: dict[str, Any]) -> str:
    values = (item.get(_REFERENCED_SOP_INSTANCE) or {}).get("Value") or [""]
    return str(values[0])

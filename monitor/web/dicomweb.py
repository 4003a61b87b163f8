"""The node's DICOMweb service for remote workers (PS3.18): its spool out, results in.

=================================================================== ====== ================
path                                                                method what
=================================================================== ====== ================
``/dicomweb/studies/{study}/series/{series}``                       GET    WADO-RS: the
                                                                           series' instances
                                                                           this node holds
``/dicomweb/studies/{study}/series/{series}/instances/{instance}``  GET    WADO-RS: one
``/dicomweb/studies[/{study}]?job=ID[&destination=NAME]``           POST   STOW-RS: a job's
                                                                           result objects
=================================================================== ====== ================

Only bearer tokens of the ``worker`` role (``monitor.tokens``) may use it, and they may
use nothing else of the monitor; over HTTPS when ``monitor.tls`` is set. Retrieval answers
``multipart/related; type="application/dicom"`` (PS3.18 8.6.1.2) with the stored bytes
unchanged, each part with its ``Content-Length`` and ``Content-Location``, streamed from
disk a piece at a time (whatever the series' size, the node holds one piece in memory).
A node answers only for the instances it holds (``instances.node`` in the ledger); a
worker asks each node for its own. Uploads go to :mod:`monitor.stowed`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from core.jobs import JobRecord
from core.ledger import Ledger, UnknownJobError
from core.multipart import (
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
    closing,
    content_type,
    new_boundary,
    part_head,
    root_type_of,
)
from monitor.auth import WORKER, Principal
from monitor.stowed import (
    ACCEPTING,
    HELD_ACCEPTING,
    PartFile,
    RefusedUploadError,
    ResultStore,
    StoredObject,
    valid_uid,
)
from monitor.web.common import ApiError, Services, ServicesDep, identify

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

#: Bytes of a retrieval's answer per piece handed to the server (read from disk into one
#: buffer: the memory a retrieval holds, whatever the series' size).
CHUNK = 4 * 1024 * 1024
#: Files of a retrieval the kernel is asked to read ahead of the one being sent.
READ_AHEAD_FILES = 4
#: Objects one upload may carry (a job makes a handful), and the most whose size the
#: request body may have together (each at most ``node.max_instance_bytes``).
MAX_PARTS = 1000
MAX_UPLOAD_OBJECTS = 8
DICOM = "application/dicom"
# PS3.18 F.2 attribute tags of the STOW-RS answer.
_RETRIEVE_URL = "00081190"
_FAILED_SOP_SEQUENCE = "00081198"
_FAILURE_REASON = "00081197"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_CLASS = "00081150"
_REFERENCED_SOP_INSTANCE = "00081155"
#: PS3.18 Table 10.5.3-2: "Cannot understand" (0xC000).
_CANNOT_UNDERSTAND = 0xC000


def worker_principal(request: Request, svc: ServicesDep) -> Principal:
    """Who asks: a ``worker`` token (or anyone, where the monitor needs no sign-in: then
    it listens on the loopback interface only)."""
    principal = identify(request, svc)
    if principal is None:
        raise ApiError(
            401, "authentication required", {"WWW-Authenticate": 'Bearer realm="pacs-ai"'}
        )
    if principal.authenticated and principal.role != WORKER:
        raise ApiError(403, "DICOMweb is for tokens of the worker role only")
    return principal


WorkerPrincipal = Annotated[Principal, Depends(worker_principal)]


# -- WADO-RS -------------------------------------------------------------------------------


@router.get(
    "/studies/{study}/series/{series}",
    summary="WADO-RS: the series' instances held by this node (multipart/related)",
    response_class=Response,
)
def retrieve_series(
    request: Request, study: str, series: str, svc: ServicesDep, _worker: WorkerPrincipal
) -> Response:
    return _retrieve(request, svc, study, series, instance=None)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="WADO-RS: one instance held by this node (multipart/related)",
    response_class=Response,
)
def retrieve_instance(
    request: Request,
    study: str,
    series: str,
    instance: str,
    svc: ServicesDep,
    _worker: WorkerPrincipal,
) -> Response:
    return _retrieve(request, svc, study, series, instance=instance)


def _retrieve(
    request: Request, svc: Services, study: str, series: str, *, instance: str | None
) -> Response:
    for uid in (study, series, instance):
        if uid is not None and not valid_uid(uid):
            raise ApiError(400, "not a valid UID in the path")
    refusal = _unacceptable(request.headers.get("accept"))
    if refusal is not None:
        raise ApiError(406, refusal)
    ledger = svc.readings.ledger
    node = svc.settings.node.name
    # The study in the path must be the series' own (a UID never mixes two studies).
    held = [
        i
        for i in (ledger.series_instances(series) if _study_of(ledger, series) == study else [])
        if i.node in (None, node) and (instance is None or i.sop_instance_uid == instance)
    ]
    sized = [(i, Path(i.path), _size(Path(i.path))) for i in held]
    present = [(i, path, size) for i, path, size in sized if size is not None]
    if not present:
        raise ApiError(404, "no such instance held by this node")
    boundary = new_boundary()
    base = f"/dicomweb/studies/{study}/series/{series}/instances"
    heads = [
        part_head(
            boundary,
            {
                "Content-Type": f"{DICOM}; transfer-syntax={i.transfer_syntax_uid}",
                "Content-Length": str(size),
                "Content-Location": f"{base}/{i.sop_instance_uid}",
            },
            first=number == 0,
        )
        for number, (i, _path, size) in enumerate(present)
    ]
    end = closing(boundary)
    length = sum(len(h) for h in heads) + sum(size for *_rest, size in present) + len(end)
    files = [(head, path, size) for head, (_i, path, size) in zip(heads, present, strict=True)]
    return StreamingResponse(
        _stream(files, end),
        media_type=content_type(boundary),
        headers={"content-length": str(length)},
    )


def _stream(files: list[tuple[bytes, Path, int]], end: bytes) -> Iterator[bytes]:
    """The body, a piece of up to :data:`CHUNK` bytes at a time (Starlette runs this
    iterator in a worker thread, one hop per piece: small instances, a CT slice of half a
    megabyte, go several to a piece with their part headers)."""
    piece = bytearray(CHUNK)
    view = memoryview(piece)
    filled = 0
    for number, (head, path, size) in enumerate(files):
        # Ask the kernel to read the next files while this one is sent: from a cold
        # cache, the disk then works while the network does.
        for _head, later, _size in files[number + 1 : number + 1 + READ_AHEAD_FILES]:
            _will_need(later)
        if filled + len(head) > CHUNK:
            yield bytes(view[:filled])
            filled = 0
        view[filled : filled + len(head)] = head
        filled += len(head)
        left = size
        with path.open("rb", buffering=0) as stream:
            while left:
                if filled == CHUNK:
                    yield bytes(view)
                    filled = 0
                got = stream.readinto(view[filled : filled + min(CHUNK - filled, left)])
                if not got:
                    # Removed or replaced since the answer began: its announced length
                    # cannot be kept, so the connection is cut and the worker retries.
                    raise OSError(f"{path} changed while it was being sent")
                filled += got
                left -= got
    yield bytes(view[:filled]) + end


def _will_need(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return  # removed meanwhile: the stream says so when it gets there
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(descriptor)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # removed meanwhile (retention): not held any more


def _study_of(ledger: Ledger, series: str) -> str | None:
    try:
        return str(ledger.get_series(series).study_instance_uid)
    except KeyError:
        return None


def _unacceptable(accept: str | None) -> str | None:
    """Why the ``Accept`` header cannot be met (PS3.18 8.7.3), or None. This service
    returns the stored bytes only: any transfer syntax (``*``) or the stored one."""
    if not accept:
        return None
    for choice in accept.split(","):
        media = choice.strip().lower()
        if media.startswith(("*/*", "multipart/*")):
            return None
        if media.startswith("multipart/related"):
            kind = root_type_of(media)
            if kind in (None, DICOM):
                return None
    return (
        'this service answers multipart/related; type="application/dicom" with the stored '
        "bytes (transfer-syntax=*)"
    )


# -- STOW-RS -------------------------------------------------------------------------------


@router.post(
    "/studies",
    summary="STOW-RS: a job's result objects, for the node's outbox (?job=ID&destination=NAME)",
)
async def store(
    request: Request,
    svc: ServicesDep,
    _worker: WorkerPrincipal,
    job: Annotated[str, Query(pattern=r"^[0-9a-f]{32}$")],
    destination: Annotated[list[str] | None, Query()] = None,
) -> Response:
    return await _store(request, svc, None, job, destination or [])


@router.post(
    "/studies/{study}",
    summary="STOW-RS: a job's result objects of one study (?job=ID&destination=NAME)",
)
async def store_in_study(
    request: Request,
    study: str,
    svc: ServicesDep,
    _worker: WorkerPrincipal,
    job: Annotated[str, Query(pattern=r"^[0-9a-f]{32}$")],
    destination: Annotated[list[str] | None, Query()] = None,
) -> Response:
    return await _store(request, svc, study, job, destination or [])


async def _store(
    request: Request, svc: Services, study: str | None, job_id: str, destinations: list[str]
) -> Response:
    header = request.headers.get("content-type", "")
    try:
        boundary = boundary_of(header)
    except MultipartError as exc:
        raise ApiError(415, f'send multipart/related; type="{DICOM}": {exc}') from exc
    if root_type_of(header) not in (None, DICOM):
        raise ApiError(415, f'only multipart/related; type="{DICOM}" is taken')
    job = await to_thread.run_sync(_job_for_upload, svc, job_id, study, destinations)
    upload = _Upload(ResultStore(svc.settings, svc.readings.ledger), job)
    reader = MultipartReader(boundary)
    try:
        async for chunk in request.stream():
            for event in reader.feed(chunk):
                if isinstance(event, PartStart):
                    upload.start(event.headers)
                elif isinstance(event, PartData):
                    upload.write(event.data)
                elif isinstance(event, PartEnd):
                    await upload.end()
        reader.close()
    except MultipartError as exc:
        # A torn upload (the worker died mid-way): what was complete is kept, the part
        # being written is not; the worker's next attempt sends everything again.
        raise ApiError(400, f"malformed multipart body: {exc}") from exc
    finally:
        upload.abandon()
    await to_thread.run_sync(upload.results.hand_over, job, upload.stored, destinations)
    return _stow_answer(request, upload.stored, upload.failed)


class _Upload:
    """The parts of one STOW-RS request, each to its temporary file, then kept or refused."""

    def __init__(self, results: ResultStore, job: JobRecord) -> None:
        self.results = results
        self.job = job
        self.stored: list[StoredObject] = []
        self.failed: list[str] = []
        self._part: PartFile | None = None
        self._refused: str | None = None
        self._parts = 0

    def start(self, headers: dict[str, str]) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(413, f"more than {MAX_PARTS} objects in one request")
        self._refused = _part_refusal(headers)
        if self._refused is None:
            try:
                self._part = self.results.new_part()
            except RefusedUploadError as exc:
                raise ApiError(507, str(exc)) from exc

    def write(self, data: bytes) -> None:
        if self._part is None:
            return
        try:
            self._part.write(data)
        except RefusedUploadError as exc:
            self._part.discard()
            self._part, self._refused = None, str(exc)

    async def end(self) -> None:
        part, self._part = self._part, None
        if part is None:
            if self._refused is not None:
                self.failed.append(self._refused)
            return
        await to_thread.run_sync(part.finish)
        try:
            self.stored.append(await to_thread.run_sync(self.results.keep, part, self.job))
        except RefusedUploadError as exc:
            self.failed.append(str(exc))

    def abandon(self) -> None:
        """Remove the part being written, if the request ended inside it."""
        if self._part is not None:
            self._part.discard()
            self._part = None


def _job_for_upload(
    svc: Services, job_id: str, study: str | None, destinations: list[str]
) -> JobRecord:
    try:
        job = svc.readings.ledger.get_job(job_id)
    except UnknownJobError as exc:
        raise ApiError(404, f"no job {job_id}") from exc
    if study is not None and study != job.study_instance_uid:
        raise ApiError(409, f"job {job_id} is of another study")
    unknown = [name for name in destinations if name not in job.destinations]
    if unknown:
        raise ApiError(400, f"job {job_id} has no destination {', '.join(unknown)}")
    accepting = ACCEPTING if destinations else HELD_ACCEPTING
    if job.state not in accepting:
        raise ApiError(409, f"job {job_id} is {job.state}: its results are not taken now")
    return job


def _part_refusal(headers: dict[str, str]) -> str | None:
    kind = headers.get("content-type", DICOM).split(";")[0].strip().lower()
    if kind != DICOM:
        return f"a part of type {kind!r}: only {DICOM} is taken"
    return None


def _stow_answer(request: Request, stored: list[StoredObject], failed: list[str]) -> Response:
    """The PS3.18 10.5.3 answer: 200 all stored, 202 some, 409 none."""
    base = str(request.base_url).rstrip("/")
    body: dict[str, Any] = {}
    if stored:
        body[_REFERENCED_SOP_SEQUENCE] = {
            "vr": "SQ",
            "Value": [
                {
                    _REFERENCED_SOP_CLASS: {"vr": "UI", "Value": [o.sop_class_uid]},
                    _REFERENCED_SOP_INSTANCE: {"vr": "UI", "Value": [o.sop_instance_uid]},
                    _RETRIEVE_URL: {"vr": "UR", "Value": [f"{base}/dicomweb"]},
                }
                for o in stored
            ],
        }
    if failed:
        logger.warning("STOW-RS: %d object(s) refused: %s", len(failed), "; ".join(failed[:3]))
        body[_FAILED_SOP_SEQUENCE] = {
            "vr": "SQ",
            "Value": [
                {
                    _FAILURE_REASON: {"vr": "US", "Value": [_CANNOT_UNDERSTAND]},
                    _REFERENCED_SOP_INSTANCE: {"vr": "UI", "Value": [""]},
                }
                for _reason in failed
            ],
        }
    status = 200 if not failed else (202 if stored else 409)
    return JSONResponse(body, status_code=status, media_type="application/dicom+json")

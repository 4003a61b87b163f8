"""Where a worker finds a job's series: in the node's spool, or fetched over DICOMweb.

A worker on the node's machine (no ``worker.fetch_from``) reads the spool files the ledger
names. Otherwise, and for instances another node holds (``instances.node``: several nodes
share the ledger, each with its own spool), the series is retrieved with WADO-RS from the
node that holds each instance, at the URL that node records in the ledger
(``node.dicomweb_url``) or else ``worker.fetch_from``, into this worker's own
``data_dir/fetch/<host>-<pid>/<job id>/``: streamed to files, each checked against the
ledger's instance list and sizes, and removed when the job ends (a folder left by a
worker process that died is removed when the next one starts). An instance of another
node that serves no DICOMweb is read in place when its file is here (a shared file
system, as workers had before DICOMweb).

A node that cannot be reached (down, failing, or refusing the token) raises
:class:`NodeUnavailableError`: the job waits for it, retried every
``worker.node_retry_seconds`` without using up its attempts, the reason on the dashboard.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from core.errors import TransientError
from core.jobs import JobRecord
from core.ledger import Ledger, NodeRecord, Presence, StoredInstance
from core.settings import Settings
from workers.dicomweb import DicomWebClient, DicomWebError, ReceivedPart, ServerUnavailableError

logger = logging.getLogger(__name__)

FETCH_DIR = "fetch"


class NodeUnavailableError(TransientError):
    """A node holding instances of the job cannot be reached (or refuses this worker)."""

    def __init__(self, message: str, *, node: str | None) -> None:
        super().__init__(message)
        self.node = node


@dataclass(frozen=True, slots=True)
class SeriesFiles:
    """A job's series as files on this machine, in the ledger's order."""

    paths: list[Path]
    #: Instances retrieved over DICOMweb for this job (0: all read in place), their bytes,
    #: the seconds it took and the nodes they came from.
    fetched: int = 0
    fetched_bytes: int = 0
    seconds: float = 0.0
    nodes: tuple[str, ...] = ()

    def describe(self) -> str:
        """A job note: what was fetched, from where, how fast (no patient data)."""
        rate = self.fetched_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        return (
            f"fetched {self.fetched} instance(s), {self.fetched_bytes / 1e6:.1f} MB, over "
            f"DICOMweb from {', '.join(self.nodes)} in {self.seconds:.2f} s ({rate:.0f} MB/s)"
        )


class SeriesFetcher:
    """The series of this worker process's jobs (see the module docstring)."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        worker = settings.worker
        self.remote = worker.fetch_from is not None
        self._token = worker.fetch_token.get_secret_value() if worker.fetch_token else None
        self.folder = settings.data_dir / FETCH_DIR / f"{socket.gethostname()}-{os.getpid()}"
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        # Jobs running here now: their files are never let go by keep_only.
        self._in_use: set[str] = set()

    def remove_leftovers(self) -> None:
        """Remove the fetch folders of this machine's worker processes that are gone (and
        this process's own, left by a process that had its pid before)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        root = self.folder.parent
        prefix = f"{socket.gethostname()}-"
        for folder in root.glob(f"{prefix}*") if root.is_dir() else []:
            pid = folder.name[len(prefix) :]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
                logger.info("removed series fetched by worker process %s, which is gone", pid)

    def files(
        self, job: JobRecord, instances: Sequence[StoredInstance], *, ahead: bool = False
    ) -> SeriesFiles:
        """The series of ``job`` as local files, fetching what is not on this machine;
        ``ahead``: read ahead for a job that may yet go to another worker.

        Raises:
            NodeUnavailableError: a node holding some of them cannot be reached.
            TransientError: a node sent less than the ledger lists, or other sizes.
        """
        if not ahead:
            with self._locks_guard:
                self._in_use.add(job.job_id)
        with self._lock(job.job_id):
            return self._files(job, instances)

    def release(self, job_id: str) -> None:
        """The job ended: remove what was fetched for it."""
        with self._lock(job_id):
            shutil.rmtree(self.folder / job_id, ignore_errors=True)
        with self._locks_guard:
            self._locks.pop(job_id, None)
            self._in_use.discard(job_id)

    def keep_only(self, job_ids: set[str]) -> None:
        """Remove fetched series of other jobs (read ahead for a job another worker took)."""
        if not self.folder.is_dir():
            return
        with self._locks_guard:
            keep = job_ids | self._in_use
        for folder in self.folder.iterdir():
            if folder.name not in keep:
                self.release(folder.name)

    def _lock(self, job_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[job_id]

    def node_here(self) -> str | None:
        """The node whose disk this worker writes its results to (``node.name``), when the
        ledger knows a node of that name; else None (any node may deliver them: one node
        whose volume the worker shares under another host name, as in containers)."""
        if self.remote:
            return None
        name = self.settings.node.name
        return name if name in Presence(self.ledger).node_endpoints() else None

    def _in_place(self, instance: StoredInstance, endpoints: dict[str, NodeRecord] | None) -> bool:
        """Whether the worker reads ``instance`` where the node stored it: it is this
        machine's node's; or (``endpoints`` given) it is another node's that serves no
        DICOMweb, and its file is here: a file system shared the way workers shared it
        before DICOMweb (containers with one volume, say)."""
        if self.remote:
            return False
        if instance.node in (None, self.settings.node.name):
            return True
        if endpoints is None:
            return False
        record = endpoints.get(instance.node)
        return (record is None or record.dicomweb_url is None) and Path(instance.path).is_file()

    def _files(self, job: JobRecord, instances: Sequence[StoredInstance]) -> SeriesFiles:
        folder = self.folder / job.job_id
        endpoints = None
        if any(not self._in_place(i, None) for i in instances):
            endpoints = Presence(self.ledger).node_endpoints()
        in_place = [self._in_place(i, endpoints) for i in instances]
        by_node: dict[str | None, list[StoredInstance]] = defaultdict(list)
        for instance, here in zip(instances, in_place, strict=True):
            if not here and not _fetched(folder, instance):
                by_node[instance.node].append(instance)
        started = time.perf_counter()
        fetched_bytes = 0
        if by_node:
            folder.mkdir(parents=True, exist_ok=True)
            for node, wanted in by_node.items():
                fetched_bytes += self._fetch(job, node, wanted, folder, endpoints or {})
        paths = [
            Path(i.path) if here else folder / f"{i.sop_instance_uid}.dcm"
            for i, here in zip(instances, in_place, strict=True)
        ]
        count = sum(len(w) for w in by_node.values())
        return SeriesFiles(
            paths,
            fetched=count,
            fetched_bytes=fetched_bytes,
            seconds=time.perf_counter() - started if count else 0.0,
            nodes=tuple(sorted(n or "the node" for n in by_node)),
        )

    def _fetch(
        self,
        job: JobRecord,
        node: str | None,
        wanted: list[StoredInstance],
        folder: Path,
        endpoints: dict[str, NodeRecord],
    ) -> int:
        """Retrieve ``wanted`` (held by ``node``) into ``folder``; return the bytes."""
        record = endpoints.get(node) if node is not None else None
        url = (record.dicomweb_url if record else None) or self.settings.worker.fetch_from
        name = node or "the node"
        if url is None:
            raise NodeUnavailableError(
                f"waiting for node {name}, which holds {len(wanted)} of the series' "
                "instances: it records no DICOMweb URL (set node.dicomweb_url on it)",
                node=node,
            )
        client = DicomWebClient(
            url,
            token=self._token,
            ca_certificates=self.settings.worker.fetch_ca_certificates,
            timeout=self.settings.worker.fetch_timeout_seconds,
        )
        expected = {i.sop_instance_uid: i for i in wanted}
        got: set[str] = set()
        received = 0

        def keep(part: ReceivedPart) -> None:
            nonlocal received
            uid = part.sop_instance_uid or _sop_uid_of(part.path)
            instance = expected.get(uid) if uid else None
            if instance is None:
                # Arrived after the job was opened (its re-run covers it), or another's.
                part.path.unlink(missing_ok=True)
                return
            if part.size != instance.size:
                part.path.unlink(missing_ok=True)
                raise DicomWebError(
                    f"node {name} sent instance {uid} with {part.size} bytes; the ledger "
                    f"records {instance.size} (changed meanwhile?)"
                )
            part.path.replace(folder / f"{instance.sop_instance_uid}.dcm")
            got.add(instance.sop_instance_uid)
            received += part.size

        relative = f"studies/{job.study_instance_uid}/series/{job.series_instance_uid}"
        try:
            client.retrieve(relative, folder, on_part=keep)
        except ServerUnavailableError as exc:
            raise NodeUnavailableError(
                f"waiting for node {name}, which holds {len(wanted)} of the series' "
                f"instances: {exc}{_last_seen(record)}",
                node=node,
            ) from exc
        missing = len(expected) - len(got)
        if missing:
            raise DicomWebError(
                f"node {name} sent {len(got)} of the {len(expected)} instances the ledger "
                f"says it holds ({missing} missing)"
            )
        return received


def _fetched(folder: Path, instance: StoredInstance) -> bool:
    """Whether ``instance`` is already here (read ahead, or an earlier attempt)."""
    try:
        return (folder / f"{instance.sop_instance_uid}.dcm").stat().st_size == instance.size
    except OSError:
        return False


def _sop_uid_of(path: Path) -> str | None:
    try:
        return str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
    except (OSError, ValueError, AttributeError):
        return None


def _last_seen(record: NodeRecord | None) -> str:
    if record is None:
        return ""
    if record.stopped_at is not None:
        return f" (it stopped at {time.strftime('%H:%M:%S', time.localtime(record.stopped_at))})"
    return f" (its last heartbeat {time.time() - record.heartbeat_at:.0f} s ago)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True

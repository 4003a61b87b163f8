"""Recording received instances in the ledger, off the network's critical path.

The SCP answers Success as soon as an instance is durably in the spool; the ledger rows
are written by one background thread in batches (one transaction for many instances).
The spool is the journal: an acknowledged instance is a file in its series folder, so
whatever was acknowledged but not reported is found there again.

* A receiving process that dies may have answered Success for instances it had not yet
  reported. The recorder is then asked to :meth:`IngestRecorder.rescan` the series
  folders changed since that process last reported: in its own queue, after every
  record the process did report, so nothing is recorded twice.
* At start-up :func:`register_unrecorded` walks the series folders changed since the
  last checkpoint (``spool/.checkpoint``, written every minute while the node runs,
  five minutes behind), or the whole spool when there is none.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.files import atomic_write
from core.jobs import InstanceRecord
from core.ledger import Ledger
from dicom_node.header import read_file_identity
from dicom_node.spool import RecoveredInstance

logger = logging.getLogger(__name__)

_BATCH = 500
_LINGER_SECONDS = 0.5
#: What the start-up walk trusts to be recorded: anything placed this long before a
#: checkpoint was written (reports arrive within a fraction of a second).
CHECKPOINT_LAG_SECONDS = 300.0
CHECKPOINT_FILE = ".checkpoint"


class _Rescan:
    """A queue marker: look for unrecorded files changed since ``since`` (wall time)."""

    __slots__ = ("since", "spool_root")

    def __init__(self, spool_root: Path, since: float) -> None:
        self.spool_root = spool_root
        self.since = since


class IngestRecorder:
    """Writes :class:`InstanceRecord` batches to the ledger from a background thread."""

    def __init__(self, ledger: Ledger, *, node: str | None = None) -> None:
        """``node``: this node's ``node.name``, recorded as holding what it stores."""
        self._ledger = ledger
        self._node = node
        self._queue: queue.Queue[InstanceRecord | _Rescan | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ingest-recorder", daemon=True)
        self._stopped = False
        self._sources: list[Callable[[float], bool]] = []

    def start(self) -> None:
        self._thread.start()

    def add(self, record: InstanceRecord) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(record)

    def rescan(self, spool_root: Path, *, since: float) -> None:
        """Record the files in series folders changed since ``since`` that the ledger does
        not know, after everything queued so far (see the module docstring)."""
        with self._idle:
            self._pending += 1
        self._queue.put(_Rescan(spool_root, since))

    def follow(self, source: Callable[[float], bool]) -> None:
        """Also wait for ``source`` (the SCP's receivers) when flushing: instances stored
        in other processes reach this recorder a little later."""
        self._sources.append(source)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything stored so far is in the ledger; False on timeout."""
        deadline = time.monotonic() + timeout
        for source in self._sources:
            if not source(timeout):
                return False
        with self._idle:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def stop(self, timeout: float = 30.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        done = False
        rescan: _Rescan | None = None
        while not done:
            first = self._queue.get()
            if first is None:
                break
            if isinstance(first, _Rescan):
                self._rescan(first)
                continue
            batch = [first]
            deadline = time.monotonic() + _LINGER_SECONDS
            while len(batch) < _BATCH:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    done = True
                    break
                if isinstance(item, _Rescan):
                    rescan = item
                    break
                batch.append(item)
            self._write(batch)
            if rescan is not None:
                self._rescan(rescan)
                rescan = None

    def _rescan(self, marker: _Rescan) -> None:
        try:
            register_unrecorded(
                marker.spool_root, self._ledger, modified_since=marker.since, node=self._node
            )
        except Exception:
            # The files stay in the spool; the next start-up walk finds them.
            logger.exception("could not look for unrecorded instances in the spool")
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _write(self, batch: list[InstanceRecord]) -> None:
        delay = 0.1
        while True:
            try:
                self._ledger.record_instances(batch, node=self._node)
                break
            except Exception:
                # The files are safe in the spool; keep trying, and a restart would find
                # them anyway (register_unrecorded). Never drop the batch.
                logger.exception(
                    "could not record %d instances in the ledger; retrying", len(batch)
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        with self._idle:
            self._pending -= len(batch)
            self._idle.notify_all()


def write_checkpoint(spool_root: Path, *, now: float | None = None) -> None:
    """Say that files placed before ``now - CHECKPOINT_LAG_SECONDS`` are all recorded."""
    at = (time.time() if now is None else now) - CHECKPOINT_LAG_SECONDS
    atomic_write(spool_root / CHECKPOINT_FILE, f"{at:.3f}\n".encode())


def read_checkpoint(spool_root: Path) -> float | None:
    """The time of the last checkpoint, or ``None`` (a new spool: walk it whole)."""
    try:
        return float((spool_root / CHECKPOINT_FILE).read_text())
    except (OSError, ValueError):
        return None


def register_unrecorded(
    spool_root: Path,
    ledger: Ledger,
    *,
    modified_since: float | None = None,
    node: str | None = None,
) -> int:
    """Record spool files that the ledger does not know (acknowledged, never reported).

    ``modified_since`` (wall time): only series folders changed since then are read (a
    file placed into a folder changes the folder's time); ``None`` walks the whole spool.
    Returns the number of instances registered.
    """
    registered = 0
    # Hidden folders (.incoming, the .sop index) hold no series.
    series_dirs = [
        p for p in spool_root.glob("*/*") if not p.parent.name.startswith(".") and p.is_dir()
    ]
    if modified_since is not None:
        series_dirs = [p for p in series_dirs if _mtime(p) >= modified_since]
    for series_dir in sorted(series_dirs):
        known = {i.sop_instance_uid for i in ledger.series_instances(series_dir.name)}
        records: list[InstanceRecord] = []
        for path in sorted(series_dir.glob("*.dcm")):
            if path.stem in known:
                continue
            try:
                stat = path.stat()
                found = RecoveredInstance(path, stat.st_size, read_file_identity(path))
                records.append(found.record(received_at=stat.st_mtime))
            except Exception:
                logger.exception("cannot re-register spool file %s", path)
        if records:
            ledger.record_instances(records, node=node)
            registered += len(records)
    if registered:
        logger.warning("registered %d spool instances missing from the ledger", registered)
    return registered


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("-inf")  # removed meanwhile (retention): nothing to record

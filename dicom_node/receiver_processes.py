"""Receiving processes: the node's accept loop on every core.

Each receiving process (``node.receiver_processes``, by default one per core, at most 4)
waits on the node's listening sockets and serves what it accepts
(:func:`~dicom_node.receivers.accept_loop`); the kernel hands each new connection to one
of them, and a process busier than a sibling lets the sibling take it. Each writes the
spool directly.

What happens is reported to the node process over one pipe per child, in batches: stored
and quarantined instances (the node records them in the ledger, where completion and
routing stay), refusals, and log records, which the node's logging then formats as its
own. Children are forked by multiprocessing's fork server (a clean single-threaded
process), not from the node process with its threads. A child that dies is restarted;
what it was writing (temporary files named after its pid) is finished if it had been made
durable and removed otherwise. A child whose node process dies sees its lifeline pipe
close and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import selectors
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from core.errors import PacsAiError
from core.jobs import InstanceRecord
from core.quarantine import Quarantine, QuarantineEntry
from core.settings import NodeSettings
from dicom_node.acceptor import Acceptor, Slots
from dicom_node.access import AccessPolicy
from dicom_node.incoming import InstanceStore, Outcomes
from dicom_node.receivers import STOP_GRACE_SECONDS, CountsByKey, Listener, accept_loop
from dicom_node.spool import Spool
from dicom_node.tls import server_context

logger = logging.getLogger(__name__)


class ReceiverStartError(PacsAiError):
    """The receiving processes could not be started (the node cannot receive)."""


#: Receiving processes report stored instances to the node process this often.
BATCH_SECONDS = 0.05
#: How long start-up waits for every receiving process to be ready.
START_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ReceiverSpec:
    """Everything a receiving process needs (sent to it when it starts)."""

    settings: NodeSettings
    spool_root: Path
    fsync: bool
    min_free_bytes: int
    quarantine_root: Path
    log_level: int


class _SharedSlots(Slots):
    """Connections counted across processes: per process one counter of associations
    and one of pending connections, each written only by its owner (no lock that a
    dying process could leave held); the sums are the node's. Two processes accepting at
    the same instant may let one connection over a limit."""

    def __init__(
        self,
        counts: ctypes.Array[ctypes.c_int],
        index: int,
        *,
        limit: int,
        pending_limit: int,
        per_address: int,
        per_ae: int,
    ) -> None:
        self._counts = counts
        self._processes = len(counts) // 2
        self._index = index
        self._pending_index = self._processes + index
        self._limit = limit
        self._pending_limit = pending_limit
        self._by_address = CountsByKey(per_address)
        self._by_ae = CountsByKey(per_ae)
        self._lock = threading.Lock()

    def opened(self, address: str) -> bool:
        counts = self._counts
        with self._lock:
            if sum(counts[self._processes :]) >= self._pending_limit:
                return False
            if not self._by_address.add(address):
                return False
            counts[self._pending_index] += 1
            return True

    def associated(self, address: str, calling_ae: str) -> bool:
        counts = self._counts
        with self._lock:
            if sum(counts[: self._processes]) >= self._limit or not self._by_ae.add(calling_ae):
                return False
            self._by_address.remove(address)
            counts[self._index] += 1
            counts[self._pending_index] -= 1
            return True

    def closed(self, address: str, *, calling_ae: str | None) -> None:
        with self._lock:
            if calling_ae is not None:
                self._by_ae.remove(calling_ae)
                self._counts[self._index] -= 1
            else:
                self._by_address.remove(address)
                self._counts[self._pending_index] -= 1

    def busier_than_siblings(self) -> bool:
        counts = self._counts
        processes = self._processes
        load = [counts[i] + counts[processes + i] for i in range(processes)]
        return bool(load[self._index] > min(load))


class _Events:
    """A child's end of its event pipe, shared by its threads."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def send(self, events: list[tuple[Any, ...]]) -> None:
        # OSError: the node process is gone, and the lifeline ends us soon.
        with self._lock, contextlib.suppress(OSError):
            self._connection.send(events)


class _RemoteOutcomes(Outcomes):
    """Outcomes for the node process, sent in batches at most every :data:`BATCH_SECONDS`.

    Sending each event at once would wake the node process for every instance, on a
    machine whose cores are busy receiving; a short delay costs nothing (completion
    waits for seconds of quiet) and takes the pipe off the path of every answer.
    """

    def __init__(self, events: _Events) -> None:
        self._events = events
        self._pending: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="receiver-events", daemon=True)
        self._thread.start()

    def stored(self, record: InstanceRecord) -> None:
        self._add(("stored", record))

    def quarantined(self, folder: str, entry: QuarantineEntry) -> None:
        self._add(("quarantined", folder, entry))

    def refused(self) -> None:
        self._add(("refused",))

    def association(self, *, accepted: bool) -> None:
        self._add(("association", accepted))

    def association_ended(self, *, peer: str, released: bool) -> None:
        self._add(("ended", peer, released))

    def flush(self) -> None:
        return None  # the sender thread sends within BATCH_SECONDS

    def send_now(self) -> None:
        """Send what is pending (before the process ends)."""
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self._events.send(pending)

    def _add(self, event: tuple[Any, ...]) -> None:
        with self._lock:
            self._pending.append(event)
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(BATCH_SECONDS)
            self._wake.clear()
            self.send_now()


class _ForwardingHandler(logging.Handler):
    """Sends log records to the node process, which logs them with its own handlers."""

    def __init__(self, events: _Events) -> None:
        super().__init__()
        self._events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"] = record.getMessage()
            fields["args"] = None
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields["exc_info"] = None
            self._events.send([("log", fields)])
        except Exception:  # noqa: BLE001 -- logging must never break receiving
            self.handleError(record)


def _receiver_main(  # noqa: PLR0917 -- multiprocessing passes positional arguments
    spec: ReceiverSpec,
    index: int,
    listeners: list[Listener],
    lifeline: Connection,
    events_connection: Connection,
    counts: ctypes.Array[ctypes.c_int],
) -> None:
    """A receiving process (see the module docstring)."""
    # Ctrl-C reaches the whole process group; the node process decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    events = _Events(events_connection)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_ForwardingHandler(events))
    root.setLevel(spec.log_level)
    settings = spec.settings
    spool = Spool(
        spec.spool_root,
        fsync=spec.fsync,
        min_free_bytes=spec.min_free_bytes,
        recover_leftovers=False,
    )
    outcomes = _RemoteOutcomes(events)
    store = InstanceStore(
        spool=spool,
        quarantine=Quarantine(
            spec.quarantine_root,
            max_bytes=settings.quarantine_max_mb * 1024 * 1024,
            min_free_bytes=spec.min_free_bytes,
        ),
        outcomes=outcomes,
        called_ae=settings.ae_title,
        max_instance_bytes=settings.max_instance_bytes,
    )
    acceptor = Acceptor(
        settings=settings,
        store=store,
        access=AccessPolicy(settings.allowed_callers),
        slots=_SharedSlots(
            counts,
            index,
            limit=settings.max_associations,
            pending_limit=settings.max_pending_connections,
            per_address=settings.max_pending_per_address,
            per_ae=settings.max_associations_per_ae,
        ),
        tls=server_context(settings.tls) if settings.tls is not None else None,
    )

    def flush(token: bytes) -> None:
        # Everything stored so far goes to the node process before the answer does.
        outcomes.send_now()
        events.send([("flushed", token)])

    events.send([("ready", os.getpid())])
    try:
        accept_loop(listeners, acceptor, lifeline, on_message=flush)
    finally:
        outcomes.send_now()


Dispatch = Callable[[tuple[Any, ...]], None]


@dataclass
class _Child:
    index: int
    process: multiprocessing.process.BaseProcess
    lifeline: Connection
    events: Connection
    #: Wall time of its start, then of each batch of events it reported.
    reported_at: float = 0.0


class ProcessReceivers:
    """``count`` receiving processes sharing ``listeners`` (see the module docstring).

    ``dispatch`` gets every event but log records, in one thread of this process.
    """

    def __init__(
        self,
        spec: ReceiverSpec,
        listeners: Sequence[Listener],
        *,
        count: int,
        dispatch: Dispatch,
    ) -> None:
        self._spec = spec
        self._listeners = list(listeners)
        self._count = count
        self._dispatch = dispatch
        self._context = multiprocessing.get_context("forkserver")
        # The fork server imports these once; children start from a warm copy.
        self._context.set_forkserver_preload(["dicom_node.receiver_processes"])
        # Associations of each process, then pending connections of each (_SharedSlots).
        self._counts = self._context.Array("i", 2 * count, lock=False)
        self._children: dict[int, _Child] = {}
        self._stopping = threading.Event()
        self._ready: set[int] = set()
        self._ready_changed = threading.Condition()
        self._start_failure = ""
        self._flushed: dict[int, bytes] = {}
        self._flush_count = 0
        self._flush_lock = threading.Lock()
        self._restarts: list[float] = []
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name="dicom-receivers", daemon=True)

    @property
    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children.values() if child.process.pid]

    def start(self) -> None:
        """Start the processes and wait until each is accepting.

        Raises:
            ReceiverStartError: a process exited while starting, or did not start within
                :data:`START_TIMEOUT_SECONDS`.
        """
        for index in range(self._count):
            self._spawn(index)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with self._ready_changed:
            while len(self._ready) < self._count and not self._start_failure:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._start_failure = (
                        f"only {len(self._ready)} of {self._count} receiving processes "
                        f"started within {START_TIMEOUT_SECONDS:g} s"
                    )
                    break
                self._ready_changed.wait(remaining)
        if self._start_failure:
            self.stop()
            raise ReceiverStartError(self._start_failure)

    def sync(self, timeout: float = 30.0) -> bool:
        """Wait until every receiving process has reported all it stored so far.

        Returns False if some did not answer within ``timeout`` (or died meanwhile: what
        a dead process stored is recovered and reported when it is reaped).
        """
        with self._flush_lock:
            self._flush_count += 1
            token = str(self._flush_count).encode()
            asked = []
            for child in list(self._children.values()):
                if child.index in self._ready:
                    with contextlib.suppress(OSError):
                        child.lifeline.send_bytes(token)
                        asked.append(child)
            deadline = time.monotonic() + timeout
            with self._ready_changed:
                while True:
                    waiting = [
                        c
                        for c in asked
                        if self._flushed.get(c.index) != token and self._children.get(c.index) is c
                    ]
                    remaining = deadline - time.monotonic()
                    if not waiting or remaining <= 0:
                        return not waiting
                    self._ready_changed.wait(min(remaining, 0.5))

    def stop(self) -> None:
        self._stopping.set()
        for child in list(self._children.values()):
            with contextlib.suppress(OSError):
                child.lifeline.close()
        deadline = time.monotonic() + STOP_GRACE_SECONDS + 10
        for child in list(self._children.values()):
            child.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if child.process.is_alive():
                logger.warning("receiving process %s did not stop; killing it", child.process.pid)
                child.process.kill()
                child.process.join(timeout=5)
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _spawn(self, index: int) -> None:
        lifeline_reader, lifeline_writer = self._context.Pipe(duplex=False)
        events_reader, events_writer = self._context.Pipe(duplex=False)
        self._counts[index] = 0
        process = self._context.Process(
            target=_receiver_main,
            args=(
                self._spec,
                index,
                self._listeners,
                lifeline_reader,
                events_writer,
                self._counts,
            ),
            name=f"pacs-ai-receiver-{index}",
            daemon=True,
        )
        process.start()
        # The child holds its own copies; ours would keep the pipes open after it died.
        lifeline_reader.close()
        events_writer.close()
        child = _Child(index, process, lifeline_writer, events_reader, reported_at=time.time())
        self._children[index] = child
        self._selector.register(events_reader, selectors.EVENT_READ, ("events", child))
        self._selector.register(process.sentinel, selectors.EVENT_READ, ("exit", child))

    def _run(self) -> None:
        selector = self._selector
        while self._children:
            for key, _events in selector.select(timeout=1.0):
                kind: str = key.data[0]
                child: _Child = key.data[1]
                if kind == "events":
                    self._drain(child)
                elif self._children.get(child.index) is child:
                    self._reap(child)

    def _drain(self, child: _Child) -> None:
        try:
            while child.events.poll():
                events = child.events.recv()
                child.reported_at = time.time()
                for event in events:
                    self._handle(child, event)
        except (EOFError, OSError):
            # The child is gone; its sentinel says so too. Stop watching the pipe.
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(child.events)

    def _handle(self, child: _Child, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "log":
            record = logging.makeLogRecord(event[1])
            logging.getLogger(record.name).handle(record)
        elif kind == "ready":
            with self._ready_changed:
                self._ready.add(child.index)
                self._ready_changed.notify_all()
        elif kind == "flushed":
            with self._ready_changed:
                self._flushed[child.index] = event[1]
                self._ready_changed.notify_all()
        else:
            try:
                self._dispatch(event)
            except Exception:
                logger.exception("cannot record a receiving process's %s event", kind)

    def _recover(self, pid: int) -> None:
        """Finish or remove what a dead receiving process left in the spool."""
        spool = Spool(self._spec.spool_root, fsync=self._spec.fsync, recover_leftovers=False)
        for instance in spool.recover_leftovers(pid):
            # Its Success may have been sent before the process died: record it.
            record = instance.record(
                received_at=time.time(), called_ae=self._spec.settings.ae_title
            )
            self._dispatch(("stored", record))

    def _reap(self, child: _Child) -> None:
        self._drain(child)
        for watched in (child.events, child.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(watched)
        child.events.close()
        with contextlib.suppress(OSError):
            child.lifeline.close()
        del self._children[child.index]
        pid = child.process.pid
        child.process.join(timeout=1)
        self._counts[child.index] = 0
        if pid is not None:
            self._recover(pid)
        # It may have answered Success for instances it never reported (they are in the
        # spool): have them looked for. Stored events are sent within BATCH_SECONDS;
        # a second of margin covers a batch in flight.
        self._dispatch(("lost", child.reported_at - 1.0))
        if self._stopping.is_set():
            return
        if child.index not in self._ready:
            # It never started: starting another would fail the same way.
            with self._ready_changed:
                self._start_failure = (
                    f"a receiving process exited while starting (exit code "
                    f"{child.process.exitcode}; see the log above). A program that starts a "
                    "Node itself must guard its main module with "
                    "`if __name__ == '__main__':` (multiprocessing's fork server imports it "
                    "again), or set node.receiver_processes: 0"
                )
                self._ready_changed.notify_all()
            return
        logger.error(
            "receiving process %s exited unexpectedly (exit code %s); starting another",
            pid,
            child.process.exitcode,
        )
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60] + [now]
        if len(self._restarts) > 5:
            # Crashing in a loop: slow down rather than spin.
            self._stopping.wait(5.0)
            if self._stopping.is_set():
                return
        self._spawn(child.index)

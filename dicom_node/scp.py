"""The DICOM listener: C-ECHO and C-STORE for every storage SOP class and transfer syntax.

:class:`StorageSCP` opens the listening sockets (plain, TLS, or both) and runs the
receivers: ``node.receiver_processes`` processes (default: one per core, at most 4) or,
with 0, a thread of this process. Each association is served by our own Upper Layer
data path (:mod:`dicom_node.acceptor`): data sets stream from the socket straight into
the spool. What the receivers report -- instances stored or quarantined, refusals -- comes
back here and goes to ``on_stored`` / ``on_quarantined`` in this process.

The C-STORE statuses (PS3.4 B.2.3, by name from ``status.py``): Success only after the
instance is durably in the spool; Out of Resources when it cannot be stored; Data Set
does not match SOP Class or Cannot Understand for bad data, which is kept in quarantine
with the reason; Processing Failure for a fault of ours, the data also kept.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from core.jobs import InstanceRecord
from core.quarantine import Quarantine, QuarantineEntry
from core.settings import NodeSettings
from dicom_node.acceptor import Acceptor
from dicom_node.access import AccessPolicy
from dicom_node.incoming import InstanceStore, Outcomes
from dicom_node.receiver_processes import ProcessReceivers, ReceiverSpec
from dicom_node.receivers import Listener, LocalSlots, ThreadReceiver, default_process_count
from dicom_node.spool import Spool
from dicom_node.tls import server_context

logger = logging.getLogger(__name__)

StoredCallback = Callable[[InstanceRecord], None]
QuarantinedCallback = Callable[[str, QuarantineEntry], None]
#: (peer ``address:port``, released normally) when an association ends.
EndedCallback = Callable[[str, bool], None]

_BACKLOG = 128


class StorageSCP:
    """A Storage SCP that files instances in the spool and reports them.

    ``on_stored`` is called after each instance is durably stored (the ledger recorder);
    ``on_quarantined`` after bad data has been kept in quarantine; ``on_association_ended``
    when an association ends, after the instances it brought. All are called in
    this process (from several threads when receiving in threads: they must be
    thread-safe).
    """

    def __init__(
        self,
        settings: NodeSettings,
        *,
        spool: Spool,
        quarantine: Quarantine,
        on_stored: StoredCallback,
        on_quarantined: QuarantinedCallback,
        on_association_ended: EndedCallback | None = None,
        on_receiver_lost: Callable[[float], None] | None = None,
    ) -> None:
        """``on_receiver_lost(since)``: a receiving process died; it may have stored
        instances since ``since`` (wall time) that it never reported."""
        self.settings = settings
        self._on_ended = on_association_ended
        self._on_receiver_lost = on_receiver_lost
        self.spool = spool
        self.quarantine = quarantine
        self._on_stored = on_stored
        self._on_quarantined = on_quarantined
        self._lock = threading.Lock()
        self.stats = {
            "stored": 0,
            "quarantined": 0,
            "refused": 0,
            "associations": 0,
            "rejected": 0,
        }
        self.processes = (
            default_process_count()
            if settings.receiver_processes is None
            else settings.receiver_processes
        )
        # Built here so that a bad certificate fails at start-up, in this process.
        self._tls = server_context(settings.tls) if settings.tls is not None else None
        self._listeners: list[Listener] = []
        self._receiver: ThreadReceiver | ProcessReceivers | None = None

    @property
    def port(self) -> int:
        """The port of the plain listener (or of the only one, when it speaks TLS)."""
        if not self._listeners:
            raise RuntimeError("the SCP is not running")
        return int(self._listeners[0][0].getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        """The port that speaks TLS, if any."""
        for listener, tls in self._listeners:
            if tls:
                return int(listener.getsockname()[1])
        return None

    @property
    def pids(self) -> list[int]:
        """The receiving processes' ids (none when receiving in threads)."""
        return self._receiver.pids if isinstance(self._receiver, ProcessReceivers) else []

    def start(self) -> None:
        """Listen, and return once every receiver accepts associations.

        Raises:
            OSError: the port cannot be bound.
        """
        self._listeners = self._listen()
        try:
            if self.processes == 0:
                receiver: ThreadReceiver | ProcessReceivers = ThreadReceiver(
                    self._acceptor(), self._listeners
                )
            else:
                receiver = ProcessReceivers(
                    ReceiverSpec(
                        settings=self.settings,
                        spool_root=self.spool.root,
                        fsync=self.spool.fsync,
                        min_free_bytes=self.spool.min_free_bytes,
                        quarantine_root=self.quarantine.root,
                        log_level=logging.getLogger().getEffectiveLevel(),
                    ),
                    self._listeners,
                    count=self.processes,
                    dispatch=self._dispatch,
                )
            receiver.start()
        except BaseException:
            self._close_listeners()
            raise
        self._receiver = receiver
        logger.info(
            "DICOM node %s listening on %s, ports %s; %s",
            self.settings.ae_title,
            self.settings.host,
            ", ".join(
                f"{listener.getsockname()[1]}{' (TLS)' if tls else ''}"
                for listener, tls in self._listeners
            ),
            f"{self.processes} receiving processes" if self.processes else "receiving in threads",
        )

    def sync(self, timeout: float = 30.0) -> bool:
        """Wait until ``on_stored`` / ``on_quarantined`` have been called for everything the
        receivers stored or quarantined so far; False on timeout."""
        receiver = self._receiver
        return True if receiver is None else receiver.sync(timeout)

    def stop(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.stop()
        self._close_listeners()

    def _listen(self) -> list[Listener]:
        host, port = self.settings.host, self.settings.port
        tls = self.settings.tls
        listeners: list[Listener] = []
        try:
            if tls is None or tls.port is not None:
                listeners.append((_listening_socket(host, port), False))
            if tls is not None:
                listeners.append((_listening_socket(host, tls.port or port), True))
        except BaseException:
            for listener, _tls in listeners:
                listener.close()
            raise
        return listeners

    def _close_listeners(self) -> None:
        listeners, self._listeners = self._listeners, []
        for listener, _tls in listeners:
            with contextlib.suppress(OSError):
                listener.close()

    def _acceptor(self) -> Acceptor:
        return Acceptor(
            settings=self.settings,
            store=InstanceStore(
                spool=self.spool,
                quarantine=self.quarantine,
                outcomes=_LocalOutcomes(self._dispatch),
                called_ae=self.settings.ae_title,
                max_instance_bytes=self.settings.max_instance_bytes,
            ),
            access=AccessPolicy(self.settings.allowed_callers),
            slots=LocalSlots(
                self.settings.max_associations,
                self.settings.max_pending_connections,
                self.settings.max_pending_per_address,
                self.settings.max_associations_per_ae,
            ),
            tls=self._tls,
        )

    def _dispatch(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "stored":
            self._count("stored")
            self._on_stored(event[1])
        elif kind == "quarantined":
            self._count("quarantined")
            self._on_quarantined(event[1], event[2])
        elif kind == "refused":
            self._count("refused")
        elif kind == "association":
            self._count("associations" if event[1] else "rejected")
        elif kind == "ended" and self._on_ended is not None:
            self._on_ended(event[1], event[2])
        elif kind == "lost" and self._on_receiver_lost is not None:
            self._on_receiver_lost(event[1])

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1


class _LocalOutcomes(Outcomes):
    def __init__(self, dispatch: Callable[[tuple[Any, ...]], None]) -> None:
        self._dispatch = dispatch

    def stored(self, record: InstanceRecord) -> None:
        self._dispatch(("stored", record))

    def quarantined(self, folder: str, entry: QuarantineEntry) -> None:
        self._dispatch(("quarantined", folder, entry))

    def refused(self) -> None:
        self._dispatch(("refused",))

    def association(self, *, accepted: bool) -> None:
        self._dispatch(("association", accepted))

    def association_ended(self, *, peer: str, released: bool) -> None:
        self._dispatch(("ended", peer, released))

    def flush(self) -> None:
        return None  # delivered at once


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=_BACKLOG)
    # Nagle's algorithm would delay each small response PDU while the peer waits for it
    # (delayed ACK): about 30x slower C-STORE. Accepted sockets inherit the option.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock

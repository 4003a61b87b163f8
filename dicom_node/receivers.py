"""Accepting associations: the accept loop, run in threads or in receiving processes.

The node's listening sockets are opened once, in the node process. Each receiver waits on
them and serves every association it accepts in a thread of its own
(:class:`~dicom_node.acceptor.Acceptor`). With ``node.receiver_processes: 0`` one accept
loop runs in a thread of the node process (:class:`ThreadReceiver`); otherwise in that
many processes (:mod:`dicom_node.receiver_processes`), so that parallel associations run
on several cores, free of one interpreter lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from dicom_node.acceptor import Acceptor, Slots

logger = logging.getLogger(__name__)

#: How long stopping waits for associations in progress before cutting them off.
STOP_GRACE_SECONDS = 2.0
#: A receiving process busier than a sibling waits this long before taking a connection.
DEFER_SECONDS = 0.005

Listener = tuple[socket.socket, bool]  # a listening socket, and whether it speaks TLS


def default_process_count() -> int:
    """One receiving process per CPU core, at most 4."""
    return max(1, min(os.cpu_count() or 1, 4))


def accept_loop(
    listeners: Sequence[Listener],
    acceptor: Acceptor,
    stop: Connection | socket.socket,
    *,
    on_message: Callable[[bytes], None] | None = None,
) -> None:
    """Accept connections until told to stop; serve each in a thread.

    ``stop`` is a socket (any data or its closing stops the loop) or the lifeline pipe
    from the node process (its closing stops the loop; a message goes to ``on_message``).
    Then stop accepting, give associations in progress :data:`STOP_GRACE_SECONDS` to end
    and cut the rest off (an incomplete instance is never stored).
    """
    selector = selectors.DefaultSelector()
    for listener, tls in listeners:
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, (listener, tls))
    selector.register(stop, selectors.EVENT_READ, None)
    active: dict[threading.Thread, socket.socket] = {}
    lock = threading.Lock()

    slots = acceptor.slots
    refusals = _Refusals()

    def serve(connection: socket.socket, address: Any, tls: bool) -> None:
        calling_ae: str | None = None
        try:
            calling_ae = acceptor.serve(connection, address, tls=tls)
        finally:
            slots.closed(str(address[0]), calling_ae=calling_ae)
            with lock:
                active.pop(threading.current_thread(), None)

    try:
        running = True
        while running:
            for key, _events in selector.select():
                if key.data is None:
                    running = _still_running(stop, on_message)
                    if not running:
                        break
                    continue
                listener, tls = key.data
                if slots.busier_than_siblings():
                    # Every receiving process is woken; let a less busy one take it, so
                    # that parallel associations spread over the cores.
                    time.sleep(DEFER_SECONDS)
                accepted = _accept(listener)
                if accepted is None:
                    continue
                connection, address = accepted
                if not slots.opened(str(address[0])):
                    # The pending budget is spent (silent or slow connections): this one
                    # is closed before it costs a thread; associations go on.
                    refusals.refuse(connection, address)
                    continue
                connection.setblocking(True)
                thread = threading.Thread(
                    target=serve,
                    args=(connection, address, tls),
                    name=f"association-{address[0]}:{address[1]}",
                    daemon=True,
                )
                with lock:
                    active[thread] = connection
                thread.start()
    finally:
        selector.close()
        for listener, _tls in listeners:
            listener.close()
        _wind_down(active, lock)


def _accept(listener: socket.socket) -> tuple[socket.socket, Any] | None:
    try:
        return listener.accept()
    except (BlockingIOError, InterruptedError):
        return None  # another receiving process took it
    except OSError as exc:
        # Out of file descriptors, for instance: wait a little, keep serving.
        logger.error("cannot accept a connection: %s", exc)  # noqa: TRY400
        time.sleep(0.1)
        return None


class _Refusals:
    """Connections closed at accept, logged at most every 10 s: a flood of connections
    must not become a flood of log lines."""

    def __init__(self) -> None:
        self._logged_at = float("-inf")
        self._count = 0

    def refuse(self, connection: socket.socket, address: Any) -> None:
        with contextlib.suppress(OSError):
            connection.close()
        self._count += 1
        now = time.monotonic()
        if now - self._logged_at >= 10.0:
            logger.warning(
                "closed %d connection(s) at accept, the latest from %s: "
                "node.max_pending_connections are negotiating already",
                self._count,
                address[0],
            )
            self._logged_at, self._count = now, 0


def _still_running(
    stop: Connection | socket.socket, on_message: Callable[[bytes], None] | None
) -> bool:
    """Handle what arrived on ``stop``: whether the accept loop goes on."""
    if isinstance(stop, socket.socket) or on_message is None:
        return False
    try:
        message = stop.recv_bytes()
    except (EOFError, OSError):
        return False  # the node process closed our lifeline, or died
    on_message(message)
    return True


def _wind_down(active: dict[threading.Thread, socket.socket], lock: threading.Lock) -> None:
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while True:
        with lock:
            remaining = dict(active)
        if not remaining or time.monotonic() >= deadline:
            break
        next(iter(remaining)).join(timeout=0.05)
    for connection in remaining.values():
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
    for thread in remaining:
        thread.join(timeout=5)


class CountsByKey:
    """Connections per key (source address, calling AE) in one process, each key at most
    ``limit`` (0: no limit); callers hold a lock."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._counts: dict[str, int] = {}
        self.total = 0

    def add(self, key: str) -> bool:
        count = self._counts.get(key, 0)
        if self._limit and count >= self._limit:
            return False
        self._counts[key] = count + 1
        self.total += 1
        return True

    def remove(self, key: str) -> None:
        count = self._counts.get(key, 0) - 1
        if count > 0:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)
        self.total -= 1


class LocalSlots(Slots):
    """Connections counted in one process."""

    def __init__(self, limit: int, pending_limit: int, per_address: int, per_ae: int) -> None:
        self._limit = limit
        self._pending_limit = pending_limit
        self._associated = CountsByKey(per_ae)
        self._pending = CountsByKey(per_address)
        self._lock = threading.Lock()

    def opened(self, address: str) -> bool:
        with self._lock:
            if self._pending.total >= self._pending_limit:
                return False
            return self._pending.add(address)

    def associated(self, address: str, calling_ae: str) -> bool:
        with self._lock:
            if self._associated.total >= self._limit or not self._associated.add(calling_ae):
                return False
            self._pending.remove(address)
            return True

    def closed(self, address: str, *, calling_ae: str | None) -> None:
        with self._lock:
            if calling_ae is not None:
                self._associated.remove(calling_ae)
            else:
                self._pending.remove(address)

    def busier_than_siblings(self) -> bool:
        return False


class ThreadReceiver:
    """The accept loop in a thread of this process (``receiver_processes: 0``)."""

    def __init__(self, acceptor: Acceptor, listeners: Sequence[Listener]) -> None:
        self._acceptor = acceptor
        self._listeners = listeners
        self._stop_reader, self._stop_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="dicom-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._stop_writer.send(b"x")
        self._thread.join(timeout=STOP_GRACE_SECONDS + 10)
        self._stop_reader.close()
        self._stop_writer.close()

    def sync(self, timeout: float = 30.0) -> bool:
        """Outcomes are reported as they happen in this process: nothing to wait for."""
        return True

    def _run(self) -> None:
        accept_loop(self._listeners, self._acceptor, self._stop_reader)

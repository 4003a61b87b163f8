"""A TCP proxy that records what a DICOM sender says, to replay and mutate it."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType

from tests.support.peers import LOCALHOST


class RecordingProxy:
    """Forwards one connection at a time to ``LOCALHOST:target_port``; keeps the bytes the
    client sent on each connection (:attr:`streams`), so a real peer's association (DCMTK,
    pynetdicom) can be captured as it happens and replayed later."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server = socket.create_server((LOCALHOST, 0))
        self.port = int(self._server.getsockname()[1])
        self.streams: list[bytes] = []
        self._thread = threading.Thread(target=self._run, name="recording-proxy", daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.close()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                client, _address = self._server.accept()
            except OSError:
                return  # closed
            with client, socket.create_connection((LOCALHOST, self._target_port)) as upstream:
                self.streams.append(_pump(client, upstream))


def _pump(client: socket.socket, upstream: socket.socket) -> bytes:
    """Forward both ways until either side closes; return what the client sent."""
    sent = bytearray()
    selector = selectors.DefaultSelector()
    selector.register(client, selectors.EVENT_READ, upstream)
    selector.register(upstream, selectors.EVENT_READ, client)
    try:
        while True:
            for key, _events in selector.select(timeout=30):
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return bytes(sent)
                if source is client:
                    sent += data
                with contextlib.suppress(OSError):
                    key.data.sendall(data)
    finally:
        selector.close()


class StallingProxy:
    """Forwards connections to ``LOCALHOST:target_port``, each in a thread, and holds the
    first one on which the target has sent more than ``stall_after`` bytes: from then on
    nothing more goes either way on it (:attr:`stalled` is set) until :meth:`release`.
    A retrieval through it is caught mid-transfer, for as long as a test needs."""

    def __init__(self, target_port: int, *, stall_after: int) -> None:
        self._target_port = target_port
        self._stall_after = stall_after
        self._server = socket.create_server((LOCALHOST, 0))
        self.port = int(self._server.getsockname()[1])
        self.stalled = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="stalling-proxy", daemon=True)

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
        self._server.close()
        self._thread.join(timeout=10)

    def release(self) -> None:
        """Let the held connection go on (it ends if its client has gone)."""
        self._released.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        with client, socket.create_connection((LOCALHOST, self._target_port)) as upstream:
            selector = selectors.DefaultSelector()
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            received = 0
            try:
                while True:
                    for key, _events in selector.select(timeout=30):
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        try:
                            data = source.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            return
                        if source is upstream:
                            received += len(data)
                            if received > self._stall_after and self._hold():
                                self._released.wait()
                        with contextlib.suppress(OSError):
                            key.data.sendall(data)
            finally:
                selector.close()

    def _hold(self) -> bool:
        """True for the one connection to hold (the first past the threshold)."""
        with self._lock:
            if self.stalled.is_set():
                return False
            self.stalled.set()
            return True

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

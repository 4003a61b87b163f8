"""Compressed slices decoded, and long series' headers parsed, in processes of their own.

pydicom's decoders for JPEG 2000 (OpenJPEG, pylibjpeg-openjpeg) and JPEG-LS (CharLS,
pyjpegls) hold the GIL while they decode: 16 LIDC CT slices took 0.46 s in one thread
and 0.47 s in two. A series in those syntaxes was therefore decoded on one core while
SimpleITK's GDCM used every core (the LIDC CT in JPEG 2000 Lossless: 8.8 s against 5.2 s
on 2 CPUs). Here compressed frames are decoded by a few processes kept for the life of
the process that asked, while it reads the series' headers; it converts their values into
the volume (:func:`inference.volume.load_series`). The same processes parse the headers
of a long series (``inference.volume.parse_headers``), which pydicom does in Python.

The processes are ``python -m inference.decode_pool`` started with :mod:`subprocess`
(fork and exec: nothing of a CUDA context comes along), each answering requests one at a
time over its standard input and output: a module-level function's name and its argument
in, its result or exception out, pickled (between processes of the same program). Not
:mod:`multiprocessing`: it would run the asking program's main script again in every
child, and in a Celery prefork child it refuses (a *daemonic* process may not start any)
and cannot pickle the process's authentication key (billiard's).

A decoder that crashes its process (a hostile file, memory exhausted) takes down that
child only: what was asked of it fails with :class:`BrokenProcessPool`, the job with
:class:`DecoderCrashedError` (transient: retried), and the next series starts new
processes. A child ends when its standard input closes, that is when the process that
started it ends, however it ends.

``worker.decode_processes`` sets the number of processes (default: the CPUs this process
may use, at most :data:`MAX_DEFAULT_PROCESSES`); 0 or 1 does everything in the calling
process.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import numpy.typing as npt

from core.errors import TransientError

logger = logging.getLogger(__name__)

#: The default number of processes: the CPUs this process may use, at most this many.
MAX_DEFAULT_PROCESSES = 8
#: Frames a process is given at a time: few hand-overs, each of which needs the asking
#: process's GIL while it parses headers (CharLS decodes a CT slice in 6 ms).
BATCH = 8
#: Compressed frames below this many are decoded in the calling process (a process's
#: start costs about what a few frames take to decode).
MIN_FRAMES = 4
#: Longest wait for a process to end once asked to.
STOP_SECONDS = 5.0
_LENGTH = struct.Struct("<Q")

A = TypeVar("A")
R = TypeVar("R")


class DecoderCrashedError(TransientError):
    """A decoding process ended while decoding (killed for memory, or the decoder crashed
    on this data): retried as transient, the slice named in the message."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a child gives back for one frame: its stored values, or the error pydicom
    raised decoding it (one of :data:`DECODING_ERRORS`), and the texts of the warnings
    pydicom gave (logged by the caller per SOP instance)."""

    values: npt.NDArray[np.generic] | None
    warnings: tuple[str, ...]
    error: Exception | None = None


#: What pydicom raises for pixel data it cannot decode (no decoder, no plugin, corrupt
#: or truncated data): given back with the frame, any other exception is raised.
DECODING_ERRORS = (NotImplementedError, RuntimeError, ValueError, EOFError)

#: A frame to decode: (file, frame index or None for the only one, decoding plugin).
Frame = tuple[Path, int | None, str]


class DecodePool:
    """``count`` child processes and, in this process, a thread for each that hands it
    the next request and waits for its answer."""

    def __init__(self, count: int) -> None:
        self._requests: queue.Queue[tuple[Future[Any], str, Any] | None] = queue.Queue()
        # Held while a request is queued and while a broken pool fails what is queued, so
        # that no request waits for a child that no longer exists.
        self._queueing = threading.Lock()
        self._children: list[subprocess.Popen[bytes]] = []
        self._threads: list[threading.Thread] = []
        self.broken_by: str | None = None
        # The children import what this process can (a checkout run without installing).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        for number in range(count):
            child = subprocess.Popen(
                [sys.executable, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
            self._children.append(child)
            thread = threading.Thread(
                target=self._serve, args=(child,), name=f"decoding-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    @property
    def process_ids(self) -> list[int]:
        return [child.pid for child in self._children]

    @property
    def broken(self) -> bool:
        """Whether a child has ended (found by its thread, or now)."""
        if self.broken_by is None:
            for child in self._children:
                if child.poll() is not None:
                    self.broken_by = f"a decoding process ended (exit status {child.returncode})"
        return self.broken_by is not None

    def submit(self, function: Callable[[A], R], argument: A) -> Future[R]:
        """``function(argument)`` in a child (a module-level function, picklable values).

        Raises:
            BrokenProcessPool: a child has ended.
        """
        future: Future[R] = Future()
        with self._queueing:
            if self.broken:
                raise BrokenProcessPool(self.broken_by)
            self._requests.put((future, f"{function.__module__}:{function.__qualname__}", argument))
        return future

    def shutdown(self) -> None:
        """End the children (asked, then killed after :data:`STOP_SECONDS`); requests not
        taken yet fail."""
        for _thread in self._threads:
            self._requests.put(None)
        for child in self._children:
            if child.stdin is not None:
                with contextlib.suppress(OSError):  # a child that ended: nothing to close
                    child.stdin.close()
        for child in self._children:
            try:
                child.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=STOP_SECONDS)
        for child in self._children:
            if child.stdout is not None:
                child.stdout.close()
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                break
            if item is not None and item[0].set_running_or_notify_cancel():
                item[0].set_exception(BrokenProcessPool("the decoding processes were stopped"))

    def _serve(self, child: subprocess.Popen[bytes]) -> None:
        assert child.stdin is not None and child.stdout is not None
        while (item := self._requests.get()) is not None:
            future, function, argument = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                _send(child.stdin, (function, argument))
                ok, answer = _receive(child.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                status = child.poll()
                with self._queueing:
                    self.broken_by = f"a decoding process ended (exit status {status}): {exc}"
                    future.set_exception(BrokenProcessPool(self.broken_by))
                    self._fail_queued()
                return
            if ok:
                future.set_result(answer)
            else:
                future.set_exception(answer)

    def _fail_queued(self) -> None:
        """Fail the requests not taken yet (the other children may all be gone too);
        the stop signals of :meth:`shutdown` stay queued for the other threads."""
        stops = 0
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stops += 1
            elif item[0].set_running_or_notify_cancel():
                item[0].set_exception(BrokenProcessPool(self.broken_by))
        for _stop in range(stops):
            self._requests.put(None)


def _send(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the decoding process closed its output")
    (length,) = _LENGTH.unpack(head)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("the decoding process's answer was cut off")
    return pickle.loads(data)  # noqa: S301 -- from our own child process


_lock = threading.Lock()
_pool: DecodePool | None = None
_configured: int | None = None


def configure(processes: int | None) -> None:
    """Set how many processes decode (``None``: the default; 0 or 1: none). A pool
    already started for another number is stopped."""
    global _configured  # noqa: PLW0603 -- one pool per process, set from its settings
    with _lock:
        if processes != _configured:
            _stop_locked()
        _configured = processes


def processes() -> int:
    """The number of decoding processes this process uses (0: decodes itself)."""
    wanted = _configured
    if wanted is None:
        wanted = min(len(os.sched_getaffinity(0)), MAX_DEFAULT_PROCESSES)
    return wanted if wanted > 1 else 0


def pool() -> DecodePool | None:
    """The pool of this process, started on first use (and anew after a child ended);
    ``None`` where it has none."""
    global _pool  # noqa: PLW0603
    count = processes()
    if count == 0:
        return None
    with _lock:
        if _pool is not None and _pool.broken:
            logger.warning("decoding processes started anew: %s", _pool.broken_by)
            _pool.shutdown()
            _pool = None
        if _pool is None:
            started = time.perf_counter()
            _pool = DecodePool(count)
            logger.debug(
                "%d decoding processes started in %.3f s", count, time.perf_counter() - started
            )
        return _pool


def broken() -> bool:
    """Whether this process's pool has lost a process (it is replaced when next used)."""
    with _lock:
        return _pool is not None and _pool.broken


def process_ids() -> list[int]:
    """The pids of this process's decoding processes now (none before the first series)."""
    with _lock:
        return _pool.process_ids if _pool is not None else []


def discard(broken: DecodePool) -> None:
    """Let go of a pool that broke (a child died): the next series starts a new one."""
    global _pool  # noqa: PLW0603
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown()


def stop() -> None:
    """Stop this process's pool (its children end)."""
    with _lock:
        _stop_locked()


def _stop_locked() -> None:
    global _pool  # noqa: PLW0603
    if _pool is not None:
        _pool.shutdown()
        _pool = None


atexit.register(stop)


def submit(executor: DecodePool, frames: Sequence[Frame]) -> Future[list[Decoded]]:
    """Ask for ``frames`` to be decoded by one process (see :data:`BATCH`).

    Raises:
        BrokenProcessPool: a process of ``executor`` has ended (it is let go of: the next
            :func:`pool` starts a new one).
    """
    return call(executor, decode_frames, [(str(p), i, plugin) for p, i, plugin in frames])


def call(executor: DecodePool, function: Callable[[A], R], argument: A) -> Future[R]:
    """Ask one of ``executor``'s processes for ``function(argument)`` (a module-level
    function and a picklable argument).

    Raises:
        BrokenProcessPool: as :func:`submit`.
    """
    try:
        return executor.submit(function, argument)
    except BrokenProcessPool:
        discard(executor)
        raise


# -- in the child --------------------------------------------------------------------------


def decode_frames(frames: list[tuple[str, int | None, str]]) -> list[Decoded]:
    """Each frame's stored values, as :func:`pydicom.pixels.pixel_array` gives them."""
    from pydicom.pixels.utils import pixel_array  # noqa: PLC0415 -- the child's import

    decoded = []
    for path, index, plugin in frames:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values = pixel_array(path, index=index, decoding_plugin=plugin)
                error = None
            except DECODING_ERRORS as exc:
                values, error = None, exc
        decoded.append(Decoded(values, tuple(str(item.message) for item in caught), error))
    return decoded


def _serve_requests() -> None:
    """A child's life: answer each request on standard input until it closes."""
    # Nothing is logged from here: without a handler, Python's last resort would print
    # records (pydicom's quote values) to standard error.
    logging.getLogger().addHandler(logging.NullHandler())
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    # Only answers go to standard output: a library's print goes to standard error.
    sys.stdout = sys.stderr
    while True:
        try:
            function_name, argument = _receive(requests)
        except EOFError:
            return  # the process that started this one has ended, or stops it
        module, _, qualname = function_name.partition(":")
        try:
            function = getattr(importlib.import_module(module), qualname)
            answer: tuple[bool, object] = (True, function(argument))
        except Exception as exc:  # noqa: BLE001 -- handed back, raised by the future
            answer = (False, exc)
        try:
            _send(answers, answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _send(answers, (False, RuntimeError(f"{function_name}: answer not picklable: {exc}")))


if __name__ == "__main__":
    _serve_requests()

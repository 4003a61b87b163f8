"""Compressed slices decoded, and long series' headers parsed, in processes of their own.

pydicom's decoders for JPEG 2000 (OpenJPEG, pylibjpeg-openjpeg) and JPEG-LS (CharLS,
pyjpegls) hold the GIL while they decode: 16 LIDC CT slices took 0.46 s in one thread
and 0.47 s in two. A series in those syntaxes was therefore decoded on one core while
SimpleITK's GDCM used every core (the LIDC CT in JPEG 2000 Lossless: 8.8 s against 5.2 s
on 2 CPUs). Here compressed frames are decoded by a few processes kept for the life of
the process that asked, while it reads the series' headers; it converts their values into
the volume (:func:`inference.volume.load_series`). The same processes parse the headers
of a long series (``inference.volume.parse_headers``), which pydicom does in Python. The
processes are forked by multiprocessing's fork server (it imports this module only),
never from the asking process, which may hold a CUDA context. As with any use of
multiprocessing, each child imports the asking program's main module again: a script that
reads series needs the ``if __name__ == "__main__":`` guard (pacs-ai's commands have it),
or ``decode_processes`` 0.

A child decodes from the file (``pydicom.pixels.pixel_array`` on the path reads the header
and just that frame), so paths go in and stored values come back, :data:`BATCH` frames at
a time. A decoder that crashes its process (a hostile file, memory exhausted) takes down
that child only; the job gets :class:`DecoderCrashedError` (transient: retried) and the
pool is started anew. Children end with the process that asked for them: a thread of each
waits on a pidfd of that process (their parent is the fork server, which lives as long as
they do; ``PR_SET_PDEATHSIG`` fires when the *thread* that started a process ends, and the
pool is started by whichever thread reads a series first).

``worker.decode_processes`` sets the number of processes (default: the CPUs this process
may use, at most :data:`MAX_DEFAULT_PROCESSES`); 0 or 1 does everything in the calling
process.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

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


_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
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


def pool() -> ProcessPoolExecutor | None:
    """The pool of this process, started on first use; ``None`` where it has none."""
    global _pool  # noqa: PLW0603
    count = processes()
    if count == 0:
        return None
    with _lock:
        if _pool is not None and getattr(_pool, "_broken", False):
            # A process died while idle (killed for memory, say): start anew. The
            # executor says so only in this attribute (it raises at the next submit).
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None
        if _pool is None:
            started = time.perf_counter()
            context = multiprocessing.get_context("forkserver")
            # Takes effect where the fork server is not running yet (the node's receiver
            # processes name their own module); never the main script (see the module).
            context.set_forkserver_preload(["inference.decode_pool"])
            _pool = ProcessPoolExecutor(
                max_workers=count,
                mp_context=context,
                initializer=_child_init,
                initargs=(os.getpid(),),
            )
            logger.debug(
                "decoding pool of %d processes asked for in %.3f s",
                count,
                time.perf_counter() - started,
            )
        return _pool


def broken() -> bool:
    """Whether this process's pool has lost a process (it is replaced when next used)."""
    with _lock:
        return bool(getattr(_pool, "_broken", False))


def process_ids() -> list[int]:
    """The pids of this process's decoding processes now (none before the first series)."""
    with _lock:
        started = _pool
    # ProcessPoolExecutor keeps its processes by pid; it has no public accessor.
    return sorted(getattr(started, "_processes", None) or {}) if started is not None else []


def discard(broken: ProcessPoolExecutor) -> None:
    """Let go of a pool that broke (a child died): the next series starts a new one."""
    global _pool  # noqa: PLW0603
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def stop() -> None:
    """Stop this process's pool (its children end)."""
    with _lock:
        _stop_locked()


def _stop_locked() -> None:
    global _pool  # noqa: PLW0603
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
        _pool = None


atexit.register(stop)


def submit(executor: ProcessPoolExecutor, frames: Sequence[Frame]) -> Future[list[Decoded]]:
    """Ask for ``frames`` to be decoded by one process (see :data:`BATCH`).

    Raises:
        BrokenProcessPool: a process of ``executor`` has died (it is let go of: the next
            :func:`pool` starts a new one).
    """
    try:
        return executor.submit(decode_frames, [(str(p), i, plugin) for p, i, plugin in frames])
    except BrokenProcessPool:
        discard(executor)
        raise


def is_broken(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a future of the pool, says a child died."""
    return isinstance(exc, BrokenProcessPool)


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


def _child_init(asker: int) -> None:
    # A child outlives nothing: a Ctrl-C meant for the worker (which stops its pool
    # itself) is not for it, and it ends when the process that asked for it has ended.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        watched = os.pidfd_open(asker)
    except ProcessLookupError:
        os._exit(0)  # gone already
    except (AttributeError, OSError):  # no pidfd (not Linux 5.3+): poll instead
        threading.Thread(target=_poll_asker, args=(asker,), daemon=True).start()
        return
    threading.Thread(target=_wait_for_asker, args=(watched,), daemon=True).start()


def _wait_for_asker(pidfd: int) -> None:
    # A pidfd becomes readable when its process ends (before it is reaped).
    select.select([pidfd], [], [])
    os._exit(0)


def _poll_asker(asker: int) -> None:
    while True:
        try:
            os.kill(asker, 0)
        except (ProcessLookupError, PermissionError):
            os._exit(0)  # gone (or its pid is another user's process now)
        time.sleep(1.0)

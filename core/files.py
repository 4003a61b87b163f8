"""Files that appear complete or not at all, and stay after a crash or a power cut.

:func:`atomic_write` (and :func:`atomic_copy`) write to a temporary file in the target's
own folder, fsync it, rename it over the target and fsync the folder. The rename is what
makes a reader see the old file or the new one, never half of one; the folder's fsync is
what makes the rename itself durable: without it a power cut soon after can leave the
old file (or none) although the write had returned.

The spool's hot path (:mod:`dicom_node.spool`) uses :func:`fsync_dir` but writes its own
way: it streams data as it arrives and saves one journal commit per instance.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` complete or not at all, durably (see the module docstring).

    Raises:
        OSError: the folder cannot be written; nothing is left behind and an earlier
            file at ``path`` is unchanged.
    """
    _atomically(path, lambda stream: stream.write(data))


def atomic_copy(source: Path, path: Path) -> None:
    """Copy the file ``source`` to ``path`` complete or not at all, durably.

    The kernel copies the bytes (``copy_file_range``/``sendfile``): a large file is never
    read into memory.

    Raises:
        OSError: ``source`` cannot be read or the folder cannot be written; nothing is
            left behind and an earlier file at ``path`` is unchanged.
    """

    def copy(stream: BinaryIO) -> None:
        with source.open("rb") as original:
            _kernel_copy(original, stream)

    _atomically(path, copy)


def fsync_dir(folder: str | Path) -> None:
    """Make the names in ``folder`` (new, renamed or removed files) durable.

    Raises:
        OSError: the folder cannot be opened or synced.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _kernel_copy(source: BinaryIO, target: BinaryIO) -> None:
    size = os.fstat(source.fileno()).st_size
    offset = 0
    try:
        while offset < size:
            sent = os.sendfile(target.fileno(), source.fileno(), offset, size - offset)
            if not sent:  # the file shrank meanwhile
                break
            offset += sent
    except OSError:
        if offset:
            raise
        # A filesystem without sendfile between files: copy through user space.
        shutil.copyfileobj(source, target)


def _atomically(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    # Hidden and unique, in the same folder: the rename never crosses a filesystem, and
    # two writers of the same path never share a temporary file.
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            fill(stream)
            stream.flush()
            os.fsync(stream.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)

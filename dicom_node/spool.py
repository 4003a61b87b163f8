"""The spool: every received instance, durably on disk, as it was received.

Layout: ``spool/<study UID>/<series UID>/<SOP instance UID>.dcm``. Bytes are stored as
received: never decoded, never transcoded. The SCP answers Success only once an instance
survives a crash or a power cut:

1. the file is written to a temporary file in ``spool/.incoming`` as its fragments
   arrive (:meth:`Spool.begin`), the kernel being asked to start writing each part to
   disk at once (``sync_file_range``, Linux), so that the network and the disk overlap;
2. its size is recorded on it as the extended attribute ``user.pacs_ai.complete`` and it
   is fsynced: data, size and mark are durable together, in one journal commit;
3. it is renamed into place. The rename becomes durable with the next commit; should
   the power fail before, start-up finds the marked, complete file in ``.incoming`` and
   finishes the rename (:meth:`Spool.recover_leftovers`). Unmarked or short temporary
   files are writes that never finished: no Success was sent for them, the sender still
   holds the data, and they are removed.

One journal commit per instance instead of two (fsync the file, rename, fsync the
folder) halves what durability costs. This relies on ``fsync`` of a new file making
its name durable too, which ext4, XFS and btrfs do. On a filesystem without user
extended attributes the spool falls back to the classic sequence: fsync, rename, fsync
the folder.

Identity: ``spool/.sop/<last two characters>/<SOP Instance UID>`` is a symbolic link to
``<study UID>/<series UID>``, made when an instance is first stored
(:meth:`Spool.claim`). A sender reusing a SOP Instance UID in another series (a modality
whose UID generator repeats, a badly merged archive) is thereby told apart before it
gets Success, so that one series never takes another's image for its own. A link whose
instance is no longer in the spool (removed by retention) no longer holds the UID.

Temporary files are named ``<pid>-<n>-<random>.part``, so that when a receiving process
dies its unfinished writes can be told apart from those of its siblings.
"""

# The hot path works on str paths with os functions: pathlib cost ~8 % of receiving CPU.
# ruff: noqa: PTH103, PTH105, PTH108, PTH110, PTH112, PTH115, PTH120, PTH211

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.files import fsync_dir
from core.jobs import InstanceRecord
from dicom_node.encoding import read_file_meta
from dicom_node.header import InstanceIdentity, read_identity

logger = logging.getLogger(__name__)

#: Start writing back to disk every this many bytes written (when fsync is on).
WRITEBACK_CHUNK = 256 * 1024
#: Check the free-space reserve every this many bytes of one instance written.
RESERVE_CHECK_BYTES = 1024 * 1024
#: Marks a temporary file as complete; its value is the file's size in bytes.
COMPLETE_XATTR = "user.pacs_ai.complete"


class SpoolFullError(OSError):
    """The spool's disk is full or below the configured free-space reserve."""


@dataclass(frozen=True, slots=True)
class SpooledInstance:
    path: Path
    size: int


#: The sender of an instance found in the spool but never reported: not known.
UNKNOWN_SENDER = "(recovered)"


@dataclass(frozen=True, slots=True)
class RecoveredInstance:
    """An instance stored but never reported, so its sender is not known: a complete
    temporary file moved into place at recovery, or a spooled file the ledger lacks."""

    path: Path
    size: int
    identity: InstanceIdentity

    def record(self, *, received_at: float, called_ae: str = UNKNOWN_SENDER) -> InstanceRecord:
        """Its ledger record, with the transfer syntax read from its file meta.

        Raises:
            OSError, ValueError: the file meta cannot be read.
        """
        identity = self.identity
        return InstanceRecord(
            sop_instance_uid=identity.sop_instance_uid,
            sop_class_uid=identity.sop_class_uid,
            series_instance_uid=identity.series_instance_uid,
            study_instance_uid=identity.study_instance_uid,
            transfer_syntax_uid=read_file_meta(self.path).transfer_syntax_uid,
            path=str(self.path),
            size=self.size,
            received_at=received_at,
            calling_ae=UNKNOWN_SENDER,
            called_ae=called_ae,
            peer=UNKNOWN_SENDER,
            modality=identity.modality,
        )


class Spool:
    """Durable instance storage under ``root``.

    ``recover_leftovers`` (at node start-up, where no other process writes the spool
    yet) finishes or removes what a crash left in ``.incoming``.
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        min_free_bytes: int = 0,
        recover_leftovers: bool = True,
    ) -> None:
        self.root = root
        self.incoming = root / ".incoming"
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._root = str(root)
        self._incoming = str(self.incoming)
        self._known_dirs: set[str] = set()
        self._names = _TemporaryNames()
        #: Whether the filesystem takes our completion mark (see the module docstring).
        self.marks_complete = True
        if recover_leftovers:
            self.recover_leftovers()

    def path_for(self, identity: InstanceIdentity) -> Path:
        return Path(self._path_for(identity))

    def _path_for(self, identity: InstanceIdentity) -> str:
        return (
            f"{self._root}/{identity.study_instance_uid}/{identity.series_instance_uid}/"
            f"{identity.sop_instance_uid}.dcm"
        )

    def claim(self, identity: InstanceIdentity) -> str | None:
        """Tie ``identity``'s SOP Instance UID to its study and series.

        Returns ``None`` when the UID is new or already tied to the same study and series
        (a re-send), else the ``<study UID>/<series UID>`` that holds it. The link is not
        fsynced: after a power cut the ledger's own check is the backstop.

        Raises:
            OSError: the index cannot be written.
        """
        place = f"{identity.study_instance_uid}/{identity.series_instance_uid}"
        folder = f"{self._root}/.sop/{identity.sop_instance_uid[-2:]}"
        link = f"{folder}/{identity.sop_instance_uid}"
        self._ensure_dir(folder)
        try:
            os.symlink(place, link)
        except FileExistsError:
            holder = os.readlink(link)
        else:
            return None
        if holder == place:
            return None
        if os.path.exists(f"{self._root}/{holder}/{identity.sop_instance_uid}.dcm"):
            return holder
        # The earlier instance is gone (retention): the UID is free again.
        temporary = f"{link}.{self._names.next()}"
        os.symlink(place, temporary)
        os.replace(temporary, link)
        return None

    def free_bytes(self) -> int:
        return shutil.disk_usage(self._root).free

    def has_room(self, size: int) -> bool:
        return self.free_bytes() - size >= self.min_free_bytes

    def begin(self, prefix: bytes) -> SpoolWrite:
        """Start writing one instance whose file begins with ``prefix`` (the file meta).

        Never raises: a spool below its reserve or a failing disk gives a write that keeps
        nothing and reports the error at :meth:`SpoolWrite.commit`, so that the caller can
        still read the rest of the message from the network.
        """
        return SpoolWrite(self, prefix)

    def store(
        self, identity: InstanceIdentity, chunks: Sequence[bytes | memoryview]
    ) -> SpooledInstance:
        """Write ``chunks`` (a DICOM file image) durably as ``identity``'s instance.

        A re-sent instance replaces the earlier file atomically.

        Raises:
            SpoolFullError: not enough free space; nothing is left behind.
            OSError: any other storage failure; nothing is left behind.
        """
        size = sum(len(chunk) for chunk in chunks)
        if not self.has_room(size):
            raise _below_reserve(self)
        write = self.begin(b"")
        for chunk in chunks:
            write.write(chunk)
        return write.commit(identity)

    def temporary_path(self) -> str:
        return f"{self._incoming}/{self._names.next()}.part"

    def recover_leftovers(self, pid: int | None = None) -> list[RecoveredInstance]:
        """Finish what a crash (or the death of process ``pid``) left in ``.incoming``.

        Complete, marked files are moved into place (oldest first, so that the newest
        copy of a re-sent instance wins); the others are removed.
        """
        pattern = f"{pid}-*.part" if pid is not None else "*.part"
        leftovers = sorted(self.incoming.glob(pattern), key=_mtime)
        recovered = []
        for leftover in leftovers:
            instance = self._recover(leftover)
            if instance is not None:
                recovered.append(instance)
        return recovered

    def _recover(self, leftover: Path) -> RecoveredInstance | None:
        try:
            size = leftover.stat().st_size
            mark = _read_mark(leftover)
            if mark is None or mark != size:
                logger.warning("removing unfinished spool write %s", leftover.name)
                leftover.unlink(missing_ok=True)
                return None
            identity = read_identity(leftover.read_bytes())
            final = self._path_for(identity)
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(leftover, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._place(str(leftover), final, sync_folder=True)
        except Exception:
            # Complete but unplaceable (unreadable UIDs should not happen: they were
            # checked before marking). Keep it where an operator will find it.
            logger.exception("cannot recover spool write %s; left in place", leftover.name)
            return None
        logger.warning("recovered acknowledged instance %s into the spool", leftover.name)
        return RecoveredInstance(path=Path(final), size=size, identity=identity)

    def _place(self, temporary: str, final: str, *, sync_folder: bool) -> None:
        """Rename a complete (and already synced) temporary file into place."""
        folder = os.path.dirname(final)
        self._ensure_dir(folder)
        try:
            os.replace(temporary, final)
        except FileNotFoundError:
            if not os.path.exists(temporary):
                raise
            # The folder was removed since we made it (retention, an operator): again.
            self._known_dirs.discard(folder)
            self._ensure_dir(folder)
            os.replace(temporary, final)
        if sync_folder:
            fsync_dir(folder)

    def _ensure_dir(self, folder: str) -> None:
        if folder in self._known_dirs:
            return
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            if self.fsync:
                # New folders must survive a power cut too, or so would not their files.
                parent = os.path.dirname(folder)
                fsync_dir(parent)
                fsync_dir(os.path.dirname(parent))
        self._known_dirs.add(folder)

    def _mark_complete(self, fd: int, size: int) -> bool:
        """Record ``size`` on the file as complete; False where the filesystem cannot."""
        if not self.marks_complete:
            return False
        try:
            os.setxattr(fd, COMPLETE_XATTR, str(size).encode("ascii"))
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
                raise
            logger.warning(
                "the spool's filesystem takes no extended attributes (%s): each instance "
                "costs two journal commits instead of one",
                exc.strerror,
            )
            self.marks_complete = False
            return False
        return True


class SpoolWrite:
    """One instance being written to the spool as its fragments arrive.

    The first failure (disk full, below the reserve, I/O error) is kept: later writes are
    dropped, the temporary file is removed at once (giving the space back), and
    :meth:`commit` raises it. :meth:`discard` removes everything; both are final.
    """

    __slots__ = ("_checked_to", "_fd", "_synced_to", "error", "path", "size", "spool")

    def __init__(self, spool: Spool, prefix: bytes) -> None:
        self.spool = spool
        self.size = 0
        self.error: OSError | None = None
        self._fd: int | None = None
        self._synced_to = 0
        self._checked_to = 0
        self.path = spool.temporary_path()
        if spool.min_free_bytes and not spool.has_room(0):
            self.error = _below_reserve(spool)
            return
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            self.error = _classify(exc)
            return
        if prefix:
            self.write(prefix)

    def write(self, data: bytes | memoryview) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            written = os.write(fd, data)
            if written < len(data):
                _write_all(fd, [memoryview(data)[written:]])
        except OSError as exc:
            self.error = _classify(exc)
            self._remove()
            return
        self.size += len(data)
        spool = self.spool
        if spool.min_free_bytes and self.size - self._checked_to >= RESERVE_CHECK_BYTES:
            # One large instance must not eat the reserve that the ledger, the results and
            # every other write count on: checked as it grows, not only when it started.
            self._checked_to = self.size
            if not spool.has_room(0):
                self.error = _below_reserve(spool)
                self._remove()
                return
        if spool.fsync and self.size - self._synced_to >= WRITEBACK_CHUNK:
            _start_writeback(fd, self._synced_to, self.size - self._synced_to)
            self._synced_to = self.size

    def written_file(self) -> Path | None:
        """The temporary file holding what was written so far (to quarantine it), or
        ``None`` after a failure, a commit or a discard."""
        return None if self._fd is None else Path(self.path)

    def commit(self, identity: InstanceIdentity) -> SpooledInstance:
        """Make the instance durable under ``identity``'s path (see the module docstring).

        Raises:
            SpoolFullError: the disk filled up or the reserve was reached; nothing is kept.
            OSError: any other storage failure; nothing is kept.
        """
        if self.error is not None:
            raise self.error
        fd = self._fd
        if fd is None:
            raise RuntimeError("this spool write was already committed or discarded")
        spool = self.spool
        final = spool._path_for(identity)
        try:
            if spool.min_free_bytes and not spool.has_room(0):
                raise _below_reserve(spool)
            marked = False
            if spool.fsync:
                marked = spool._mark_complete(fd, self.size)
                # fsync, not fdatasync, when marked: the mark is metadata.
                (os.fsync if marked else os.fdatasync)(fd)
            os.close(fd)
            self._fd = None
            spool._place(self.path, final, sync_folder=spool.fsync and not marked)
        except OSError as exc:
            error = self.error = _classify(exc)
            self._remove()
            if error is exc:
                raise
            raise error from exc
        return SpooledInstance(path=Path(final), size=self.size)

    def discard(self) -> None:
        """Remove the temporary file (an aborted association, or data kept elsewhere)."""
        self._remove()

    def _remove(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class _TemporaryNames:
    """Unique temporary file names: pid, a counter and a random tag, no system call each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._tag = ""
        self._count = 0

    def next(self) -> str:
        with self._lock:
            pid = os.getpid()
            if pid != self._pid:  # a new process (forked): new tag
                self._pid, self._tag, self._count = pid, secrets.token_hex(4), 0
            self._count += 1
            return f"{pid}-{self._count}-{self._tag}"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _read_mark(path: Path) -> int | None:
    try:
        return int(os.getxattr(path, COMPLETE_XATTR))
    except (OSError, ValueError):
        return None


def _below_reserve(spool: Spool) -> SpoolFullError:
    return SpoolFullError(
        errno.ENOSPC,
        f"spool below its free-space reserve ({spool.min_free_bytes} bytes free required)",
    )


def _classify(exc: OSError) -> OSError:
    """Disk full and quota errors as :class:`SpoolFullError`; others unchanged."""
    if isinstance(exc, SpoolFullError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFullError(exc.errno, f"spool disk full: {exc.strerror}")
    return exc


def _write_all(fd: int, chunks: Sequence[bytes | memoryview]) -> None:
    pending = [memoryview(chunk) for chunk in chunks if len(chunk)]
    while pending:
        written = os.writev(fd, pending)
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending.pop(0)
        if pending and written:
            pending[0] = pending[0][written:]


def _load_sync_file_range() -> Callable[[int, int, int], None]:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)``: start writeback, don't wait.

    Python has no binding; without libc's (not Linux) it is a no-op, and only the final
    fsync writes the data.
    """
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name, use_errno=True) if name else None
    function = getattr(library, "sync_file_range", None)
    if function is None:
        return lambda _fd, _offset, _count: None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    write = 2  # SYNC_FILE_RANGE_WRITE

    def start(fd: int, offset: int, count: int) -> None:
        # Advisory: a failure here only means the final fsync does all the work.
        function(fd, offset, count, write)

    return start


_start_writeback = _load_sync_file_range()

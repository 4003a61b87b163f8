"""Files written complete or not at all, and durably: the data is synced before the
rename, and the folder after it (or the rename itself may not survive a power cut)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from core.files import atomic_copy, atomic_write


class SyncLog:
    """What was synced and renamed, in order: ``("fsync file", inode)``,
    ``("fsync folder", inode)`` and ``("rename", target)``.

    The calls go through to the OS: only what they were called on is noted.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, object]] = []
        fsync, replace = os.fsync, os.replace

        def logged_fsync(fd: int) -> None:
            info = os.fstat(fd)
            kind = "fsync folder" if stat.S_ISDIR(info.st_mode) else "fsync file"
            self.events.append((kind, info.st_ino))
            fsync(fd)

        def logged_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
            replace(source, target)
            self.events.append(("rename", Path(target)))

        monkeypatch.setattr(os, "fsync", logged_fsync)
        monkeypatch.setattr(os, "replace", logged_replace)


@pytest.fixture
def sync_log(monkeypatch: pytest.MonkeyPatch) -> SyncLog:
    return SyncLog(monkeypatch)


def _write(path: Path) -> None:
    atomic_write(path, b"new contents")


def _copy(path: Path) -> None:
    source = path.parent / "source.bin"
    source.write_bytes(b"new contents")
    atomic_copy(source, path)


WRITERS: list[Callable[[Path], None]] = [_write, _copy]


@pytest.mark.parametrize("write", WRITERS, ids=["write", "copy"])
def test_the_file_is_synced_then_renamed_into_place_then_its_folder_is_synced(
    tmp_path: Path, sync_log: SyncLog, write: Callable[[Path], None]
) -> None:
    path = tmp_path / "result.bin"

    write(path)

    assert path.read_bytes() == b"new contents"
    assert [kind for kind, _ in sync_log.events] == ["fsync file", "rename", "fsync folder"]
    assert sync_log.events[1] == ("rename", path)
    assert sync_log.events[2] == ("fsync folder", tmp_path.stat().st_ino)
    assert sync_log.events[0] == ("fsync file", path.stat().st_ino)


@pytest.mark.parametrize("write", WRITERS, ids=["write", "copy"])
def test_a_file_is_replaced_whole_and_no_temporary_file_is_left(
    tmp_path: Path, write: Callable[[Path], None]
) -> None:
    path = tmp_path / "result.bin"
    path.write_bytes(b"old contents, longer than the new")

    write(path)

    assert path.read_bytes() == b"new contents"
    assert _temporary_files(tmp_path) == []


def test_a_write_the_disk_fails_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "result.bin"
    path.write_bytes(b"old contents")

    def failing_fsync(_fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(path, b"new contents")

    assert path.read_bytes() == b"old contents"
    assert _temporary_files(tmp_path) == []


def test_a_copy_whose_source_is_gone_leaves_the_old_file_and_nothing_else(
    tmp_path: Path,
) -> None:
    path = tmp_path / "result.bin"
    path.write_bytes(b"old contents")

    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing.bin", path)

    assert path.read_bytes() == b"old contents"
    assert _temporary_files(tmp_path) == []


def test_a_large_file_is_copied_exactly(tmp_path: Path) -> None:
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))

    atomic_copy(source, tmp_path / "copy.bin")

    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()


def _temporary_files(folder: Path) -> list[str]:
    # Temporary files are hidden (".<name>.<random>.part").
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]

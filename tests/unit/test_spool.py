"""The spool writes durably, atomically, and refuses work when the disk is short."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from dicom_node.header import InstanceIdentity, read_file_identity
from dicom_node.spool import (
    COMPLETE_XATTR,
    UNKNOWN_SENDER,
    RecoveredInstance,
    Spool,
    SpoolFullError,
)
from tests.conftest import DicomFactory

IDENTITY = InstanceIdentity(
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    sop_instance_uid="1.2.3.4.5",
    study_instance_uid="1.2.3.1",
    series_instance_uid="1.2.3.2",
    modality="CT",
)


def test_an_instance_is_filed_under_study_and_series_with_exactly_its_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")

    stored = spool.store(IDENTITY, [b"head", memoryview(b"-body")])

    assert stored.path == tmp_path / "spool" / "1.2.3.1" / "1.2.3.2" / "1.2.3.4.5.dcm"
    assert stored.path.read_bytes() == b"head-body"
    assert stored.size == 9
    assert list((tmp_path / "spool" / ".incoming").iterdir()) == []


def test_a_resent_instance_replaces_the_earlier_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.store(IDENTITY, [b"first"])

    stored = spool.store(IDENTITY, [b"second"])

    assert stored.path.read_bytes() == b"second"


def test_below_the_free_space_reserve_nothing_is_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=1 << 62)

    with pytest.raises(SpoolFullError, match="free-space reserve"):
        spool.store(IDENTITY, [b"data"])

    assert not (tmp_path / "spool" / "1.2.3.1").exists()
    assert list((tmp_path / "spool" / ".incoming").iterdir()) == []


def test_unfinished_writes_from_a_crash_are_discarded_at_start(tmp_path: Path) -> None:
    incoming = tmp_path / "spool" / ".incoming"
    incoming.mkdir(parents=True)
    (incoming / "abc.part").write_bytes(b"half an instance")

    Spool(tmp_path / "spool")

    assert list(incoming.iterdir()) == []


def test_a_streamed_instance_is_filed_with_its_bytes_and_marked_complete(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    write = spool.begin(b"meta")
    write.write(memoryview(b"-fragment-1"))
    write.write(b"-fragment-2")

    stored = write.commit(IDENTITY)

    assert stored.path.read_bytes() == b"meta-fragment-1-fragment-2"
    assert stored.size == 26
    assert int(os.getxattr(stored.path, COMPLETE_XATTR)) == 26
    assert list(spool.incoming.iterdir()) == []


def test_a_discarded_instance_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    write = spool.begin(b"meta")
    write.write(b"half")

    write.discard()

    assert list(spool.incoming.iterdir()) == []
    assert not spool.path_for(IDENTITY).exists()


def test_a_stream_below_the_reserve_keeps_nothing_and_says_so_at_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=1 << 62)
    write = spool.begin(b"meta")
    write.write(b"data")

    with pytest.raises(SpoolFullError, match="free-space reserve"):
        write.commit(IDENTITY)
    assert list(spool.incoming.iterdir()) == []


def test_a_complete_marked_write_left_by_a_crash_is_moved_into_place_at_start(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    # A crash after the fsync of a marked file but before its rename was durable.
    source = dicom_factory.image()
    incoming = tmp_path / "spool" / ".incoming"
    incoming.mkdir(parents=True)
    leftover = incoming / "123-1-abcd.part"
    leftover.write_bytes(source.read_bytes())
    os.setxattr(leftover, COMPLETE_XATTR, str(source.stat().st_size).encode())
    unfinished = incoming / "123-2-abcd.part"
    unfinished.write_bytes(source.read_bytes()[:-10])
    os.setxattr(unfinished, COMPLETE_XATTR, str(source.stat().st_size).encode())

    spool = Spool(tmp_path / "spool")

    ds = pydicom.dcmread(source)
    placed = (
        tmp_path / "spool" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    )
    assert placed.read_bytes() == source.read_bytes()
    assert list(spool.incoming.iterdir()) == []


def test_a_dead_process_leftovers_are_recovered_without_touching_its_siblings(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    (spool.incoming / "111-1-aaaa.part").write_bytes(b"unfinished")
    (spool.incoming / "222-1-bbbb.part").write_bytes(b"a sibling's write in progress")

    assert spool.recover_leftovers(111) == []

    assert [p.name for p in spool.incoming.iterdir()] == ["222-1-bbbb.part"]


def test_a_series_folder_removed_behind_the_spools_back_is_made_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.store(IDENTITY, [b"first"])
    shutil.rmtree(first.path.parent.parent)

    again = spool.store(IDENTITY, [b"again"])

    assert again.path.read_bytes() == b"again"


def test_a_recovered_instance_is_recorded_with_its_transfer_syntax_and_an_unknown_sender(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    source = dicom_factory.image(transfer_syntax=ImplicitVRLittleEndian)
    identity = read_file_identity(source)
    stored = Spool(tmp_path / "spool").store(identity, [source.read_bytes()])
    recovered = RecoveredInstance(stored.path, stored.size, identity)

    record = recovered.record(received_at=1234.5, called_ae="PACSAI")

    assert (record.sop_instance_uid, record.series_instance_uid, record.study_instance_uid) == (
        identity.sop_instance_uid,
        identity.series_instance_uid,
        identity.study_instance_uid,
    )
    assert record.transfer_syntax_uid == ImplicitVRLittleEndian
    assert (record.path, record.size, record.received_at) == (
        str(stored.path),
        source.stat().st_size,
        1234.5,
    )
    assert (record.calling_ae, record.called_ae, record.peer) == (
        UNKNOWN_SENDER,
        "PACSAI",
        UNKNOWN_SENDER,
    )

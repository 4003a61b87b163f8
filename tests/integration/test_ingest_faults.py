"""Bad input and bad luck at the door: malformed data, cut-off associations, a full disk.

Every case asserts that nothing was lost (what was acknowledged is in the spool and the
ledger), nothing half-written was kept, bad data is in quarantine with its reason, and
the node goes on serving.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_node.header import InstanceIdentity
from dicom_node.node import Node
from dicom_node.recorder import write_checkpoint
from dicom_node.spool import RESERVE_CHECK_BYTES, Spool, SpoolFullError
from dicom_node.status import Status
from tests.conftest import DicomFactory
from tests.support.missing import skip_locally_fail_in_ci
from tests.support.node import (
    CT_IMAGE,
    RawAssociation,
    associate,
    context_for,
    data_set_bytes,
    ingest_settings,
    spooled_files,
    start_node,
    unfinished_writes,
)
from tests.support.peers import LOCALHOST, echoscu, storescu, wait_for

pytestmark = pytest.mark.peers

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with start_node(tmp_path / "data") as running:
        yield running


def _uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def test_malformed_data_is_quarantined_with_a_failure_status_and_the_association_goes_on(
    node: Node, dicom_factory: DicomFactory
) -> None:
    good, truncated, wrong_uid, invalid_uid, last = (dicom_factory.image(size=64) for _ in range(5))
    mr = dicom_factory.image(modality="MR")
    invalid = data_set_bytes(invalid_uid)
    study = str(pydicom.dcmread(invalid_uid).StudyInstanceUID).encode()
    cases = [
        # (what is sent: SOP instance UID in the request, data set), expected status, reason
        (_uids(good)[1], data_set_bytes(good), Status.SUCCESS, ""),
        (
            _uids(truncated)[1],
            data_set_bytes(truncated)[:-1000],
            Status.CANNOT_UNDERSTAND,
            r"ends inside element \(7FE0,0010\): its length is 8192 but only 7192",
        ),
        ("1.2.3.4", os.urandom(300), Status.CANNOT_UNDERSTAND, ""),
        (_uids(mr)[1], data_set_bytes(mr), Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "differs"),
        (
            "1.2.3.999",
            data_set_bytes(wrong_uid),
            Status.CANNOT_UNDERSTAND,
            r"differs from the request's Affected SOP Instance UID 1\.2\.3\.999",
        ),
        (
            _uids(invalid_uid)[1],
            invalid.replace(study, b"1.2.X" + study[5:]),
            Status.CANNOT_UNDERSTAND,
            r"Study Instance UID \(0020,000D\) .* is not a valid UID",
        ),
        (_uids(last)[1], data_set_bytes(last), Status.SUCCESS, ""),
    ]
    assoc = associate(node.port, [(CT_IMAGE, EXPLICIT)], calling_ae="BADSCU")
    context = context_for(assoc, CT_IMAGE)
    statuses = []
    try:
        for number, (sop_instance, data, _status, _reason) in enumerate(cases, start=1):
            response = assoc.store(
                context,
                message_id=number,
                sop_class_uid=CT_IMAGE,
                sop_instance_uid=sop_instance,
                data_set=data,
                size=len(data),
            )
            statuses.append(response.status)
    finally:
        assoc.release()

    assert statuses == [status for _uid, _data, status, _reason in cases]
    node.recorder.flush()
    assert sorted(p.stem for p in spooled_files(node)) == sorted([_uids(good)[1], _uids(last)[1]])
    assert node.ledger.count_instances() == 2
    assert unfinished_writes(node) == []
    # Every refused instance is in quarantine: the bytes as received, and the reason.
    folders = sorted(node.settings.quarantine_dir.iterdir())
    assert len(folders) == 5
    records = [json.loads((folder / "error.json").read_text()) for folder in folders]
    assert all(record["stage"] == "receive" for record in records)
    assert all(record["calling_ae"] == "BADSCU" for record in records)
    messages = " | ".join(record["message"] for record in records)
    for pattern in [reason for *_rest, reason in cases if reason]:
        assert re.search(pattern, messages), (pattern, messages)
    kept = [(folder / "instance.dcm").read_bytes() for folder in folders]
    for _uid, data, status, _reason in cases:
        if status != Status.SUCCESS:
            assert any(copy.endswith(data) for copy in kept), "the bytes as received"
    assert len(node.ledger.quarantined()) == 5
    assert node.scp.stats["quarantined"] == 5
    assert echoscu(LOCALHOST, node.port, "PACSAI").returncode == 0


@pytest.mark.parametrize("ending", ["abort", "close"])
def test_an_association_cut_off_inside_an_instance_leaves_nothing_behind(
    node: Node, dicom_factory: DicomFactory, ending: str
) -> None:
    path = dicom_factory.image(size=512)
    data = data_set_bytes(path)
    raw = RawAssociation(node.port)

    raw.send_command_and_part_of(_uids(path)[1], data, sent=len(data) // 2)
    wait_for(lambda: bool(unfinished_writes(node)), 10, "the instance being written")
    if ending == "abort":
        raw.abort()
    else:
        raw.close()

    wait_for(lambda: not unfinished_writes(node), 10, "the unfinished write removed")
    node.recorder.flush()
    assert spooled_files(node) == []
    assert node.ledger.count_instances() == 0
    assert list(node.settings.quarantine_dir.iterdir()) == []
    assert storescu(path, LOCALHOST, node.port, "PACSAI").returncode == 0
    node.recorder.flush()
    assert node.ledger.count_instances() == 1


def test_below_the_free_space_reserve_everything_is_refused_and_echo_still_works(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    paths = dicom_factory.series(3)
    with start_node(tmp_path / "data", min_free_disk_mb=1 << 40) as node:
        result = storescu(paths, LOCALHOST, node.port, "PACSAI", "STORESCU", "-v")

        assert (result.stdout + result.stderr).count("Refused: OutOfResources") == 3
        assert echoscu(LOCALHOST, node.port, "PACSAI").returncode == 0
        node.recorder.flush()
        assert spooled_files(node) == []
        assert unfinished_writes(node) == []
        assert node.ledger.count_instances() == 0
        assert node.scp.stats["refused"] == 3


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem (tmpfs) for the spool; needs root to mount."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        message = "mounting a 2 MB tmpfs for the full-disk test needs root and mount(8)"
        skip_locally_fail_in_ci(message)
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)
    subprocess.run([mount, "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(spool)], check=True)
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_a_full_disk_is_answered_out_of_resources_with_nothing_half_written_and_recovers(
    tmp_path: Path, small_disk: Path, dicom_factory: DicomFactory
) -> None:
    paths = dicom_factory.series(24, size=256)  # 24 x 128 KiB: more than 2 MB
    with start_node(tmp_path / "data") as node:
        first = storescu(paths, LOCALHOST, node.port, "PACSAI", "STORESCU", "-v")

        refused = (first.stdout + first.stderr).count("Refused: OutOfResources")
        assert refused > 0, first.stdout + first.stderr
        assert echoscu(LOCALHOST, node.port, "PACSAI").returncode == 0
        node.recorder.flush()
        # What was acknowledged is complete and recorded; nothing else was kept.
        stored = spooled_files(node)
        assert 0 < len(stored) < len(paths)
        by_uid = {_uids(p)[1]: p for p in paths}
        for kept in stored:
            assert data_set_bytes(kept) == data_set_bytes(by_uid[kept.stem])
        assert unfinished_writes(node) == []
        assert node.ledger.count_instances() == len(stored)
        assert node.scp.stats["refused"] == refused == len(paths) - len(stored)

        subprocess.run(["mount", "-o", "remount,size=16M", str(small_disk)], check=True)
        second = storescu(paths, LOCALHOST, node.port, "PACSAI")

        assert second.returncode == 0, second.stdout + second.stderr
        node.recorder.flush()
        assert len(spooled_files(node)) == len(paths)
        assert node.ledger.count_instances() == len(paths)
        series = node.ledger.get_series(str(pydicom.dcmread(paths[0]).SeriesInstanceUID))
        assert (series.instance_count, series.resent_count) == (len(paths), len(stored))


def test_a_large_instance_stops_at_the_free_space_reserve_and_leaves_nothing_behind(
    small_disk: Path,
) -> None:
    subprocess.run(["mount", "-o", "remount,size=16M", str(small_disk)], check=True)
    reserve = 8 * 1024 * 1024
    spool = Spool(small_disk, min_free_bytes=reserve)
    write = spool.begin(b"")
    lowest = shutil.disk_usage(small_disk).free
    for _ in range(12):  # 12 MiB: more than the 8 MiB above the reserve
        write.write(bytes(1024 * 1024))
        lowest = min(lowest, shutil.disk_usage(small_disk).free)

    assert isinstance(write.error, SpoolFullError)
    assert lowest >= reserve - 2 * RESERVE_CHECK_BYTES
    assert list((small_disk / ".incoming").iterdir()) == []
    with pytest.raises(SpoolFullError, match="free-space reserve"):
        write.commit(
            InstanceIdentity(
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid="1.2.3.4",
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.1",
                modality="CT",
            )
        )


def _place_unreported(spool_dir: Path, path: Path) -> Path:
    """Put ``path`` in the spool as a receiving process does before answering Success."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    target: Path = spool_dir / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
    target = target / f"{ds.SOPInstanceUID}.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target


def test_an_instance_a_killed_receiving_process_acknowledged_but_never_reported_is_recorded(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    reported, unreported = dicom_factory.series(2)
    with start_node(tmp_path / "data", receiver_processes=1) as node:
        assert storescu([reported], LOCALHOST, node.port, "PACSAI").returncode == 0
        node.recorder.flush()
        # What a receiving process killed between its Success and its report leaves.
        _place_unreported(node.settings.spool_dir, unreported)
        (receiver,) = node.scp.pids
        os.kill(receiver, signal.SIGKILL)

        wait_for(lambda: node.ledger.count_instances() == 2, 30, "the unreported instance")
        series_uid = str(pydicom.dcmread(unreported).SeriesInstanceUID)
        instances = node.ledger.series_instances(series_uid)
        assert [i.receive_count for i in instances] == [1, 1], "each recorded once"


def test_start_up_reads_only_the_series_changed_since_the_last_checkpoint(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    settings = ingest_settings(tmp_path / "data")
    old_file = _place_unreported(settings.spool_dir, dicom_factory.series(1)[0])
    new_file = _place_unreported(settings.spool_dir, dicom_factory.series(1)[0])
    an_hour_ago = time.time() - 3600
    os.utime(old_file.parent, (an_hour_ago, an_hour_ago))
    write_checkpoint(settings.spool_dir, now=time.time() - 600)

    with Node(settings) as node:
        node.recorder.flush()
        recorded = {
            i.path
            for s in (old_file, new_file)
            for i in node.ledger.series_instances(s.parent.name)
        }

    # The old one was recorded before that checkpoint in real life; here it shows that it
    # was not read at all. Without a checkpoint the whole spool is walked.
    assert recorded == {str(new_file)}

"""Reading an instance's identity from its raw bytes, and refusing unusable UIDs."""

from __future__ import annotations

import tracemalloc
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from core.errors import InvalidInputError
from dicom_node.encoding import file_meta
from dicom_node.header import (
    HEADER_INFLATE_LIMIT,
    check_uid,
    read_identity,
    read_stored_header,
)
from tests.support.hostile import deflate_bomb


def encode(transfer_syntax: str = ExplicitVRLittleEndian, **overrides: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.StudyInstanceUID = "1.2.3.1"
    ds.SeriesInstanceUID = "1.2.3.2"
    ds.Rows = 2
    ds.BitsAllocated = 16
    ds.PixelData = b"\x00" * 8
    for keyword, value in overrides.items():
        # Bypass pydicom's value validation: these tests craft invalid values on purpose.
        tag = tag_for_keyword(keyword)
        assert tag is not None
        ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
)
def test_identity_is_read_in_every_transfer_syntax(syntax: str) -> None:
    identity = read_identity(encode(syntax))

    assert identity.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert identity.sop_instance_uid == "1.2.3.4.5"
    assert (identity.study_instance_uid, identity.series_instance_uid) == ("1.2.3.1", "1.2.3.2")
    assert identity.modality == "CT"


def test_a_uid_that_could_escape_the_spool_folder_is_refused() -> None:
    with pytest.raises(
        InvalidInputError, match=r"Series Instance UID \(0020,000E\) '\.\./\.\./etc'"
    ):
        read_identity(encode(SeriesInstanceUID="../../etc"))


def test_a_missing_study_uid_is_refused_with_the_attribute_named() -> None:
    data = encode()
    without_study = data.replace(b"1.2.3.1\x00", b"\x00" * 8)

    with pytest.raises(InvalidInputError, match=r"Study Instance UID \(0020,000D\) is missing"):
        read_identity(without_study)


def test_bytes_that_are_not_dicom_are_refused_not_crashed_on() -> None:
    with pytest.raises(InvalidInputError):
        read_identity(b"\x00" * 128 + b"DICM" + b"\xff" * 50)


@pytest.mark.parametrize("uid", ["1.2.3", "0.4", "2.25.329800735698586629295641978511506172918"])
def test_valid_uids_pass(uid: str) -> None:
    assert check_uid(uid, "x") == uid


@pytest.mark.parametrize(
    "uid", ["", "1..2", "01.2", "1.2.", "a.b", "1." + "2" * 70, "1.2.3\n", "1.2\r\n.3"]
)
def test_invalid_uids_are_named(uid: str) -> None:
    with pytest.raises(InvalidInputError, match="x "):
        check_uid(uid, "x")


def test_a_stored_deflated_header_is_read_without_inflating_its_pixel_data(
    tmp_path: Path,
) -> None:
    ds, deflated = deflate_bomb(256)
    meta = file_meta(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=DeflatedExplicitVRLittleEndian,
        source_ae="TEST",
    )
    path = tmp_path / "bomb.dcm"
    path.write_bytes(meta + deflated)

    tracemalloc.start()
    try:
        header = read_stored_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (header.SOPInstanceUID, header.Rows) == (ds.SOPInstanceUID, 1024)
    assert "PixelData" not in header
    assert header.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert peak < 4 * HEADER_INFLATE_LIMIT, f"{peak / 2**20:.0f} MiB for a 256 MiB bomb"

"""The node's DICOM encoding helpers agree with pydicom: transfer syntaxes, VR tables,
padded values and the PS3.10 file meta, written by us and read by pydicom, and the other
way round."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32
from pynetdicom.dsutils import split_dataset

from core.vr import LONG_VRS, SHORT_VRS
from dicom_node.encoding import (
    DEFLATED,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    JPIP_HTJ2K_REFERENCED_DEFLATE,
    JPIP_REFERENCED_DEFLATE,
    KNOWN_TRANSFER_SYNTAXES,
    UnknownTransferSyntaxError,
    decode_text,
    encoding_of,
    file_meta,
    is_part10,
    parse_file_meta,
    read_file_meta,
    text_value,
    uid_value,
)

#: pydicom's own files, one per encoding of the data set after the file meta.
PYDICOM_FILES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
]


def _written_by_pydicom(
    path: Path, transfer_syntax: str, *, private_information: bytes = b""
) -> Path:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    if private_information:
        ds.file_meta.PrivateInformationCreatorUID = UID("1.2.3.99")
        ds.file_meta.PrivateInformation = private_information
    ds.save_as(path, enforce_file_format=True)
    return path


# -- transfer syntaxes ---------------------------------------------------------------------


@pytest.mark.parametrize("syntax", sorted(str(uid) for uid in AllTransferSyntaxes))
def test_every_transfer_syntax_pydicom_knows_has_the_encoding_pydicom_gives_it(
    syntax: str,
) -> None:
    uid = UID(syntax)

    encoding = encoding_of(syntax)

    assert encoding.implicit_vr == uid.is_implicit_VR
    assert encoding.little_endian == uid.is_little_endian
    assert encoding.encapsulated == uid.is_encapsulated
    # pydicom calls only Deflated Explicit VR Little Endian deflated; the JPIP
    # Referenced Deflate syntaxes deflate their data set too (PS3.5 A.4.33).
    assert encoding.deflated == (
        uid.is_deflated or syntax in (JPIP_REFERENCED_DEFLATE, JPIP_HTJ2K_REFERENCED_DEFLATE)
    )


def test_the_deflated_syntaxes_are_deflated_explicit_vr_little_endian_and_both_jpip_deflates() -> (
    None
):
    assert {
        DeflatedExplicitVRLittleEndian,
        JPIP_REFERENCED_DEFLATE,
        JPIP_HTJ2K_REFERENCED_DEFLATE,
    } == DEFLATED
    assert DEFLATED <= KNOWN_TRANSFER_SYNTAXES


def test_a_transfer_syntax_nobody_knows_is_refused_by_name() -> None:
    with pytest.raises(UnknownTransferSyntaxError, match=r"unknown transfer syntax 1\.2\.3\.4"):
        encoding_of("1.2.3.4")


# -- value representations and values ------------------------------------------------------


def test_the_long_and_short_vr_tables_are_pydicoms() -> None:
    assert {vr.decode() for vr in LONG_VRS} == {str(vr) for vr in EXPLICIT_VR_LENGTH_32}
    assert {vr.decode() for vr in SHORT_VRS} == {str(vr) for vr in EXPLICIT_VR_LENGTH_16}


@pytest.mark.parametrize(("uid", "encoded"), [("1.2", b"1.2\x00"), ("1.23", b"1.23"), ("", b"")])
def test_a_uid_is_padded_with_one_nul_to_an_even_length(uid: str, encoded: bytes) -> None:
    assert uid_value(uid) == encoded
    assert decode_text(encoded) == uid


def test_a_uid_that_is_not_ascii_is_refused_unless_written_leniently() -> None:
    with pytest.raises(UnicodeEncodeError):
        uid_value("1.2.\u00e9")

    assert uid_value("1.2.\u00e9", errors="replace") == b"1.2.?\x00"


@pytest.mark.parametrize(("text", "encoded"), [("CT", b"CT"), ("STORE", b"STORE "), ("", b"")])
def test_text_is_padded_with_one_space_to_an_even_length(text: str, encoded: bytes) -> None:
    assert text_value(text) == encoded
    assert decode_text(encoded) == text


def test_decoded_text_loses_its_padding_and_never_raises_on_bytes_that_are_not_ascii() -> None:
    assert decode_text(b" CT \x00") == "CT"
    assert decode_text(memoryview(b"1.2\xff\x00")) == "1.2\ufffd"


# -- the file meta we write ----------------------------------------------------------------


def test_pydicom_reads_the_file_meta_we_write_for_a_received_data_set(tmp_path: Path) -> None:
    path = tmp_path / "received.dcm"
    path.write_bytes(
        file_meta(
            sop_class_uid=CTImageStorage,
            sop_instance_uid="1.2.3.4.5",
            transfer_syntax_uid=ExplicitVRLittleEndian,
            source_ae="MODALITY1",
        )
    )

    meta = read_file_meta_info(path)

    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.MediaStorageSOPClassUID == CTImageStorage
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert meta.SourceApplicationEntityTitle == "MODALITY1"
    assert read_file_meta(path).data_set_offset == path.stat().st_size


def test_the_file_meta_of_a_sender_without_ae_title_has_no_source_ae(tmp_path: Path) -> None:
    path = tmp_path / "received.dcm"
    path.write_bytes(
        file_meta(
            sop_class_uid=CTImageStorage,
            sop_instance_uid="1.2.3",
            transfer_syntax_uid=ImplicitVRLittleEndian,
            source_ae="",
        )
    )

    assert "SourceApplicationEntityTitle" not in read_file_meta_info(path)


def test_a_peers_uid_that_is_not_ascii_is_written_as_question_marks_not_refused() -> None:
    encoded = file_meta(
        sop_class_uid=CTImageStorage,
        sop_instance_uid="1.2.\u00e9",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        source_ae="",
    )

    uids, _offset = parse_file_meta(encoded)

    assert uids[0x0003] == "1.2.?"


# -- the file meta we read -----------------------------------------------------------------


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_the_file_meta_of_pydicoms_files_reads_as_pydicom_and_pynetdicom_read_it(
    name: str,
) -> None:
    path = Path(str(get_testdata_file(name)))
    expected = read_file_meta_info(path)

    meta = read_file_meta(path)

    assert meta.sop_class_uid == expected.MediaStorageSOPClassUID
    assert meta.sop_instance_uid == expected.MediaStorageSOPInstanceUID
    assert meta.transfer_syntax_uid == expected.TransferSyntaxUID
    assert meta.missing() == []
    assert meta.data_set_offset == split_dataset(path)[1]


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000Lossless],
)
def test_a_file_meta_longer_than_the_first_read_is_read_whole(tmp_path: Path, syntax: str) -> None:
    path = _written_by_pydicom(
        tmp_path / "long-meta.dcm", syntax, private_information=b"\x01" * 10_000
    )

    meta = read_file_meta(path)

    assert (meta.sop_instance_uid, meta.transfer_syntax_uid) == ("1.2.3.4.5", syntax)
    assert meta.data_set_offset == split_dataset(path)[1]
    assert meta.data_set_offset > 10_000


def test_a_file_meta_without_its_group_length_ends_at_the_first_other_group() -> None:
    encoded = BytesIO()
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(encoded, enforce_file_format=True)
    data = encoded.getvalue()
    without_length = data[:132] + data[132 + 12 :]  # (0002,0000) UL is 12 bytes

    uids, offset = parse_file_meta(without_length)

    assert uids[0x0010] == ExplicitVRLittleEndian
    assert without_length[offset : offset + 4] == b"\x08\x00\x18\x00"  # (0008,0018)


def test_a_file_meta_lacking_identifying_uids_names_them(tmp_path: Path) -> None:
    path = tmp_path / "sparse.dcm"
    path.write_bytes(
        file_meta(sop_class_uid="", sop_instance_uid="1.2.3", transfer_syntax_uid="", source_ae="")
    )

    assert read_file_meta(path).missing() == ["MediaStorageSOPClassUID", "TransferSyntaxUID"]


def test_bytes_without_the_dicm_prefix_are_not_a_part10_file(tmp_path: Path) -> None:
    path = tmp_path / "not-dicom.dcm"
    path.write_bytes(b"\x00" * 200)

    assert not is_part10(path)
    with pytest.raises(ValueError, match="no DICM prefix"):
        read_file_meta(path)


def test_a_file_meta_cut_off_in_its_middle_is_refused() -> None:
    encoded = file_meta(
        sop_class_uid=CTImageStorage,
        sop_instance_uid="1.2.3",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        source_ae="",
    )

    with pytest.raises(ValueError, match="cut off"):
        parse_file_meta(encoded[:140])

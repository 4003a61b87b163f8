"""The streaming data set scanner: well-formed data sets of every encoding pass with their
identity, cut or inconsistent ones are refused with a reason naming the element."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode, split_dataset

from core.errors import InvalidInputError
from dicom_node.scanner import DataSetScanner, UnknownTransferSyntaxError

#: pydicom's own test files, one or more per encoding: native little and big endian,
#: implicit VR, deflated, JPEG baseline / extended / lossless, JPEG-LS, JPEG 2000, RLE,
#: multi-frame, nested and private sequences, undefined-length UN.
WELL_FORMED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "image_dfl.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "liver_1frame.dcm",
    "liver_expb_1frame.dcm",
    "reportsi.dcm",
    "waveform_ecg.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
]


def _data_set(name: str) -> tuple[bytes, str, Dataset]:
    path = Path(str(get_testdata_file(name)))
    _meta, offset = split_dataset(path)
    dataset = pydicom.dcmread(path)
    return path.read_bytes()[offset:], str(dataset.file_meta.TransferSyntaxUID), dataset


def _scan(
    data: bytes, syntax: str, *, fragment: int | None = None, seed: int = 0
) -> DataSetScanner:
    """Feed ``data`` in fragments of ``fragment`` bytes, or of random sizes."""
    scanner = DataSetScanner(syntax)
    rng = random.Random(seed)
    view = memoryview(data)
    position = 0
    while position < len(view):
        size = fragment or rng.choice([1, 2, 5, 7, 11, 64, 1000, 65536])
        scanner.feed(view[position : position + size])
        position += size
    return scanner


@pytest.mark.parametrize("name", WELL_FORMED)
@pytest.mark.parametrize("fragment", [None, 1, 16384])
def test_a_well_formed_data_set_yields_the_identity_pydicom_reads(
    name: str, fragment: int | None
) -> None:
    data, syntax, dataset = _data_set(name)

    identity = _scan(data, syntax, fragment=fragment).identity()

    assert identity.sop_instance_uid == dataset.SOPInstanceUID
    assert identity.sop_class_uid == dataset.SOPClassUID
    assert identity.study_instance_uid == dataset.StudyInstanceUID
    assert identity.series_instance_uid == dataset.SeriesInstanceUID
    assert identity.modality == (dataset.get("Modality") or None)


def test_the_scanner_counts_the_bytes_received_as_they_were_received() -> None:
    data, syntax, _ = _data_set("image_dfl.dcm")

    assert _scan(data, syntax).size == len(data)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"])
def test_a_data_set_cut_inside_its_pixel_data_is_refused_naming_the_element(name: str) -> None:
    data, syntax, dataset = _data_set(name)
    pixels = len(dataset.PixelData)
    rng = random.Random(name)
    for _ in range(30):
        # Anywhere but the last 16 bytes of the pixel data's value (RLE: its last fragment).
        cut = len(data) - rng.randrange(16, pixels - 16)

        with pytest.raises(InvalidInputError, match=r"\(7FE0,0010\)|\(FFFE,E000\)") as raised:
            _scan(data[:cut], syntax).identity()

        assert raised.value.stage == "receive"


def test_a_data_set_cut_inside_a_sequence_is_refused() -> None:
    data, syntax, _ = _data_set("rtplan.dcm")

    with pytest.raises(InvalidInputError, match=r"ends inside"):
        _scan(data[: len(data) // 2], syntax).identity()


def test_an_element_longer_than_the_data_that_follows_is_refused() -> None:
    data, syntax, _ = _data_set("MR_truncated.dcm")

    with pytest.raises(InvalidInputError, match=r"ends inside element \(7FE0,0010\): its length"):
        _scan(data, syntax).identity()


def test_an_element_longer_than_its_item_is_refused() -> None:
    item = Dataset()
    item.CodeValue = "T-D3000"
    dataset = _identified()
    dataset.AnatomicRegionSequence = Sequence([item])
    encoded = bytearray(_encode(dataset, ExplicitVRLittleEndian))
    # Give the item's CodeValue (0008,0100) SH a length past the end of its item.
    at = encoded.index(b"\x08\x00\x00\x01SH")
    struct.pack_into("<H", encoded, at + 6, 200)

    with pytest.raises(InvalidInputError, match=r"\(0008,0100\) of length 200 runs past the end"):
        _scan(bytes(encoded), ExplicitVRLittleEndian).identity()


def test_a_sequence_of_undefined_length_never_closed_is_refused() -> None:
    dataset = _identified()
    encoded = _encode(dataset, ImplicitVRLittleEndian)
    # An undefined-length sequence, one undefined-length item, and then nothing.
    opened = struct.pack("<HHI", 0x0040, 0x0275, 0xFFFFFFFF) + struct.pack(
        "<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF
    )

    with pytest.raises(InvalidInputError, match=r"inside sequence \(0040,0275\), which is never"):
        _scan(encoded + opened, ImplicitVRLittleEndian).identity()


def test_an_unknown_value_representation_after_the_first_element_is_refused() -> None:
    encoded = bytearray(_encode(_identified(), ExplicitVRLittleEndian))
    at = encoded.index(b"\x20\x00\x0d\x00UI")
    encoded[at + 4 : at + 6] = b"Q!"

    with pytest.raises(
        InvalidInputError, match=r"\(0020,000D\) has an unknown value representation"
    ):
        _scan(bytes(encoded), ExplicitVRLittleEndian).identity()


def test_an_implicit_vr_data_set_sent_as_explicit_vr_is_accepted_and_flagged() -> None:
    encoded = _encode(_identified(), ImplicitVRLittleEndian)

    scanner = _scan(encoded, ExplicitVRLittleEndian)

    assert scanner.identity().sop_instance_uid == "1.2.3.4.5"
    assert scanner.implicit_vr_found


def test_a_missing_study_uid_is_refused_naming_it() -> None:
    dataset = _identified()
    del dataset.StudyInstanceUID

    with pytest.raises(InvalidInputError, match=r"Study Instance UID \(0020,000D\) is missing"):
        _scan(_encode(dataset, ExplicitVRLittleEndian), ExplicitVRLittleEndian).identity()


def test_an_invalid_uid_is_refused_naming_it() -> None:
    encoded = _encode(_identified(), ExplicitVRLittleEndian).replace(
        b"1.2.3.4.5\x00", b"1.2.3.04.x"
    )

    with pytest.raises(InvalidInputError, match=r"SOP Instance UID \(0008,0018\) '1.2.3.04.x'"):
        _scan(encoded, ExplicitVRLittleEndian).identity()


def test_a_cut_deflated_data_set_is_refused() -> None:
    data, syntax, _ = _data_set("image_dfl.dcm")

    with pytest.raises(InvalidInputError, match="deflated data set is cut off"):
        _scan(data[: len(data) // 2], syntax).identity()


def test_garbage_in_a_deflated_syntax_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="cannot be inflated"):
        _scan(b"\xff" * 100, DeflatedExplicitVRLittleEndian).identity()


def test_a_big_endian_data_set_with_nested_sequences_is_walked() -> None:
    dataset = _identified()
    inner = Dataset()
    inner.CodeValue = "1"
    outer = Dataset()
    outer.ConceptNameCodeSequence = Sequence([inner])
    dataset.ContentSequence = Sequence([outer, outer])

    scanner = _scan(_encode(dataset, ExplicitVRBigEndian), ExplicitVRBigEndian)

    assert scanner.identity().series_instance_uid == "1.2.3.2"


def test_an_unknown_transfer_syntax_is_refused_up_front() -> None:
    with pytest.raises(UnknownTransferSyntaxError, match=r"1\.2\.3\.4"):
        DataSetScanner("1.2.3.4")


def test_nothing_but_an_identity_is_needed_and_values_are_never_decoded() -> None:
    dataset = _identified()
    dataset.PatientName = "\xe9\xe8 not ascii"
    dataset.SpecificCharacterSet = "ISO_IR 100"

    assert _scan(_encode(dataset, ExplicitVRLittleEndian), ExplicitVRLittleEndian).identity()


def _identified() -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    dataset.SOPInstanceUID = "1.2.3.4.5"
    dataset.Modality = "CT"
    dataset.StudyInstanceUID = "1.2.3.1"
    dataset.SeriesInstanceUID = "1.2.3.2"
    return dataset


def _encode(dataset: Dataset, syntax: str) -> bytes:
    encoded = encode(
        dataset,
        syntax == ImplicitVRLittleEndian,
        syntax != ExplicitVRBigEndian,
        syntax == DeflatedExplicitVRLittleEndian,
    )
    assert encoded is not None
    return encoded

"""Encoding result objects: pydicom's bytes, faster; and reading them back strictly."""

from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import JPEG2000Lossless, RLELossless

from core.errors import InvalidInputError
from inference import codes
from inference.pipeline import Prediction
from inference.results import write_results
from inference.uids import derive_uid
from inference.volume import Volume
from inference.writers import save_dataset, strict_writing
from inference.writers.encoding import encode_file, encode_items
from inference.writers.findings import segment_findings, slice_counts
from inference.writers.identity import ResultIdentity
from inference.writers.image_library import _Entries
from inference.writers.pdf import build_encapsulated_pdf, summary_pdf
from inference.writers.sc import build_sc_images
from inference.writers.strict_check import StrictChecker, check_strictly
from tests.support.small_ct import TWO_LUNGS, lung_labels, make_seg, make_sr, small_ct

POSITION = (
    pydicom_codes.DCM.ImagePositionPatientX,
    pydicom_codes.DCM.ImagePositionPatientY,
    pydicom_codes.DCM.ImagePositionPatientZ,
)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    # 32 x 32: the smallest frames JPEG 2000 encodes.
    return small_ct(tmp_path_factory.mktemp("ct"), rows=32, columns=32)


def pydicom_bytes(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    with strict_writing():
        dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def results(volume: Volume) -> list[Dataset]:
    labels = lung_labels(32, 32)
    seg = make_seg(volume, labels)
    findings = segment_findings(volume, labels, TWO_LUNGS)
    identity = ResultIdentity(
        series_instance_uid=str(derive_uid("pdf series")),
        sop_instance_uid=str(derive_uid("pdf")),
        series_number=904,
        backend="torch",
        precision="fp32",
    )
    document = summary_pdf(volume, TWO_LUNGS, identity=identity, findings=findings)
    images = build_sc_images(
        volume,
        labels,
        findings,
        TWO_LUNGS,
        identity=lambda index: ResultIdentity(
            series_instance_uid=str(derive_uid("sc series")),
            sop_instance_uid=str(derive_uid("sc", str(index))),
            series_number=903,
            instance_number=index + 1,
        ),
        max_images=1,
        transfer_syntax_uid=RLELossless,
    )
    return [
        seg,
        make_seg(volume, labels, segmentation_type="labelmap", transfer_syntax_uid=RLELossless),
        make_seg(volume, labels, transfer_syntax_uid=JPEG2000Lossless, empty_frames="all"),
        make_sr(seg, volume, labels),
        make_sr(None, volume, labels),
        images[0][1],
        build_encapsulated_pdf(volume, TWO_LUNGS, document, identity=identity),
    ]


def test_every_kind_of_result_is_encoded_as_pydicom_encodes_it(volume: Volume) -> None:
    for dataset in results(volume):
        with strict_writing():
            ours = encode_file(dataset)
        # pydicom reads the image library's entries (encoded already) and encodes them again.
        assert ours == pydicom_bytes(dataset), dataset.Modality
        check_strictly(ours)


def test_library_entries_are_encoded_as_highdicom_items_are(volume: Volume) -> None:
    header = volume.source_headers[2]
    for frame in (None, 3):
        expected = hd.sr.ImageContentItem(
            name=codes.SOURCE,
            referenced_sop_class_uid=header.SOPClassUID,
            referenced_sop_instance_uid=header.SOPInstanceUID,
            referenced_frame_numbers=frame,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        expected.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.NumContentItem(
                    name=name,
                    value=value,
                    unit=pydicom_codes.UCUM.Millimeter,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
                )
                for name, value in zip(POSITION, header.ImagePositionPatient, strict=True)
            ]
        )

        assert _Entries().encode(header, frame) == encode_items([expected])


def encoded(dataset: Dataset) -> bytes:
    dataset.file_meta = pydicom.dataset.FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset.SOPClassUID = pydicom.uid.SegmentationStorage
    dataset.SOPInstanceUID = str(derive_uid("strict check"))
    with config.disable_value_validation():
        return pydicom_bytes(dataset)


def test_a_nonconforming_value_deep_in_a_sequence_is_refused_naming_where_it_is() -> None:
    dataset = Dataset()
    outer, inner = Dataset(), Dataset()
    with config.disable_value_validation():
        inner[0x00200032] = DataElement(0x00200032, "DS", ["1.234567890123456789", "0", "0"])
    outer.ReferencedSOPSequence = [Dataset(), inner]
    dataset.ReferencedSeriesSequence = [outer]

    with pytest.raises(InvalidInputError, match="does not conform") as error:
        check_strictly(encoded(dataset))

    where = "ReferencedSeriesSequence[0].ReferencedSOPSequence[1].ImagePositionPatient (0020,0032)"
    assert where in str(error.value)
    assert "1.2345678901" not in str(error.value)


def test_a_value_another_object_of_the_result_had_is_not_read_again_but_a_new_one_is() -> None:
    checker = StrictChecker()
    good, bad = Dataset(), Dataset()
    good.PatientID = "ID-1"
    checker.check(encoded(good))
    with config.disable_value_validation():
        bad[0x00100020] = DataElement(0x00100020, "LO", "x" * 65)
    bad.PatientName = "Same^Other"

    with pytest.raises(InvalidInputError, match=r"PatientID \(0010,0020\)"):
        checker.check(encoded(bad))


def test_per_slice_counts_are_the_same_for_few_labels_and_many() -> None:
    labels = np.random.default_rng(3).integers(0, 12, size=(5, 16, 16), dtype=np.uint8)

    few = slice_counts(labels, [1, 2, 3])
    many = slice_counts(labels, list(range(1, 12)))

    assert np.array_equal(few, many[:, :3])
    for value in range(1, 12):
        assert np.array_equal(
            many[:, value - 1], [np.count_nonzero(plane == value) for plane in labels]
        )


def test_a_saved_report_is_pydicoms_file_and_its_library_lists_every_image(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels(32, 32)
    sr = make_sr(make_seg(volume, labels), volume, labels)

    path = save_dataset(sr, tmp_path / "sr.dcm")

    assert path.read_bytes() == pydicom_bytes(sr)
    reread = pydicom.dcmread(path)
    library = next(
        item
        for item in reread.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == pydicom_codes.DCM.ImageLibrary.value
    )
    entries = [
        entry
        for group in library.ContentSequence
        for entry in group.ContentSequence
        if entry.ValueType == "IMAGE"
    ]
    assert [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries] == [
        h.SOPInstanceUID for h in volume.source_headers
    ]


def test_a_result_folder_that_cannot_be_written_fails_the_write_after_every_object_was_tried(
    volume: Volume, tmp_path: Path
) -> None:
    blocked = tmp_path / "results"
    blocked.write_text("a file where the results folder should be")
    prediction = Prediction(
        labels=lung_labels(32, 32).astype(np.uint16),
        backend="torch",
        precision="fp32",
        device="cpu",
        fallbacks=(),
    )
    threads = threading.active_count()

    with pytest.raises(OSError, match="results"):
        write_results(volume, prediction, TWO_LUNGS, out_dir=blocked)

    assert threading.active_count() == threads  # the writing thread is gone too


@pytest.mark.parametrize("vr", ["SV", "UV"])
def test_a_64_bit_integer_element_is_stepped_over_and_what_follows_is_checked(vr: str) -> None:
    dataset = Dataset()
    dataset.add_new(0x00090010, "LO", "PACS AI TEST")
    dataset.add_new(0x00091001, vr, 2**40)
    with config.disable_value_validation():
        dataset[0x00100020] = DataElement(0x00100020, "LO", "x" * 65)

    with pytest.raises(InvalidInputError, match=r"PatientID \(0010,0020\)"):
        check_strictly(encoded(dataset))

"""SEG and SR writers: what is encoded reads back exactly, with the codes we mean."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.sr._concepts_dict import concepts
from pydicom.sr.codedict import codes as pydicom_codes

from core.errors import InvalidInputError
from inference import codes
from inference.volume import Volume
from inference.writers import (
    algorithm_parameters,
    headers_in_frame,
    ordered_labels,
    save_dataset,
    tracking_uid,
)
from inference.writers.image_library import image_library
from tests.support.dicom_checks import read_report, walk
from tests.support.small_ct import (
    ANATOMY,
    COLUMNS,
    LUNG,
    NODULE,
    NODULE_CATEGORY,
    ROWS,
    SERIES,
    SLICES,
    TWO_LUNGS,
    coding_schemes,
    lung_labels,
    make_seg,
    make_sr,
    manifest,
    read_masks,
    small_ct,
)

#: Codes PS3.16 defines that pydicom's copy of its tables lacks (checked by hand).
NOT_IN_PYDICOM = {("UMLS", "C0034375", "Qualitative Evaluations")}
#: Codes whose template gives another meaning than pydicom's table: TID 1601 row 1 says
#: "Source" (as highdicom writes it), the table "Source (attribute)" (SNOMED's).
MEANING_FROM_THE_TEMPLATE = {("SCT", "260753009", "Source")}
DCM = pydicom_codes.DCM


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    return small_ct(tmp_path_factory.mktemp("ct"))


# --- codes -------------------------------------------------------------------------------


def test_every_code_we_emit_has_the_meaning_ps3_16_gives_it() -> None:
    for code in codes.ALL_CODES:
        assert code.scheme_designator != "SRT", code
        assert code.meaning == code.meaning.strip() and '"' not in code.meaning, code
        if code.scheme_designator == "UCUM":
            continue
        if (code.scheme_designator, code.value, code.meaning) in (
            NOT_IN_PYDICOM | MEANING_FROM_THE_TEMPLATE
        ):
            continue
        table = cast(dict[str, dict[str, tuple[str, list[int]]]], concepts[code.scheme_designator])
        meanings = {entry[code.value][0] for entry in table.values() if code.value in entry}
        assert code.meaning in meanings, (code, meanings)


def test_volume_is_reported_in_millilitres_as_dicom_and_dcmqi_code_them() -> None:
    assert (codes.MILLILITER.value, codes.MILLILITER.scheme_designator) == ("ml", "UCUM")
    assert codes.MILLILITER.meaning == "milliliter"
    assert set(codes.ALGORITHM_FAMILIES) == {"123110", "123105", "123104"}


# --- SEG ---------------------------------------------------------------------------------


def test_seg_masks_read_back_exactly_on_the_source_slices(volume: Volume, tmp_path: Path) -> None:
    labels = lung_labels()
    seg = make_seg(volume, labels)
    path = save_dataset(seg, tmp_path / "seg.dcm")

    masks = read_masks(path, volume, 2)

    assert masks.shape == (SLICES, ROWS, COLUMNS, 2)
    assert np.array_equal(masks[..., 0], labels == 1)
    assert np.array_equal(masks[..., 1], labels == 2)
    reread = pydicom.dcmread(path)
    assert reread.SegmentationType == "BINARY"
    # Frames only where a segment is present: 4 slices of segment 1, 2 of segment 2.
    assert reread.NumberOfFrames == 6


def test_seg_describes_each_label_as_the_manifest_says(volume: Volume, tmp_path: Path) -> None:
    seg = make_seg(volume, lung_labels())
    reread = pydicom.dcmread(save_dataset(seg, tmp_path / "seg.dcm"))

    for item, label in zip(reread.SegmentSequence, ordered_labels(TWO_LUNGS), strict=True):
        assert item.SegmentLabel == label.name
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
        assert (kind.CodeValue, kind.CodeMeaning) == ("39607008", "Lung")
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == "Test Lungs"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmVersion == "2.1"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert algorithm.AlgorithmParameters == algorithm_parameters("tensorrt", "fp16")
        expected_lab = hd.color.CIELabColor.from_rgb(*label.color).value
        assert list(item.RecommendedDisplayCIELabValue) == list(expected_lab)
        assert item.TrackingUID == tracking_uid(SERIES, TWO_LUNGS, f"label-{label.value}")
        assert item.TrackingID == label.name
    assert reread.SeriesDescription == "AI test-lungs SEG of 3"
    assert reread.Manufacturer == "pacs-ai"
    assert reread.ManufacturerModelName == "Test Lungs"
    assert list(reread.SoftwareVersions)[1] == "test-lungs 2.1"
    assert reread.DeviceSerialNumber
    assert "SRT" not in coding_schemes(reread)


def test_seg_uses_the_volumes_frame_of_reference_and_references_the_true_sources(
    volume: Volume, tmp_path: Path
) -> None:
    seg = make_seg(volume, lung_labels())
    reread = pydicom.dcmread(save_dataset(seg, tmp_path / "seg.dcm"))

    assert reread.FrameOfReferenceUID == volume.frame_of_reference_uid
    # The lowest slice is the last file written, whose Frame of Reference is number 5.
    assert volume.frame_of_reference_uid == f"1.2.826.0.1.3680043.10.5.{SLICES - 1}"
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for item in reread.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {str(h.SOPInstanceUID) for h in volume.source_headers}
    assert reread.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES
    for frame in reread.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        header = next(
            h for h in volume.source_headers if h.SOPInstanceUID == source.ReferencedSOPInstanceUID
        )
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == [float(v) for v in header.ImagePositionPatient]
    # The volume's headers keep their own UIDs; only highdicom's copies were changed.
    assert len({h.FrameOfReferenceUID for h in volume.source_headers}) == SLICES


def test_an_empty_label_keeps_its_segment_with_one_empty_frame(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    labels[labels == 1] = 0
    seg = make_seg(volume, labels)
    path = save_dataset(seg, tmp_path / "seg.dcm")

    reread = pydicom.dcmread(path)
    per_segment = [
        int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for f in reread.PerFrameFunctionalGroupsSequence
    ]
    assert sorted(per_segment) == [1, 2, 2]
    assert [item.SegmentLabel for item in reread.SegmentSequence] == ["Right lung", "Left lung"]
    masks = read_masks(path, volume, 2)
    assert not masks[..., 0].any()
    assert np.array_equal(masks[..., 1], labels == 2)


def test_all_labels_empty_gives_one_empty_frame_per_segment_referencing_every_slice(
    volume: Volume, tmp_path: Path
) -> None:
    labels = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    path = save_dataset(make_seg(volume, labels), tmp_path / "seg.dcm")

    reread = pydicom.dcmread(path)
    assert reread.NumberOfFrames == 2
    referenced = reread.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert len(referenced) == SLICES
    assert not read_masks(path, volume, 2).any()


def test_label_values_need_not_be_consecutive(volume: Volume, tmp_path: Path) -> None:
    model = manifest(
        [
            {"value": 7, "name": "Nodule", "category": NODULE_CATEGORY, "type": NODULE},
            {"value": 3, "name": "Lung", "category": ANATOMY, "type": LUNG},
        ]
    )
    labels = lung_labels() * np.uint8(3)  # 1 -> 3 (Lung), 2 -> 6 ...
    labels[labels == 6] = 7  # ... -> 7 (Nodule)
    path = save_dataset(make_seg(volume, labels, model), tmp_path / "seg.dcm")

    reread = pydicom.dcmread(path)
    assert [item.SegmentLabel for item in reread.SegmentSequence] == ["Lung", "Nodule"]
    masks = read_masks(path, volume, 2)
    assert np.array_equal(masks[..., 0], labels == 3)
    assert np.array_equal(masks[..., 1], labels == 7)


def test_a_label_map_that_does_not_fit_is_refused(volume: Volume) -> None:
    with pytest.raises(InvalidInputError, match=r"label map shape \(6, 8, 9\) differs"):
        make_seg(volume, np.zeros((SLICES, ROWS, COLUMNS - 1), dtype=np.uint8))
    undeclared = lung_labels()
    undeclared[0, 0, 0] = 5
    with pytest.raises(InvalidInputError, match=r"values \[5\] that model test-lungs 2.1"):
        make_seg(volume, undeclared)
    with pytest.raises(InvalidInputError, match="not an unsigned integer type"):
        make_seg(volume, lung_labels().astype(np.float32))


# --- SR ----------------------------------------------------------------------------------


def test_sr_reports_each_segments_volume_and_its_mean_and_maximum_hu(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    seg = make_seg(volume, labels)
    report = read_report(save_dataset(make_sr(seg, volume, labels), tmp_path / "sr.dcm"))

    voxel_ml = 0.6 * 0.8 * 2.0 / 1000
    groups = report.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Right lung", "Left lung"]
    volumes = [g.get_measurements(name=codes.VOLUME)[0] for g in groups]
    assert [m.value for m in volumes] == pytest.approx([48 * voxel_ml, 36 * voxel_ml], rel=1e-5)
    assert all(m.unit == codes.MILLILITER for m in volumes)
    assert all(m.method == codes.SUM_OF_SEGMENTED_VOXELS for m in volumes)
    for group, value in zip(groups, (1, 2), strict=True):
        inside = volume.voxels[labels == value]
        statistics = {
            m.derivation.meaning if m.derivation else "": m
            for m in group.get_measurements(name=codes.ATTENUATION_COEFFICIENT)
        }
        assert set(statistics) == {"Mean", "Maximum"}
        assert statistics["Mean"].derivation == codes.MEAN
        assert statistics["Mean"].value == pytest.approx(float(inside.mean()), abs=1e-3)
        assert statistics["Maximum"].value == float(inside.max())
        assert statistics["Mean"].unit == codes.HOUNSFIELD_UNIT
        (presence,) = group.get_qualitative_evaluations(name=codes.LUNG)
        assert presence.value == codes.PRESENT
    # No total group: a group without coordinates keeps OHIF from showing any of them.
    assert report.get_image_measurement_groups() == []


def test_each_found_segment_is_outlined_on_its_key_slice_under_the_same_tracking_uid(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    seg = make_seg(volume, labels)
    report = read_report(save_dataset(make_sr(seg, volume, labels), tmp_path / "sr.dcm"))

    volumetric = report.get_volumetric_roi_measurement_groups()
    planar = report.get_planar_roi_measurement_groups()
    assert [g.tracking_uid for g in planar] == [g.tracking_uid for g in volumetric]
    for group, value in zip(planar, (1, 2), strict=True):
        mask = labels == value
        key = int(np.argmax(mask.sum(axis=(1, 2))))
        region = group.roi
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        (image,) = region.ContentSequence
        assert image.referenced_sop_instance_uid == volume.source_headers[key].SOPInstanceUID
        outline = region.value
        assert np.array_equal(outline[0], outline[-1])  # closed
        rows, columns = np.nonzero(mask[key])
        # Pixel-corner coordinates: the outline is the bounding box of the rectangle.
        assert outline[:, 0].min() == columns.min() and outline[:, 0].max() == columns.max() + 1
        assert outline[:, 1].min() == rows.min() and outline[:, 1].max() == rows.max() + 1
        (area,) = group.get_measurements(name=codes.AREA)
        assert area.unit == codes.SQUARE_MILLIMETER
        assert area.value == pytest.approx(mask[key].sum() * 0.6 * 0.8, rel=1e-5)


def test_the_report_says_for_every_label_whether_it_was_found(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    labels[labels == 1] = 0
    seg = make_seg(volume, labels)
    path = save_dataset(make_sr(seg, volume, labels), tmp_path / "sr.dcm")
    report = read_report(path)
    reread = pydicom.dcmread(path)

    # The label not found has no measurement group (nothing to measure or draw) ...
    assert [g.tracking_identifier for g in report.get_volumetric_roi_measurement_groups()] == [
        "Left lung"
    ]
    # ... and is Absent in the report's Qualitative Evaluations (TID 1500 row 12).
    (container,) = [
        item
        for item in reread.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == codes.QUALITATIVE_EVALUATIONS.value
    ]
    values = [item.ConceptCodeSequence[0].CodeValue for item in container.ContentSequence]
    assert values == [codes.ABSENT.value, codes.PRESENT.value]


def concept(item: pydicom.Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def acquisition_context(item: pydicom.Dataset) -> dict[str, object]:
    """The HAS ACQ CONTEXT descriptors directly under ``item``, by concept code value."""
    found: dict[str, object] = {}
    for child in item.ContentSequence:
        if child.RelationshipType != "HAS ACQ CONTEXT":
            continue
        if child.ValueType == "NUM":
            found[concept(child)] = float(child.MeasuredValueSequence[0].NumericValue)
        elif child.ValueType == "UIDREF":
            found[concept(child)] = child.UID
        else:
            found[concept(child)] = child.ConceptCodeSequence[0].CodeValue
    return found


POSITION = [DCM.ImagePositionPatientX, DCM.ImagePositionPatientY, DCM.ImagePositionPatientZ]


def test_the_image_library_lists_every_source_image_and_says_what_they_share_once(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    seg = make_seg(volume, labels)
    reread = pydicom.dcmread(save_dataset(make_sr(seg, volume, labels), tmp_path / "sr.dcm"))

    names = [concept(item) for item in reread.ContentSequence]
    at = names.index(DCM.ImageLibrary.value)
    assert names[at + 1] == DCM.ImagingMeasurements.value  # TID 1500 rows 4 and 5
    (group,) = reread.ContentSequence[at].ContentSequence
    assert concept(group) == DCM.ImageLibraryGroup.value
    shared = acquisition_context(group)
    first = volume.source_headers[0]
    assert shared[DCM.FrameOfReferenceUID.value] == volume.frame_of_reference_uid
    assert shared[DCM.PixelDataRows.value] == ROWS and shared[DCM.PixelDataColumns.value] == COLUMNS
    assert shared[DCM.SliceThickness.value] == float(first.SliceThickness)
    assert shared[DCM.ImageOrientationPatientRowX.value] == float(first.ImageOrientationPatient[0])
    assert not {c.value for c in POSITION} & set(shared), "position differs per image"

    entries = [item for item in group.ContentSequence if item.ValueType == "IMAGE"]
    assert [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries] == [
        h.SOPInstanceUID for h in volume.source_headers
    ]
    for entry, header in zip(entries, volume.source_headers, strict=True):
        own = acquisition_context(entry)
        assert list(own) == [c.value for c in POSITION]
        assert list(own.values()) == [float(v) for v in header.ImagePositionPatient]


def test_images_that_differ_in_more_than_position_go_to_groups_of_their_own(
    volume: Volume,
) -> None:
    headers = headers_in_frame(volume)
    for header in headers[::2]:
        header.SliceThickness = 5.0

    library = image_library(headers)

    groups = list(library.ContentSequence)
    assert len(groups) == 2
    thicknesses = [acquisition_context(g)[DCM.SliceThickness.value] for g in groups]
    assert thicknesses == [5.0, float(headers[1].SliceThickness)]
    listed = [
        e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for g in groups
        for e in g.ContentSequence
        if e.ValueType == "IMAGE"
    ]
    assert sorted(listed) == sorted(h.SOPInstanceUID for h in headers)


def test_sr_groups_reference_their_segment_the_source_series_and_the_segs_tracking_uids(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    seg = make_seg(volume, labels)
    report = read_report(save_dataset(make_sr(seg, volume, labels), tmp_path / "sr.dcm"))

    for number, group in enumerate(report.get_volumetric_roi_measurement_groups(), start=1):
        reference = group.referenced_segment
        assert reference is not None
        source_series = reference.source_series_for_segmentation
        assert source_series is not None
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert reference.referenced_segment_numbers == [number]
        assert source_series.value == SERIES
        assert group.tracking_uid == seg.SegmentSequence[number - 1].TrackingUID
        assert group.finding_type == hd.sr.CodedConcept.from_code(codes.LUNG)
        assert [site.value for site in group.finding_sites] == [
            hd.sr.CodedConcept.from_code(codes.LUNG)
        ]


def test_sr_names_the_device_the_algorithm_and_the_backend(volume: Volume, tmp_path: Path) -> None:
    labels = lung_labels()
    seg = make_seg(volume, labels)
    path = save_dataset(make_sr(seg, volume, labels), tmp_path / "sr.dcm")
    reread = pydicom.dcmread(path)

    texts = {
        (str(d.ConceptNameCodeSequence[0].CodeMeaning), str(d.TextValue))
        for d in walk(reread)
        if d.get("ValueType") == "TEXT"
    }
    assert ("Device Observer Manufacturer", "pacs-ai") in texts
    assert ("Device Observer Name", "Test Lungs") in texts
    assert ("Algorithm Name", "Test Lungs") in texts
    assert ("Algorithm Version", "2.1") in texts
    assert ("Algorithm Parameters", "backend=tensorrt,precision=fp16") in texts
    assert reread.SeriesDescription == "AI test-lungs SR of 3"
    # IHE AI Results: pacs-ai running the model is processing equipment of the result
    # (besides the scanner and highdicom, which highdicom names).
    (equipment,) = [e for e in reread.ContributingEquipmentSequence if e.Manufacturer == "pacs-ai"]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == codes.PROCESSING_EQUIPMENT.value
    assert equipment.ManufacturerModelName == "Test Lungs"
    assert list(equipment.SoftwareVersions)[1] == "test-lungs 2.1"
    assert "Artificial Intelligence" in equipment.ContributionDescription
    assert reread.CompletionFlag == "COMPLETE"
    assert reread.VerificationFlag == "UNVERIFIED"
    assert "SRT" not in coding_schemes(reread)
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for s in reread.CurrentRequestedProcedureEvidenceSequence
        for series in s.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence
    assert {str(h.SOPInstanceUID) for h in volume.source_headers} <= evidence


def test_when_nothing_is_found_every_label_keeps_a_group_of_zero_ml_reported_absent(
    volume: Volume, tmp_path: Path
) -> None:
    labels = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    seg = make_seg(volume, labels)
    report = read_report(save_dataset(make_sr(seg, volume, labels), tmp_path / "sr.dcm"))

    groups = report.get_volumetric_roi_measurement_groups()
    assert [g.get_measurements(name=codes.VOLUME)[0].value for g in groups] == [0.0, 0.0]
    presence = [g.get_qualitative_evaluations(name=codes.LUNG)[0].value for g in groups]
    assert presence == [codes.ABSENT] * 2
    assert all(g.get_measurements(name=codes.ATTENUATION_COEFFICIENT) == [] for g in groups)
    assert report.get_planar_roi_measurement_groups() == []


def test_without_a_seg_the_findings_reference_the_slices_they_are_on(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    report = read_report(save_dataset(make_sr(None, volume, labels), tmp_path / "sr.dcm"))

    groups = report.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Right lung", "Left lung"]
    assert report.get_volumetric_roi_measurement_groups() == []
    for group, value in zip(groups, (1, 2), strict=True):
        slices = np.flatnonzero((labels == value).any(axis=(1, 2)))
        expected = {str(volume.source_headers[i].SOPInstanceUID) for i in slices}
        assert {str(s.referenced_sop_instance_uid) for s in group.source_images} == expected
    assert len(report.get_planar_roi_measurement_groups()) == 2


def test_uids_and_tracking_are_the_same_when_a_job_runs_twice(volume: Volume) -> None:
    labels = lung_labels()
    first = make_sr(make_seg(volume, labels), volume, labels)
    second = make_sr(make_seg(volume, labels), volume, labels)

    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    uids = [
        [str(d.UID) for d in walk(sr) if d.get("ValueType") == "UIDREF"] for sr in (first, second)
    ]
    assert uids[0] == uids[1]


def test_an_sr_for_another_manifests_seg_is_refused(volume: Volume) -> None:
    labels = lung_labels()
    seg = make_seg(volume, labels)
    other = manifest([{"value": 1, "name": "Lungs", "category": ANATOMY, "type": LUNG}])

    with pytest.raises(ValueError, match=r"SEG's segments \['Right lung', 'Left lung'\]"):
        make_sr(seg, volume, np.minimum(labels, 1), other)


# --- writing -----------------------------------------------------------------------------


def test_saving_refuses_a_non_conformant_value_and_leaves_no_file(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    seg = make_seg(volume, labels)
    with config.disable_value_validation():
        seg[0x00100010] = DataElement(0x00100010, "PN", "Bad^" + "N" * 70)

    with pytest.raises(InvalidInputError, match="does not conform to its VR") as error:
        save_dataset(seg, tmp_path / "seg.dcm")
    assert error.value.stage == "write"
    assert list(tmp_path.iterdir()) == []


def test_writers_log_no_patient_data(
    volume: Volume, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = lung_labels()
    with caplog.at_level(logging.DEBUG):
        seg = make_seg(volume, labels)
        save_dataset(seg, tmp_path / "seg.dcm")
        save_dataset(make_sr(seg, volume, labels), tmp_path / "sr.dcm")

    assert caplog.records
    assert not any("Hiddenname" in r.getMessage() for r in caplog.records)
    assert not any("WRITER-PID" in r.getMessage() for r in caplog.records)

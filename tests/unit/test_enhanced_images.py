"""Enhanced multi-frame images: one file is a volume, and results point at its frames."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from core.errors import InvalidInputError
from inference.frames import frame_geometries, frame_view
from inference.volume import Volume, load_series
from inference.writers import save_dataset
from inference.writers.findings import segment_findings
from inference.writers.identity import ResultIdentity
from inference.writers.sc import build_sc_images
from inference.writers.seg import SegmentationType
from tests.support.dicom_checks import read_report, walk
from tests.support.small_ct import TWO_LUNGS, make_seg, make_sr
from tests.unit.test_volume import COLUMNS, ROWS, series

#: Slice positions (mm) of the single-frame series the enhanced images are made from.
POSITIONS = [0.0, 2.5, 5.0, 7.5, 10.0]


def convert(paths: list[Path], out: Path) -> Path:
    """``paths`` as one Legacy Converted Enhanced CT image (PS3.3 A.70) at ``out``."""
    legacy = [dcmread(path) for path in paths]
    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy,
        series_instance_uid=str(legacy[0].SeriesInstanceUID),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    image.save_as(out, enforce_file_format=True)
    return out


def edited(path: Path, change: Callable[[Dataset], None]) -> Path:
    """``path`` with ``change`` applied to its dataset, saved beside it."""
    dataset = dcmread(path)
    change(dataset)
    target = path.with_name(f"edited-{path.name}")
    dataset.save_as(target, enforce_file_format=True)
    return target


@pytest.fixture
def single_frame(tmp_path: Path) -> list[Path]:
    return series(tmp_path / "single", POSITIONS)


@pytest.fixture
def enhanced(single_frame: list[Path], tmp_path: Path) -> Path:
    return convert(single_frame, tmp_path / "enhanced.dcm")


def test_an_enhanced_ct_loads_as_the_same_volume_as_its_single_frame_series(
    single_frame: list[Path], enhanced: Path
) -> None:
    expected = load_series(single_frame)

    volume = load_series([enhanced])

    assert np.array_equal(volume.voxels, expected.voxels)
    assert volume.spacing == expected.spacing
    assert volume.origin == expected.origin
    assert np.array_equal(volume.direction, expected.direction)
    assert volume.modality == "CT" and volume.series_instance_uid == expected.series_instance_uid
    assert volume.frame_of_reference_uid == expected.frame_of_reference_uid
    [header] = volume.source_headers
    assert "PixelData" not in header
    # Frame n holds the slice at its own plane position, whatever the frame order.
    positions = {g.frame_number: g.position for g in frame_geometries(header)}
    for z in range(volume.shape[0]):
        source = volume.slice_source(z)
        assert source is not None and source.header_index == 0
        assert source.frame_number is not None
        assert positions[source.frame_number] == (-10.0, -20.0, POSITIONS[z])


def test_frames_take_their_own_geometry_and_rescale_over_the_shared_ones(
    single_frame: list[Path], enhanced: Path
) -> None:
    def per_frame(dataset: Dataset) -> None:
        shared = dataset.SharedFunctionalGroupsSequence[0]
        for index, item in enumerate(dataset.PerFrameFunctionalGroupsSequence):
            item.PlaneOrientationSequence = copy.deepcopy(shared.PlaneOrientationSequence)
            item.PixelMeasuresSequence = copy.deepcopy(shared.PixelMeasuresSequence)
            transformation = copy.deepcopy(shared.PixelValueTransformationSequence)
            transformation[0].RescaleIntercept = -1000 - index
            item.PixelValueTransformationSequence = transformation
        del shared.PlaneOrientationSequence
        del shared.PixelMeasuresSequence
        shared.PixelValueTransformationSequence[0].RescaleIntercept = 5000

    volume = load_series([edited(enhanced, per_frame)])

    expected = load_series(single_frame)
    assert volume.spacing == expected.spacing
    for z in range(volume.shape[0]):
        source = volume.slice_source(z)
        assert source is not None and source.frame_number is not None
        # Intercept -1000 - (frame index) instead of the single-frame images' -1024.
        shift = 24 - (source.frame_number - 1)
        assert np.array_equal(volume.voxels[z], expected.voxels[z] + shift)


def test_a_missing_frame_is_interpolated_as_a_missing_slice_is(
    single_frame: list[Path], tmp_path: Path
) -> None:
    enhanced = convert(single_frame[:2] + single_frame[3:], tmp_path / "gap.dcm")
    expected = load_series(single_frame)

    volume = load_series([enhanced], max_missing=2)

    assert volume.shape == expected.shape
    assert volume.interpolated_slices == (2,)
    assert np.array_equal(volume.voxels[2], (expected.voxels[1] + expected.voxels[3]) / 2)
    with pytest.raises(InvalidInputError, match=r"missing slices: .*1 slices missing"):
        load_series([enhanced])


def test_frames_at_one_position_are_refused_as_duplicates(enhanced: Path) -> None:
    def same_position(dataset: Dataset) -> None:
        frames = dataset.PerFrameFunctionalGroupsSequence
        frames[1].PlanePositionSequence = copy.deepcopy(frames[0].PlanePositionSequence)

    with pytest.raises(
        InvalidInputError, match=r"1 duplicate slice position\(s\) .* frame \d and .* frame \d"
    ):
        load_series([edited(enhanced, same_position)])


def test_a_frame_without_a_position_is_refused_naming_the_macro(enhanced: Path) -> None:
    def no_position(dataset: Dataset) -> None:
        del dataset.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence

    with pytest.raises(
        InvalidInputError,
        match=r"ImagePositionPatient \(PlanePositionSequence\) missing or malformed in 1 "
        r"frame\(s\)",
    ):
        load_series([edited(enhanced, no_position)])


def test_two_multi_frame_images_in_one_series_are_refused(
    single_frame: list[Path], tmp_path: Path
) -> None:
    first = convert(single_frame[:3], tmp_path / "first.dcm")
    second = convert(single_frame[3:], tmp_path / "second.dcm")

    with pytest.raises(
        InvalidInputError, match=r"2 multi-frame image\(s\) .* a volume is read from"
    ):
        load_series([first, second])


def test_a_frame_view_holds_the_frames_geometry_at_the_top_level(enhanced: Path) -> None:
    dataset = dcmread(enhanced, stop_before_pixels=True)
    geometry = frame_geometries(dataset)[3]

    view = frame_view(dataset, 4)

    assert tuple(float(v) for v in view.ImagePositionPatient) == geometry.position
    assert [float(v) for v in view.PixelSpacing] == [0.5, 0.7]
    assert "PerFrameFunctionalGroupsSequence" not in view and "PixelData" not in view
    assert view.SOPInstanceUID == dataset.SOPInstanceUID


# --- results on an enhanced image -----------------------------------------------------------


def lungs(shape: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:4, 1:4, 1:3] = 1
    labels[2, 2:5, 3:5] = 2
    return labels


def frame_of(volume: Volume, z: int) -> int:
    source = volume.slice_source(z)
    assert source is not None and source.frame_number is not None
    return source.frame_number


@pytest.mark.parametrize("encoding", ["binary", "labelmap"])
def test_the_seg_references_each_source_frame_and_reads_back_exactly(
    enhanced: Path, tmp_path: Path, encoding: SegmentationType
) -> None:
    volume = load_series([enhanced])
    labels = lungs(volume.shape)

    path = save_dataset(make_seg(volume, labels, segmentation_type=encoding), tmp_path / "seg.dcm")

    reread = pydicom.dcmread(path)
    source_uid = str(volume.source_headers[0].SOPInstanceUID)
    z_at = {POSITIONS[z]: z for z in range(volume.shape[0])}
    for item in reread.PerFrameFunctionalGroupsSequence:
        [source] = item.DerivationImageSequence[0].SourceImageSequence
        z = z_at[float(item.PlanePositionSequence[0].ImagePositionPatient[2])]
        assert source.ReferencedSOPInstanceUID == source_uid
        assert int(source.ReferencedFrameNumber) == frame_of(volume, z)
    frames = [frame_of(volume, z) for z in range(volume.shape[0])]
    masks = hd.seg.segread(path).get_pixels_by_source_frame(
        source_sop_instance_uid=source_uid,
        source_frame_numbers=frames,
        segment_numbers=[1, 2],
        combine_segments=False,
        # Frames of the source without any label have no SEG frame.
        assert_missing_frames_are_empty=True,
    )
    assert masks.shape == (*volume.shape, 2)
    assert np.array_equal(masks[..., 0].astype(bool), labels == 1)
    assert np.array_equal(masks[..., 1].astype(bool), labels == 2)


def test_an_empty_seg_on_an_enhanced_image_has_one_frame_on_a_source_frame(
    enhanced: Path, tmp_path: Path
) -> None:
    volume = load_series([enhanced])

    path = save_dataset(
        make_seg(volume, np.zeros(volume.shape, dtype=np.uint8)), tmp_path / "seg.dcm"
    )

    reread = pydicom.dcmread(path)
    assert reread.NumberOfFrames == 2  # one empty frame per segment
    first = frame_geometries(volume.source_headers[0])[0]
    for item in reread.PerFrameFunctionalGroupsSequence:
        [source] = item.DerivationImageSequence[0].SourceImageSequence
        assert int(source.ReferencedFrameNumber) == 1
        position = item.PlanePositionSequence[0].ImagePositionPatient
        assert tuple(float(v) for v in position) == first.position


def test_the_sr_references_frames_in_its_image_library_and_outlines(
    enhanced: Path, tmp_path: Path
) -> None:
    volume = load_series([enhanced])
    labels = lungs(volume.shape)
    seg = make_seg(volume, labels)

    path = save_dataset(make_sr(seg, volume, labels), tmp_path / "sr.dcm")

    source_uid = str(volume.source_headers[0].SOPInstanceUID)
    images = [
        item.ReferencedSOPSequence[0]
        for item in walk(pydicom.dcmread(path))
        if item.get("ValueType") == "IMAGE"
        and item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_uid
    ]
    library = sorted(int(image.ReferencedFrameNumber) for image in images)
    # Every frame once in the Image Library, plus the two outlines' frames.
    planar = read_report(path).get_planar_roi_measurement_groups()
    drawn = []
    for group in planar:
        assert group.roi is not None
        (image,) = group.roi.ContentSequence
        assert image.referenced_sop_instance_uid == source_uid
        drawn.append(int(image.ReferencedSOPSequence[0].ReferencedFrameNumber))
    assert drawn == [frame_of(volume, 1), frame_of(volume, 2)]
    assert library == sorted([*range(1, volume.shape[0] + 1), *drawn])
    evidence = pydicom.dcmread(path).CurrentRequestedProcedureEvidenceSequence
    referenced = [
        str(instance.ReferencedSOPInstanceUID)
        for study in evidence
        for series_item in study.ReferencedSeriesSequence
        for instance in series_item.ReferencedSOPSequence
    ]
    assert sorted(referenced) == sorted([source_uid, str(seg.SOPInstanceUID)])


def test_a_secondary_capture_names_the_frame_it_shows(enhanced: Path) -> None:
    volume = load_series([enhanced])
    labels = lungs(volume.shape)
    findings = segment_findings(volume, labels, TWO_LUNGS)
    series_uid = str(hd.UID())

    images = build_sc_images(
        volume,
        labels,
        findings,
        TWO_LUNGS,
        identity=lambda index: ResultIdentity(
            series_instance_uid=series_uid,
            series_number=903,
            sop_instance_uid=str(hd.UID()),
            instance_number=index + 1,
        ),
    )

    assert [index for index, _ in images] == [1, 2, 3]
    for index, image in images:
        [reference] = image.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == volume.source_headers[0].SOPInstanceUID
        assert int(reference.ReferencedFrameNumber) == frame_of(volume, index)
        assert image.Rows > ROWS and image.Columns > COLUMNS

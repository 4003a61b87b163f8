"""Missing slices: filled by linear interpolation up to the model's limit, refused beyond,
and never given a SEG frame or a source reference by the writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from core.errors import InvalidInputError
from inference import codes
from inference.volume import Volume, load_series
from inference.writers import save_dataset
from inference.writers.findings import segment_findings
from inference.writers.identity import ResultIdentity
from inference.writers.sc import build_sc_images
from tests.support.dicom_checks import read_report, walk
from tests.support.small_ct import (
    ANATOMY,
    COLUMNS,
    LUNG,
    ROWS,
    TWO_LUNGS,
    make_seg,
    make_sr,
    manifest,
    write_slice,
)

LABELS = [{"value": 1, "name": "Lung", "category": ANATOMY, "type": LUNG}]


def ct(folder: Path, positions: list[float], **kwargs: Any) -> Volume:
    """The small CT with slices at ``positions`` (mm), read with ``kwargs``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_slice(folder, i, z) for i, z in enumerate(positions)]
    return load_series(paths, **kwargs)


def test_one_missing_slice_is_the_mean_of_its_neighbours(tmp_path: Path) -> None:
    volume = ct(tmp_path, [0.0, 2.0, 4.0, 8.0, 10.0], max_missing=2)

    assert volume.shape == (6, ROWS, COLUMNS)
    assert volume.spacing[2] == 2.0
    assert np.array_equal(volume.voxels[3], (volume.voxels[2] + volume.voxels[4]) / 2)
    # Stored values encode the file index: 10 HU per file; the gap lies between files 2, 3.
    assert volume.voxels[4, 0, 0] - volume.voxels[2, 0, 0] == 10.0
    assert volume.interpolated_slices == (3,)
    assert volume.source_slices == (0, 1, 2, 4, 5)
    assert volume.slice_source(3) is None and volume.slice_header(3) is None
    assert len(volume.source_headers) == 5
    header = volume.slice_header(4)
    assert header is not None and float(header.ImagePositionPatient[2]) == 8.0
    [note] = [n for n in volume.notes if n.startswith("Missing slices")]
    assert "1 slice(s) interpolated linearly" in note and "z 3 (6.000 mm" in note
    assert str(volume.source_headers[2].SOPInstanceUID) in note


def test_two_missing_slices_are_weighted_by_their_distance(tmp_path: Path) -> None:
    volume = ct(tmp_path, [0.0, 2.0, 8.0, 10.0], max_missing=2)

    below, above = volume.voxels[1].astype(np.float64), volume.voxels[4].astype(np.float64)
    assert volume.interpolated_slices == (2, 3)
    np.testing.assert_allclose(volume.voxels[2], below * 2 / 3 + above / 3, rtol=1e-6)
    np.testing.assert_allclose(volume.voxels[3], below / 3 + above * 2 / 3, rtol=1e-6)


def test_three_missing_slices_are_refused_when_the_model_fills_two(tmp_path: Path) -> None:
    with pytest.raises(
        InvalidInputError,
        match=r"missing slices: 1 gap\(s\) .* between 2.000 and 10.000 mm \(step 8.000 mm, "
        r"3 slices missing\); this model interpolates at most 2 consecutive missing "
        r"slice\(s\) \(accepts.missing_slices in its model.yaml\); resend the complete series",
    ):
        ct(tmp_path, [0.0, 2.0, 10.0, 12.0], max_missing=2)


def test_a_model_that_fills_no_gap_refuses_one_missing_slice(tmp_path: Path) -> None:
    with pytest.raises(
        InvalidInputError,
        match=r"missing slices: .* \(step 4.000 mm, 1 slices missing\); this model "
        r"interpolates no missing slice",
    ):
        ct(tmp_path, [0.0, 2.0, 4.0, 8.0, 10.0])


def test_a_gap_that_is_not_whole_slices_is_refused_even_when_gaps_are_filled(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        InvalidInputError, match=r"step 5.000 mm, 2.50 steps: not a whole number of slices"
    ):
        ct(tmp_path, [0.0, 2.0, 4.0, 9.0, 11.0], max_missing=2)


def test_irregular_spacing_is_still_refused_when_gaps_are_filled(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"irregular slice spacing: .* 2.800 mm after 4"):
        ct(tmp_path, [0.0, 2.0, 4.0, 6.8, 8.8], max_missing=2)


@pytest.mark.parametrize(
    ("extra", "limit"),
    [
        ({}, 0),
        ({"preprocessing": {"target_spacing": [1.0, 1.0, 1.0]}}, 2),
        ({"preprocessing": {"target_shape": [16, 16, 16]}}, 2),
        ({"preprocessing": {"target_spacing": [1.0, 1.0, 1.0]}, "missing": 0}, 0),
        ({"missing": 3}, 3),
    ],
)
def test_the_manifest_says_how_many_missing_slices_are_filled(
    extra: dict[str, Any], limit: int
) -> None:
    missing = extra.pop("missing", None)
    accepts: dict[str, Any] = {"modalities": ["CT"]}
    if missing is not None:
        accepts["missing_slices"] = {"max_consecutive": missing}

    model = manifest(LABELS, accepts=accepts, **extra)

    assert model.max_missing_slices == limit


# --- writers -------------------------------------------------------------------------------


@pytest.fixture
def gap_volume(tmp_path: Path) -> Volume:
    """Six slices, 2 mm apart, with the one at 6 mm (z index 3) missing."""
    return ct(tmp_path / "ct", [0.0, 2.0, 4.0, 8.0, 10.0, 12.0], max_missing=2)


def labels_largest_on_the_gap(volume: Volume) -> npt.NDArray[np.uint8]:
    """Label 1 on z 1-5, largest on the interpolated slice 3; label 2 on z 3 only."""
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[1:6, 1:4, 1:4] = 1
    labels[3, 1:7, 1:7] = 1
    labels[3, 7, 8:10] = 2
    return labels


def test_the_seg_has_frames_only_on_source_slices(gap_volume: Volume, tmp_path: Path) -> None:
    labels = labels_largest_on_the_gap(gap_volume)
    path = save_dataset(make_seg(gap_volume, labels), tmp_path / "seg.dcm")

    reread = pydicom.dcmread(path)
    positions = [
        float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        for item in reread.PerFrameFunctionalGroupsSequence
    ]
    # Label 1 on the four source slices it covers; label 2 (only on the interpolated
    # slice at 6 mm) keeps one empty frame, on a source slice.
    assert len(positions) == 5 and set(positions) == {2.0, 4.0, 8.0, 10.0}
    referenced = {
        str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for item in reread.PerFrameFunctionalGroupsSequence
    }
    assert referenced <= {str(h.SOPInstanceUID) for h in gap_volume.source_headers}
    seg = hd.seg.segread(path)
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(h.SOPInstanceUID) for h in gap_volume.source_headers],
        segment_numbers=[1, 2],
        combine_segments=False,
    )
    source = list(gap_volume.source_slices)
    assert np.array_equal(masks[..., 0].astype(bool), labels[source] == 1)
    assert not masks[..., 1].any()


def test_the_sr_says_which_positions_were_interpolated_and_draws_on_source_slices(
    gap_volume: Volume, tmp_path: Path
) -> None:
    labels = labels_largest_on_the_gap(gap_volume)
    seg = make_seg(gap_volume, labels)
    path = save_dataset(make_sr(seg, gap_volume, labels), tmp_path / "sr.dcm")

    report = read_report(path)
    [comment] = [
        item
        for item in walk(pydicom.dcmread(path))
        if item.get("ValueType") == "TEXT"
        and item.ConceptNameCodeSequence[0].CodeValue == codes.COMMENT.value
    ]
    assert comment.TextValue.startswith("1 missing slice(s) of the source series were interpolated")
    assert "(-5.00, -4.00, 6.00) mm (slice index 4 of 7)" in comment.TextValue
    [planar] = report.get_planar_roi_measurement_groups()
    region = planar.roi
    assert region is not None
    (image,) = region.ContentSequence
    # The largest cross-section is on the interpolated slice; the outline is drawn on the
    # largest source slice instead (z 1, 2, 4, 5 are equal: the first, z 1).
    assert image.referenced_sop_instance_uid == gap_volume.source_headers[1].SOPInstanceUID
    library = [
        item
        for item in walk(pydicom.dcmread(path))
        if item.get("ValueType") == "IMAGE" and "ReferencedSOPSequence" in item
    ]
    referenced = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in library}
    assert referenced - {str(seg.SOPInstanceUID)} == {
        str(h.SOPInstanceUID) for h in gap_volume.source_headers
    }


def test_findings_count_interpolated_voxels_but_reference_only_source_slices(
    gap_volume: Volume,
) -> None:
    labels = labels_largest_on_the_gap(gap_volume)

    lung, other = segment_findings(gap_volume, labels, TWO_LUNGS)

    assert lung.voxels == int((labels == 1).sum())
    assert lung.slices == (1, 2, 4, 5)
    assert lung.key_slice is not None and lung.key_slice.index in lung.slices
    # Found only on the interpolated slice: counted, but nowhere to draw it.
    assert other.voxels == 2 and other.slices == () and other.key_slice is None


def test_secondary_captures_show_source_slices_only(gap_volume: Volume) -> None:
    labels = np.zeros(gap_volume.shape, dtype=np.uint8)
    findings = segment_findings(gap_volume, labels, TWO_LUNGS)
    series_uid = str(hd.UID())

    images = build_sc_images(
        gap_volume,
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

    # Nothing found: the middle slice (z 3) is interpolated, so its neighbour is shown.
    [(index, image)] = images
    assert index != 3 and gap_volume.slice_header(index) is not None
    header = gap_volume.slice_header(index)
    assert header is not None
    assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID

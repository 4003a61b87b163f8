"""SEG encodings: BINARY and LABELMAP, the empty-frame policies, compressed transfer syntaxes.

Every variant must read back (highdicom) to exactly the label map that was encoded.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from core.output_profiles import EmptyFrames
from inference.volume import Volume
from inference.writers import save_dataset
from inference.writers.seg import SegmentationType
from tests.support.small_ct import (
    COLUMNS,
    ROWS,
    SLICES,
    lung_labels,
    make_seg,
    read_masks,
    small_ct,
)

LABEL_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


#: JPEG 2000 encoders refuse images under 32 pixels along both dimensions.
LARGE = 40


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    return small_ct(tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def large_volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    return small_ct(tmp_path_factory.mktemp("ct"), rows=LARGE, columns=LARGE)


def labelmap_pixels(path: Path, volume: Volume) -> npt.NDArray[np.integer]:
    """The label map a LABELMAP SEG holds, on the volume's slices (0 where no frame)."""
    seg = hd.seg.segread(path)
    sources = [str(h.SOPInstanceUID) for h in volume.source_headers]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sources, combine_segments=True, skip_overlap_checks=True
    )
    return np.asarray(pixels)


def frame_segments(path: Path) -> list[int]:
    """The segment number of each frame of a BINARY SEG, in frame order."""
    dataset = pydicom.dcmread(path)
    return [
        int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for frame in dataset.PerFrameFunctionalGroupsSequence
    ]


def test_a_labelmap_seg_holds_segment_numbers_and_reads_back_exactly(
    volume: Volume, tmp_path: Path
) -> None:
    labels = lung_labels()
    path = save_dataset(make_seg(volume, labels, segmentation_type="labelmap"), tmp_path / "s.dcm")

    reread = pydicom.dcmread(path)
    assert reread.SOPClassUID == LABEL_MAP_STORAGE
    assert reread.SegmentationType == "LABELMAP"
    assert reread.BitsAllocated == 8
    # One frame per slice with any label: slices 1 to 4.
    assert reread.NumberOfFrames == 4
    assert np.array_equal(labelmap_pixels(path, volume), labels)
    segments = [(int(s.SegmentNumber), s.SegmentLabel) for s in reread.SegmentSequence]
    # Pixel value 0 is background without a segment of its own (OHIF 3.13 would
    # otherwise shift every segment's colour by one; see _drop_background_segment).
    assert segments == [(1, "Right lung"), (2, "Left lung")]
    assert hd.seg.segread(path).get_segment_numbers() == [1, 2]


@pytest.mark.parametrize(
    ("empty_frames", "expected"),
    [
        # Frames only where a segment is present, plus one for the empty segment 1.
        ("one-per-segment", [2, 2, 1]),
        # Frames only where a segment is present: segment 1 has none.
        ("omit", [2, 2]),
        # Every slice, for every segment.
        ("all", [1] * SLICES + [2] * SLICES),
    ],
)
def test_empty_frames_are_kept_or_left_out_as_the_profile_says(
    volume: Volume, tmp_path: Path, empty_frames: EmptyFrames, expected: list[int]
) -> None:
    labels = lung_labels()
    labels[labels == 1] = 0
    seg = make_seg(volume, labels, empty_frames=empty_frames)
    path = save_dataset(seg, tmp_path / "seg.dcm")

    assert sorted(frame_segments(path)) == sorted(expected)
    masks = read_masks(path, volume, 2)
    assert not masks[..., 0].any()
    assert np.array_equal(masks[..., 1], labels == 2)


@pytest.mark.parametrize(("empty_frames", "frames"), [("omit", 4), ("all", SLICES)])
def test_a_labelmap_keeps_every_slice_only_when_asked(
    volume: Volume, tmp_path: Path, empty_frames: EmptyFrames, frames: int
) -> None:
    labels = lung_labels()
    seg = make_seg(volume, labels, segmentation_type="labelmap", empty_frames=empty_frames)
    path = save_dataset(seg, tmp_path / "seg.dcm")

    assert pydicom.dcmread(path).NumberOfFrames == frames
    assert np.array_equal(labelmap_pixels(path, volume), labels)


@pytest.mark.parametrize("segmentation_type", ["binary", "labelmap"])
def test_with_nothing_found_a_seg_still_has_a_frame_and_references_every_slice(
    volume: Volume, tmp_path: Path, segmentation_type: SegmentationType
) -> None:
    labels = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint8)
    seg = make_seg(volume, labels, segmentation_type=segmentation_type, empty_frames="omit")
    path = save_dataset(seg, tmp_path / "seg.dcm")

    reread = pydicom.dcmread(path)
    assert reread.NumberOfFrames == (2 if segmentation_type == "binary" else 1)
    assert len(reread.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == SLICES


@pytest.mark.parametrize(
    ("segmentation_type", "syntax"),
    [
        ("binary", JPEG2000Lossless),
        ("labelmap", RLELossless),
        ("labelmap", JPEGLSLossless),
        ("labelmap", JPEG2000Lossless),
    ],
)
def test_compressed_segs_read_back_exactly_with_an_empty_segment_too(
    large_volume: Volume, tmp_path: Path, segmentation_type: SegmentationType, syntax: str
) -> None:
    volume = large_volume
    labels = lung_labels(LARGE, LARGE)
    labels[labels == 1] = 0  # the BINARY SEG adds an encoded empty frame for segment 1
    seg = make_seg(volume, labels, segmentation_type=segmentation_type, transfer_syntax_uid=syntax)
    path = save_dataset(seg, tmp_path / "seg.dcm")

    reread = pydicom.dcmread(path)
    assert reread.file_meta.TransferSyntaxUID == syntax
    if segmentation_type == "binary":
        assert reread.SOPClassUID == SEGMENTATION_STORAGE
        assert sorted(frame_segments(path)) == [1, 2, 2]
        masks = read_masks(path, volume, 2)
        assert not masks[..., 0].any()
        assert np.array_equal(masks[..., 1], labels == 2)
    else:
        assert np.array_equal(labelmap_pixels(path, volume), labels)


def test_a_binary_seg_cannot_be_written_in_a_byte_oriented_compression(volume: Volume) -> None:
    with pytest.raises(ValueError, match="not compatible with the BINARY segmentation type"):
        make_seg(volume, lung_labels(), transfer_syntax_uid=RLELossless)

"""A label map on a :class:`~inference.volume.Volume` as a DICOM Segmentation.

Implements the Segmentation IOD (PS3.3 A.51, Segmentation Image Module C.8.20.2) through
highdicom, as a BINARY Segmentation (one bit per pixel, a frame per segment and slice) or
a Label Map Segmentation (SOP class 1.2.840.10008.5.1.4.1.1.66.7: a frame per slice whose
pixel values are segment numbers): one segment per manifest label, in label-value order
(segment *k* is the *k*-th smallest label value), each with its label, SNOMED CT category
and type, the recommended display colour (CIELab, from the manifest's RGB), algorithm
type AUTOMATIC and the algorithm identification (manifest name, version, family; backend
and precision as parameters). Frames reference the true source SOP instances and carry
their positions, so the segmentation overlays the series exactly. pacs-ai is named in the
Contributing Equipment Sequence as the processing equipment (IHE AI Results).

Frame of Reference: highdicom is given copies of the source headers carrying
:attr:`Volume.frame_of_reference_uid` (see the policy in :mod:`inference.volume`); the
source files are never touched. A projection radiograph (:mod:`inference.projection`)
has none: its SEG has no Frame of Reference and no plane positions (one frame per
segment on the one image), and Patient Orientation copied from the film.

Source images and frames: the SEG has frames only on real source images. Slices the
loader interpolated over missing slices (:attr:`Volume.interpolated_slices`) get none
(the labels there still count in the SR's volumes). On an enhanced multi-frame source
the pixel array goes to highdicom in the source's frame order, so each SEG frame
references its source frame (Derivation Image / Source Image Sequence with Referenced
Frame Number, PS3.3 C.7.6.16.2.6); highdicom reads the source's orientation and pixel
measures from its shared functional groups, which the header copy is given
(:func:`inference.frames.with_shared_geometry`).

Empty frames (``empty_frames``, :data:`core.output_profiles.EmptyFrames`): by default
(``one-per-segment``) a label the model did not find keeps its segment (numbering stays
the manifest's) with exactly one all-zero frame, at the first slice: a segment without
any frame is legal DICOM, but some deployed viewers (OHIF 3.7, for one) hang on it, and
one empty frame costs ``rows x columns / 8`` bytes; other labels get frames only where
they are present. ``omit`` leaves every empty frame out, ``all`` keeps a frame for every
slice (and segment). A LABELMAP has no per-segment frames: ``all`` keeps every slice, the
others only slices with some label. When no label was found at all, the SEG still has
frames (at least one is required): one empty frame per segment (BINARY) or one empty
frame (LABELMAP) at the first slice, unless ``all``.

Compression: any transfer syntax highdicom encodes, lossless (JPEG 2000 for BINARY;
RLE, JPEG-LS or JPEG 2000 for LABELMAP). Frames added for empty segments are encoded in
the same transfer syntax.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Literal

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.encaps import encapsulate, generate_frames
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from core.errors import InvalidInputError
from core.output_profiles import EmptyFrames
from inference.codes import code_from_spec
from inference.frames import is_multiframe
from inference.volume import Volume
from inference.writers import (
    MANUFACTURER,
    STAGE,
    device_observer_uid,
    encoded_slices,
    headers_in_frame,
    ordered_labels,
    processing_equipment,
    series_description,
    software_versions,
    strict_writing,
    tracked_source_uid,
    tracking_identifier,
    tracking_uid,
)
from inference.writers.findings import SegmentFinding, segment_findings
from inference.writers.identity import ResultIdentity
from models.manifest import ModelManifest

logger = logging.getLogger(__name__)

_REFERENCED_SEGMENT_NUMBER = Tag(0x0062, 0x000B)
#: Content Label (0070,0080) is a CS: upper case, digits, space, underscore; 16 chars.
_CONTENT_LABEL = "AI_SEGMENTATION"


def _segment_map(
    labels: npt.NDArray[np.integer], manifest: ModelManifest
) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """The label map with segment numbers as values (no copy when they already are)."""
    values = [label.value for label in ordered_labels(manifest)]
    dtype = np.uint8 if len(values) < 256 else np.uint16
    if values == list(range(1, len(values) + 1)):
        # Label values are segment numbers already: at most a narrowing copy (undeclared
        # values, which could overflow it, were refused already).
        return labels.astype(dtype, copy=False)  # type: ignore[return-value]
    # Undeclared values were refused already, so max(values) bounds the map.
    lookup = np.zeros(max(values) + 1, dtype=dtype)
    for number, value in enumerate(values, start=1):
        lookup[value] = number
    return lookup[labels]  # type: ignore[no-any-return]


def _segment_descriptions(
    volume: Volume,
    manifest: ModelManifest,
    algorithm: hd.AlgorithmIdentificationSequence,
) -> list[hd.seg.SegmentDescription]:
    descriptions = []
    for number, label in enumerate(ordered_labels(manifest), start=1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label.name,
                segmented_property_category=code_from_spec(label.category),
                segmented_property_type=code_from_spec(label.type),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_id=tracking_identifier(label),
                tracking_uid=tracking_uid(
                    tracked_source_uid(volume), manifest, f"label-{label.value}"
                ),
                display_color=hd.color.CIELabColor.from_rgb(*label.color),
            )
        )
    return descriptions


def _first_plane(volume: Volume, z: int) -> list[hd.PlanePositionSequence]:
    """The plane position of slice ``z`` (where a SEG on a multi-frame image puts its one
    frame when nothing was found)."""
    position = volume.affine @ np.array([0.0, 0.0, float(z), 1.0])
    return [
        hd.PlanePositionSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            image_position=[float(v) for v in position[:3]],
        )
    ]


def _drop_background_segment(seg: hd.seg.Segmentation) -> None:
    """Remove the *Background* segment (number 0) highdicom adds to a Label Map SEG.

    Describing pixel value 0 is optional (PS3.3 C.8.20.2.1: 0 is background unless a
    segment says otherwise), and OHIF 3.13 takes the segments' colours by their position
    in the Segment Sequence: with the background item first, every label was drawn in
    the colour of the one before it (the right lung black, the left lung red).
    """
    items = [item for item in seg.SegmentSequence if int(item.SegmentNumber) != 0]
    seg.SegmentSequence = items


def _add_empty_frames(seg: hd.seg.Segmentation, segments: Sequence[int]) -> hd.seg.Segmentation:
    """Give each of ``segments`` (which have no frame) one all-zero frame at frame 1's plane.

    The per-frame item is frame 1's (same plane position and source image reference) with
    the segment number changed, in the Segment Identification and the Dimension Index
    Values; the pixel data grows by one zero frame: bit-packed in a native transfer
    syntax (PS3.5 8.1.1, BINARY), or one more encoded fragment (PS3.5 A.4) otherwise.
    """
    pointers = [item.DimensionIndexPointer for item in seg.DimensionIndexSequence]
    segment_axis = pointers.index(_REFERENCED_SEGMENT_NUMBER)
    frames = int(seg.NumberOfFrames)
    template = seg.PerFrameFunctionalGroupsSequence[0]
    for number in segments:
        item = copy.deepcopy(template)
        item.SegmentIdentificationSequence[0].ReferencedSegmentNumber = number
        index_values = list(item.FrameContentSequence[0].DimensionIndexValues)
        index_values[segment_axis] = number
        item.FrameContentSequence[0].DimensionIndexValues = index_values
        seg.PerFrameFunctionalGroupsSequence.append(item)
    syntax = seg.file_meta.TransferSyntaxUID
    if syntax.is_encapsulated:
        encoded = list(generate_frames(seg.PixelData, number_of_frames=frames))
        empty = hd.frame.encode_frame(
            np.zeros((int(seg.Rows), int(seg.Columns)), dtype=np.uint8),
            transfer_syntax_uid=syntax,
            bits_allocated=int(seg.BitsAllocated),
            bits_stored=int(seg.BitsStored),
            photometric_interpretation=str(seg.PhotometricInterpretation),
            pixel_representation=0,
        )
        seg.PixelData = encapsulate([*encoded, *[empty] * len(segments)])
    else:
        bits_per_frame = int(seg.Rows) * int(seg.Columns)
        # highdicom pads odd-length pixel data with one byte; the frames end at `used`.
        used = (frames * bits_per_frame + 7) // 8
        pixel_data = bytes(seg.PixelData[:used])
        pixel_data += bytes(((frames + len(segments)) * bits_per_frame + 7) // 8 - used)
        if len(pixel_data) % 2:
            pixel_data += b"\x00"
        seg.PixelData = pixel_data
    seg.NumberOfFrames = frames + len(segments)
    # Rebuild highdicom's frame look-up tables for the frames added.
    return hd.seg.Segmentation.from_dataset(seg, copy=False)


SegmentationType = Literal["binary", "labelmap"]


def _checked_labels(
    volume: Volume, labels: npt.NDArray[np.integer], manifest: ModelManifest
) -> npt.NDArray[np.integer]:
    """``labels`` if a SEG can encode them on ``volume`` (a boolean mask as uint8).

    Raises:
        InvalidInputError: (``stage="write"``) the map does not fit the volume, is not of
            an unsigned integer type, or the manifest declares no labels.
    """
    if labels.shape != volume.shape:
        raise InvalidInputError(
            f"label map shape {labels.shape} differs from the volume's {volume.shape} "
            "(both [z, y, x]); map the labels back onto the source grid first",
            stage=STAGE,
        )
    if labels.dtype.kind not in "ub":
        raise InvalidInputError(
            f"label map dtype {labels.dtype} is not an unsigned integer type (uint8/uint16)",
            stage=STAGE,
        )
    if not manifest.labels:
        raise InvalidInputError(
            f"model {manifest.id} declares no labels; it cannot produce a SEG", stage=STAGE
        )
    return labels.view(np.uint8) if labels.dtype == np.bool_ else labels


def build_seg(
    volume: Volume,
    labels: npt.NDArray[np.integer],
    manifest: ModelManifest,
    *,
    identity: ResultIdentity,
    segmentation_type: SegmentationType = "binary",
    empty_frames: EmptyFrames = "one-per-segment",
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    findings: Sequence[SegmentFinding] | None = None,
) -> hd.seg.Segmentation:
    """Encode ``labels`` (``[z, y, x]``, aligned with ``volume.voxels``) as a SEG.

    Implements PS3.3 A.51 (Segmentation IOD; A.51.5 for the Label Map Segmentation SOP
    class) with the Segmentation Image Module (C.8.20.2), Multi-frame Functional Groups
    (C.7.6.16) and Enhanced General Equipment (C.7.5.2). ``identity`` names the object
    (:class:`~inference.writers.identity.ResultIdentity`): its Device Serial Number
    defaults to the model's Device Observer UID (the SR's), its Series Description to
    :func:`~inference.writers.series_description`'s, and its backend and precision, when
    given, become the Algorithm Parameters. ``findings``
    (:func:`~inference.writers.findings.segment_findings` of the same labels), when given,
    say which segments are empty without counting the labels again. See the module for
    ``empty_frames`` and the transfer syntaxes.

    Raises:
        InvalidInputError: (``stage="write"``) the label map does not fit the volume or
            holds values the manifest does not declare, or a value copied from the source
            does not conform (writing validation RAISE).
        ValueError: the transfer syntax cannot encode this segmentation type.
    """
    labels = _checked_labels(volume, labels, manifest)
    if findings is None:
        findings = segment_findings(volume, labels, manifest)  # refuses undeclared values
    # Frames only on source images (or frames): never on interpolated slices, which a
    # finding's slices never include.
    empty = [finding.number for finding in findings if not finding.slices]
    order = encoded_slices(volume)
    segment_labels = _segment_map(labels, manifest)
    if order != list(range(labels.shape[0])):
        segment_labels = segment_labels[order]
    parameters = {
        key: value
        for key, value in (("backend", identity.backend), ("precision", identity.precision))
        if value
    }
    headers = headers_in_frame(volume)
    serial = identity.device_serial_number or str(device_observer_uid(manifest))
    labelmap = segmentation_type == "labelmap"
    with strict_writing():
        algorithm = hd.AlgorithmIdentificationSequence(
            name=manifest.name,
            family=code_from_spec(manifest.family),
            version=manifest.version,
            source=MANUFACTURER,
            parameters=parameters or None,
        )
        descriptions = _segment_descriptions(volume, manifest, algorithm)
        # A SEG needs a frame: with nothing found, one plane is enough (every segment
        # then gets its one empty frame there); the other slices are still referenced.
        one_plane = len(empty) == len(descriptions) and empty_frames != "all"
        multiframe = is_multiframe(headers[0])
        try:
            seg = hd.seg.Segmentation(
                source_images=headers[:1] if one_plane and not multiframe else headers,
                pixel_array=segment_labels[:1] if one_plane else segment_labels,
                segmentation_type=(
                    hd.seg.SegmentationTypeValues.LABELMAP
                    if labelmap
                    else hd.seg.SegmentationTypeValues.BINARY
                ),
                segment_descriptions=descriptions,
                series_instance_uid=identity.series_instance_uid,
                series_number=identity.series_number,
                sop_instance_uid=identity.sop_instance_uid,
                instance_number=identity.instance_number,
                manufacturer=MANUFACTURER,
                manufacturer_model_name=manifest.name,
                software_versions=list(software_versions(manifest)),  # type: ignore[arg-type]
                device_serial_number=serial,
                content_description=f"{manifest.name} {manifest.version}"[:64],
                content_label=_CONTENT_LABEL,
                series_description=identity.description
                or series_description(manifest, "seg", volume.source_headers[0]),
                omit_empty_frames=not one_plane and empty_frames != "all",
                further_source_images=headers[1:] if one_plane and not multiframe else None,
                # One frame of a multi-frame source: highdicom finds it by its position.
                plane_positions=_first_plane(volume, order[0])
                if one_plane and multiframe
                else None,
                transfer_syntax_uid=transfer_syntax_uid,
                contributing_equipment=[processing_equipment(manifest)],
            )
        except ValueError as exc:
            if "transfer syntax" in str(exc).lower():
                raise
            raise InvalidInputError(f"cannot encode the segmentation: {exc}", stage=STAGE) from exc
        if empty and not one_plane and not labelmap and empty_frames == "one-per-segment":
            seg = _add_empty_frames(seg, empty)
        if labelmap:
            _drop_background_segment(seg)
        if volume.projection is not None:
            # General Image (PS3.3 C.7.6.1): Patient Orientation is Type 2C for images
            # without the Image Plane module, as a SEG on a radiograph is; the source's.
            orientation = volume.source_headers[0].get("PatientOrientation")
            seg.PatientOrientation = orientation if orientation and len(orientation) == 2 else ""
            # Pixel Measures without Slice Thickness (legal without a Frame of Reference,
            # C.7.6.16.2.1) is what highdicom writes for a radiograph with Pixel Spacing,
            # and what its reader refuses; the SEG overlays its one source image pixel
            # for pixel and needs none.
            shared = seg.SharedFunctionalGroupsSequence[0]
            if "PixelMeasuresSequence" in shared and "FrameOfReferenceUID" not in seg:
                del shared.PixelMeasuresSequence
    if empty:
        names = [descriptions[n - 1].SegmentLabel for n in empty]
        logger.info(
            "SEG %s: segment(s) %s (%s) empty (empty frames: %s)",
            identity.sop_instance_uid,
            empty,
            ", ".join(names),
            empty_frames,
        )
    return seg

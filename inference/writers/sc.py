"""Secondary Capture images with the segmentation burned in, for viewers without SEG support.

One RGB Secondary Capture image (PS3.3 A.8.1, SOP class 1.2.840.10008.5.1.4.1.1.7) per
chosen source slice: the slice in its window (the source's first Window Center / Width,
else the 1st to 99th percentile of the volume), each segment's outline drawn in its
recommended colour (a rim inside the segment, so the image under it stays visible), a red
banner **NOT FOR DIAGNOSIS - AI RESULT** with the model's name and version in a black
band above the image, and in a band below it a legend of the segments on the slice with
their volumes (the bands never cover the image). The slices
are those with a finding, evenly thinned to ``max_images`` (always the key slice of each
finding among them, of the largest findings first when there are more findings than
images); with no finding, the middle slice, saying so.

Each image references its source slice (Source Image Sequence), says Burned In Annotation
YES and carries the warning in Image Comments too; pacs-ai is named in the Contributing
Equipment Sequence. Small matrices are enlarged (nearest neighbour, whole multiples) to at
least 512 pixels across so that the text stays legible; Pixel Spacing is scaled to match.
Text is drawn with Pillow's built-in font (no font files needed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from core.errors import InvalidInputError
from inference.volume import SliceSource, Volume
from inference.writers import (
    MANUFACTURER,
    STAGE,
    device_observer_uid,
    processing_equipment,
    series_description,
    software_versions,
    strict_writing,
    writable_source,
)
from inference.writers.contours import rim
from inference.writers.findings import SegmentFinding, finding_size, size_text
from inference.writers.identity import ResultIdentity
from models.manifest import ModelManifest

#: The annotation burned into every image (and written to Image Comments).
WARNING = "NOT FOR DIAGNOSIS - AI RESULT"
#: Colour of the warning banner's text (RGB).
WARNING_COLOR = (255, 48, 48)
#: Images are enlarged to at least this many pixels across.
MIN_WIDTH = 512
#: Purpose of Reference of the source slice, CID 7202 (PS3.16).
_SOURCE_PURPOSE = hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")


def choose_slices(
    findings: Sequence[SegmentFinding], slice_count: int, max_images: int
) -> list[int]:
    """The slice indices to capture, in slice order (see the module).

    Raises:
        ValueError: ``slice_count`` is not positive.
    """
    if slice_count < 1:
        raise ValueError("a volume has at least one slice")
    with_findings = sorted({index for finding in findings for index in finding.slices})
    if not with_findings:
        return [slice_count // 2]
    if max_images == 0 or len(with_findings) <= max_images:
        return with_findings
    # Each finding's key slice, the largest findings first while there is room for them.
    by_size = sorted(findings, key=lambda f: f.voxels, reverse=True)
    keys = {f.key_slice.index for f in by_size if f.key_slice is not None}
    if len(keys) > max_images:
        ordered = [f.key_slice.index for f in by_size if f.key_slice is not None]
        keys = set(list(dict.fromkeys(ordered))[:max_images])
    positions = np.linspace(0, len(with_findings) - 1, num=max_images)
    chosen = {with_findings[round(p)] for p in positions} | keys
    # The key slices may push the count over: drop the evenly chosen ones nearest them.
    while len(chosen) > max_images:
        spare = sorted(chosen - keys)
        nearest = min(spare, key=lambda s: min(abs(s - k) for k in keys))
        chosen.discard(nearest)
    return sorted(chosen)


def window_of(volume: Volume) -> tuple[float, float]:
    """(lower, upper) display bounds in modality units: the source's first window, else
    the 1st to 99th percentile of (every sixteenth of) the slices."""
    header = volume.source_headers[0]
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    if center is not None and width is not None:
        first_center = float(center[0] if isinstance(center, Sequence) else center)
        first_width = float(width[0] if isinstance(width, Sequence) else width)
        if first_width > 1:
            projection = volume.projection
            if projection is not None and projection.inverted:
                # The window is on the stored MONOCHROME1 values; the volume's are inverted.
                first_center = sum(projection.value_range) - first_center
            return first_center - first_width / 2, first_center + first_width / 2
    low, high = np.percentile(volume.voxels[:: max(1, volume.shape[0] // 16)], [1.0, 99.0])
    return float(low), float(max(high, low + 1.0))


def _orientation_letters(direction: npt.NDArray[np.float64]) -> str:
    """Patient Orientation letters (PS3.3 C.7.6.1.1.1) of a direction in LPS coordinates."""
    letters = ""
    for component, (positive, negative) in sorted(
        zip(direction, (("L", "R"), ("P", "A"), ("H", "F")), strict=True),
        key=lambda pair: -abs(pair[0]),
    ):
        if abs(component) > 1e-3:
            letters += positive if component > 0 else negative
    return letters


@dataclass(frozen=True)
class RenderedSlice:
    """A slice as the Secondary Capture shows it."""

    #: RGB, ``(rows, columns, 3)``: the banner, the enlarged slice, the legend.
    pixels: npt.NDArray[np.uint8]
    #: How many times the slice was enlarged.
    scale: int
    #: The row where the slice begins (below the banner).
    top: int


def render_slice(
    volume: Volume,
    labels: npt.NDArray[np.integer],
    findings: Sequence[SegmentFinding],
    manifest: ModelManifest,
    *,
    index: int,
    window: tuple[float, float],
    caption: str,
) -> RenderedSlice:
    """Slice ``index`` with outlines, between the banner and the legend (never over it).

    The bands above and below have the same height on every slice of a volume, so that
    all images of the series have the same size.
    """
    columns = volume.shape[2]
    scale = max(1, math.ceil(MIN_WIDTH / columns))
    low, high = window
    gray = np.clip((volume.voxels[index] - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
    gray = np.kron(gray, np.ones((scale, scale), dtype=np.uint8)) if scale > 1 else gray
    plane = labels[index]
    present = [f for f in findings if f.present]
    on_slice = [f for f in present if bool(np.any(plane == f.label.value))]
    width = gray.shape[1]
    size = max(12, width // 32)
    line = size + size // 2
    top = 2 * line
    bottom = line * (max(1, len(present)) + 1) + size // 2
    canvas = np.zeros((top + gray.shape[0] + bottom, width, 3), dtype=np.uint8)
    view = canvas[top : top + gray.shape[0]]
    view[...] = gray[:, :, None]
    for finding in on_slice:
        mask = plane == finding.label.value
        if scale > 1:
            mask = np.kron(mask, np.ones((scale, scale), dtype=bool))
        view[rim(mask, width=max(2, scale))] = finding.label.color
    image = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    small = ImageFont.load_default(size=max(10, size * 3 // 4))
    draw.text((size // 2, size // 4), WARNING, fill=WARNING_COLOR, font=font, stroke_width=1)
    model = f"{manifest.name} {manifest.version}"
    draw.text((size // 2, line + size // 8), model, fill=(255, 255, 255), font=small)
    legend = [
        (
            finding.label.color,
            f"{finding.label.name}: {size_text(volume, finding_size(volume, finding))}",
        )
        for finding in on_slice
    ] or [((160, 160, 160), "no finding on this slice" if present else "no finding")]
    y = top + gray.shape[0] + size // 4
    for color, text in legend:
        draw.rectangle((size // 2, y + 2, size // 2 + size - 4, y + size - 2), fill=color)
        draw.text((size * 2, y), text, fill=(255, 255, 255), font=small)
        y += line
    draw.text((size // 2, y), caption, fill=(200, 200, 200), font=small)
    return RenderedSlice(pixels=np.asarray(image, dtype=np.uint8), scale=scale, top=top)


def build_sc_images(
    volume: Volume,
    labels: npt.NDArray[np.integer],
    findings: Sequence[SegmentFinding],
    manifest: ModelManifest,
    *,
    identity: Callable[[int], ResultIdentity],
    max_images: int = 32,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    skip: Callable[[int], bool] = lambda index: False,
) -> list[tuple[int, hd.sc.SCImage]]:
    """Secondary Capture images of the slices with findings (see the module).

    Returns ``(slice index, image)`` pairs in slice order, leaving out the slices for
    which ``skip(index)`` is true (written already). ``identity(k)`` is the identity of
    the image of slice ``k`` (:class:`~inference.writers.identity.ResultIdentity`: the
    series' UID, number and description, the image's SOP Instance UID and Instance
    Number), so that an image is the same whichever other slices a destination gets and
    a re-run replaces rather than adds images. Its description (the Series Description)
    defaults to :func:`~inference.writers.series_description`'s, its Device Serial
    Number to the model's Device Observer UID. Implements PS3.3 A.8.1
    (Secondary Capture Image IOD) with the SC Equipment (C.8.6.1) and SC Image (C.8.6.2)
    modules.

    Raises:
        InvalidInputError: (``stage="write"``) a value copied from the source does not
            conform (writing validation RAISE).
    """
    # Findings are on source slices; the middle slice shown when there is none may have
    # been interpolated: the nearest source slice then.
    real = volume.source_slices
    slices = [
        index if volume.slice_source(index) is not None else min(real, key=lambda z: abs(z - index))
        for index in choose_slices(findings, volume.shape[0], max_images)
    ]
    window = window_of(volume)
    orientation = _patient_orientation(volume)
    # A radiograph without pixel spacing gets none (rather than an invented 1 mm).
    calibrated = volume.projection is None or volume.projection.calibrated
    images = []
    with strict_writing():
        for index in slices:
            if skip(index):
                continue
            caption = (
                f"slice {index + 1} of {volume.shape[0]}"
                if volume.projection is None
                else f"radiograph, {volume.modality} {volume.shape[2]} x {volume.shape[1]}"
            )
            rendered = render_slice(
                volume, labels, findings, manifest, index=index, window=window, caption=caption
            )
            scale = rendered.scale
            source = volume.source_headers[source_of(volume, index).header_index]
            named = identity(index)
            try:
                image = hd.sc.SCImage.from_ref_dataset(
                    ref_dataset=writable_source(source),
                    pixel_array=rendered.pixels,
                    # JPEG 2000 Lossless stores RGB with its reversible colour transform.
                    photometric_interpretation=(
                        hd.PhotometricInterpretationValues.YBR_RCT
                        if transfer_syntax_uid == JPEG2000Lossless
                        else hd.PhotometricInterpretationValues.RGB
                    ),
                    bits_allocated=8,
                    coordinate_system=hd.CoordinateSystemNames.PATIENT,
                    series_instance_uid=named.series_instance_uid,
                    series_number=named.series_number,
                    sop_instance_uid=named.sop_instance_uid,
                    instance_number=named.instance_number,
                    manufacturer=MANUFACTURER,
                    # (row, column) spacing in mm; highdicom annotates it as ints.
                    pixel_spacing=(
                        (volume.spacing[1] / scale, volume.spacing[0] / scale)  # type: ignore[arg-type]
                        if calibrated
                        else None
                    ),
                    # highdicom requires an orientation; emptied below where there is none.
                    patient_orientation=orientation or ("L", "F"),
                    transfer_syntax_uid=transfer_syntax_uid,
                    contributing_equipment=[processing_equipment(manifest)],
                    series_description=named.description
                    or series_description(manifest, "sc", source),
                    manufacturer_model_name=manifest.name,
                    software_versions=list(software_versions(manifest)),
                    device_serial_number=named.device_serial_number
                    or str(device_observer_uid(manifest)),
                )
            except ValueError as exc:
                raise InvalidInputError(
                    f"cannot encode the secondary capture: {exc}", stage=STAGE
                ) from exc
            if orientation is None:
                # Type 2C (PS3.3 C.7.6.1): empty, unknown, rather than invented.
                image.PatientOrientation = []
            _describe(image, source, manifest, source_of(volume, index).frame_number)
            images.append((index, image))
    return images


def _patient_orientation(volume: Volume) -> tuple[str, str] | None:
    """Patient Orientation (PS3.3 C.7.6.1.1.1) of the images: from the volume's direction,
    or a radiograph's own (``None`` when it has none: it has no direction to derive one
    from)."""
    if volume.projection is None:
        return (
            _orientation_letters(volume.direction[:, 0]),
            _orientation_letters(volume.direction[:, 1]),
        )
    value = volume.source_headers[0].get("PatientOrientation")
    if value is None or len(value) != 2 or not all(value):
        return None
    return (str(value[0]), str(value[1]))


def source_of(volume: Volume, index: int) -> SliceSource:
    """Where slice ``index`` was read from (it must not be interpolated)."""
    source = volume.slice_source(index)
    if source is None:
        raise ValueError(f"slice {index} was interpolated: it has no source image")
    return source


def _describe(
    image: hd.sc.SCImage, source: Dataset, manifest: ModelManifest, frame_number: int | None
) -> None:
    """General Image attributes that say what the image is and where it comes from
    (a frame of a multi-frame source by its Referenced Frame Number, PS3.3 C.7.6.1.1.2)."""
    image.BurnedInAnnotation = "YES"
    # Rendered here, not captured from a scanner's video interface.
    image.ConversionType = "WSD"
    # General Series: Laterality is required for paired body parts; say which part it is.
    if source.get("BodyPartExamined"):
        image.BodyPartExamined = source.BodyPartExamined
    else:
        image.Laterality = ""
    if "Laterality" in source:
        # As the source has it (radiographs of a body part dciodvfy does not know, such
        # as THORAX, need it): the side of a paired part, or empty for unknown.
        image.Laterality = source.Laterality
    image.ImageComments = f"{WARNING}: {manifest.name} {manifest.version}"
    image.DerivationDescription = (
        f"Segmentation outlines of {manifest.name} {manifest.version} burned into the source "
        "image; not for diagnosis"
    )[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number is not None:
        reference.ReferencedFrameNumber = frame_number
    reference.PurposeOfReferenceCodeSequence = [_SOURCE_PURPOSE]
    image.SourceImageSequence = [reference]
    if "FrameOfReferenceUID" in image:
        del image.FrameOfReferenceUID

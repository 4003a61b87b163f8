"""The TID 1600 Image Library of a Measurement Report, with shared descriptors said once.

highdicom's :class:`~highdicom.sr.ImageLibrary` repeats the whole TID 1602 descriptor set
(modality, frame of reference, rows, columns, pixel spacing, slice thickness, position,
orientation: 14 items) under every image. For a 275-slice CT that is 3,900 content items,
and building, copying and encoding them was most of a study's write time (about 10 s of
12.5 s on the LIDC CT, 2 CPU cores).

PS3.16 TID 1600 lets an Image Library Group carry descriptors that hold for all its
entries (row 3, HAS ACQ CONTEXT TID 1602), each entry keeping only its own (TID 1601
row 2). So images are grouped by everything but their position; a group states modality,
frame of reference, matrix, spacing, thickness and orientation once, and each entry only
its Image Position (Patient) X/Y/Z: about 4 items per image instead of 15. A multi-frame
source is listed frame by frame, each entry referencing its frame (Referenced Frame
Number) with that frame's position. The entries of a group are encoded directly into
their bytes, as pydicom would encode them (hundreds of them, built as datasets, were
still most of the time an SR took). Images that are
not cross-sectional (or lack the attributes) are left to highdicom's own library groups,
except projection radiographs (CR, DX, MG, ...): highdicom requires Patient Orientation
and Imager Pixel Spacing of them, which real radiographs often lack (a Secondary Capture of
a chest film has neither), so their entries are built here, TID 1602 and TID 1603
descriptors each only where the image has the attribute.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DS

from inference import codes as pacs_codes
from inference.writers.encoding import (
    element,
    encode_items,
    item,
    mark_encoded,
    raw_sequence,
    text,
)

_POSITION = (
    codes.DCM.ImagePositionPatientX,
    codes.DCM.ImagePositionPatientY,
    codes.DCM.ImagePositionPatientZ,
)
_CROSS_SECTIONAL = ("CT", "MR", "PT")
#: Modalities of projection radiography (highdicom's list, PS3.16 TID 1603).
_PROJECTION = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")
_PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "Pixels")
#: What the members of a group have in common: every TID 1604 descriptor but position.
_SHARED_REQUIRED = (
    "SOPClassUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "ImageOrientationPatient",
)
_SHARED_OPTIONAL = ("SpacingBetweenSlices",)
_ACQ_CONTEXT = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
# The attributes of an entry (PS3.3 C.17.3, C.18), in the tag order they are encoded in.
_REFERENCED_SOP_CLASS = 0x00081150
_REFERENCED_SOP_INSTANCE = 0x00081155
_REFERENCED_FRAME = 0x00081160
_REFERENCED_SOP = 0x00081199
_UNITS = 0x004008EA
_RELATIONSHIP_TYPE = 0x0040A010
_VALUE_TYPE = 0x0040A040
_CONCEPT_NAME = 0x0040A043
_FLOATING_POINT_VALUE = 0x0040A161
_MEASURED_VALUE = 0x0040A300
_NUMERIC_VALUE = 0x0040A30A
_CONTENT_SEQUENCE = 0x0040A730


def image_library(images: Sequence[Dataset], frame_numbers: Sequence[int | None] = ()) -> Dataset:
    """The Image Library container (TID 1600) listing ``images``.

    ``frame_numbers``, when given, has one entry per image: for a frame of a multi-frame
    image (``images`` then holds its :func:`inference.frames.frame_view`), the frame
    number its entry references (TID 1601 row 1, Referenced Frame Number); ``None`` for
    a single-frame image.

    The container and its groups are plain datasets (highdicom's content item
    sequences take only highdicom's classes); the items of a group of cross-sectional
    images are encoded already (:class:`_Entries`), read by pydicom when accessed.

    Raises:
        ValueError: ``images`` is empty, or holds a dataset that is not an image.
    """
    if not images:
        raise ValueError("an Image Library needs at least one image")
    frames = dict(zip(map(id, images), frame_numbers, strict=False))
    groups: dict[tuple[str, ...], list[Dataset]] = {}
    projections: dict[tuple[str, str], list[Dataset]] = {}
    others: list[Dataset] = []
    for image in images:
        key = _group_key(image)
        if key is not None:
            groups.setdefault(key, []).append(image)
        elif str(image.get("Modality", "")) in _PROJECTION:
            frame = str(image.get("FrameOfReferenceUID", "") or "")
            projections.setdefault((str(image.Modality), frame), []).append(image)
        else:
            others.append(image)
    items: list[Dataset] = [_group(group, frames) for group in groups.values()]
    items.extend(_projection_group(frame, group) for (_, frame), group in projections.items())
    if others:
        # highdicom groups them by modality and frame of reference, each entry described whole.
        items.extend(hd.sr.ImageLibrary(others)[0].ContentSequence)
    return _container(codes.DCM.ImageLibrary, items)


def _container(name: Code, items: list[Dataset] | bytes) -> Dataset:
    """A CONTAINER content item (as highdicom makes it) holding ``items``: datasets, or
    items encoded already (:func:`~inference.writers.encoding.raw_sequence`)."""
    container = Dataset(
        dict(hd.sr.ContainerContentItem(name=name, relationship_type=_CONTAINS).items())
    )
    if isinstance(items, bytes):
        container[_CONTENT_SEQUENCE] = raw_sequence(_CONTENT_SEQUENCE, items)
        mark_encoded(container)
    else:
        container.ContentSequence = items
    return container


def _group_key(image: Dataset) -> tuple[str, ...] | None:
    """What an image shares with the rest of its group; ``None`` when not cross-sectional."""
    if image.get("Modality") not in _CROSS_SECTIONAL:
        return None
    if any(image.get(name) is None for name in (*_SHARED_REQUIRED, "ImagePositionPatient")):
        return None
    return tuple(str(image.get(name)) for name in _SHARED_REQUIRED + _SHARED_OPTIONAL)


def _group(images: list[Dataset], frames: dict[int, int | None]) -> Dataset:
    """One group: the first image's descriptors but its position, then each image's
    position (its entries encoded directly, :class:`_Entries`)."""
    descriptors = hd.sr.ImageLibraryEntryDescriptors(images[0])
    shared = encode_items(item for item in descriptors if not _is_position(item))
    entries = _Entries()
    return _container(
        codes.DCM.ImageLibraryGroup,
        shared + b"".join(entries.encode(image, frames.get(id(image))) for image in images),
    )


class _Entries:
    """TID 1601 entries encoded directly: the image (or frame) and its Image Position
    (Patient) X, Y, Z, each a NUM in mm, byte for byte as pydicom encodes highdicom's
    :class:`~highdicom.sr.ImageContentItem` with three
    :class:`~highdicom.sr.NumContentItem` (the tests compare them). A CT lists hundreds
    of images: built as datasets, they were most of the time an SR took to build and
    encode. Their values are checked with the rest of the SR when it is read back
    strictly (:mod:`inference.writers.strict_check`)."""

    def __init__(self) -> None:
        def coded(code: Code) -> bytes:
            return encode_items([hd.sr.CodedConcept.from_code(code)])

        self.head = (
            element(_RELATIONSHIP_TYPE, "CS", text(_CONTAINS.value))
            + element(_VALUE_TYPE, "CS", text("IMAGE"))
            + element(_CONCEPT_NAME, "SQ", coded(pacs_codes.SOURCE))
        )
        number = element(_RELATIONSHIP_TYPE, "CS", text(_ACQ_CONTEXT.value)) + element(
            _VALUE_TYPE, "CS", text("NUM")
        )
        self.numbers = [number + element(_CONCEPT_NAME, "SQ", coded(code)) for code in _POSITION]
        self.millimetre = element(_UNITS, "SQ", coded(codes.UCUM.Millimeter))

    def encode(self, image: Dataset, frame_number: int | None) -> bytes:
        reference = element(
            _REFERENCED_SOP_CLASS, "UI", text(str(image.SOPClassUID), b"\0")
        ) + element(_REFERENCED_SOP_INSTANCE, "UI", text(str(image.SOPInstanceUID), b"\0"))
        if frame_number is not None:
            reference += element(_REFERENCED_FRAME, "IS", text(str(frame_number)))
        numbers = b""
        for head, value in zip(self.numbers, image.ImagePositionPatient, strict=True):
            measured = self.millimetre
            if isinstance(value, float):
                measured += element(_FLOATING_POINT_VALUE, "FD", struct.pack("<d", value))
            measured += element(_NUMERIC_VALUE, "DS", text(_number_string(value)))
            numbers += item(head + element(_MEASURED_VALUE, "SQ", item(measured)))
        return item(
            element(_REFERENCED_SOP, "SQ", item(reference))
            + self.head
            + element(_CONTENT_SEQUENCE, "SQ", numbers)
        )


def _number_string(value: float) -> str:
    """A DS value as highdicom sets it (``DS(value, auto_format=True)``) and pydicom
    writes it (its original string, if any)."""
    number = DS(value, auto_format=True)
    return str(getattr(number, "original_string", number))


def _is_position(item: Dataset) -> bool:
    name = item.ConceptNameCodeSequence[0]
    return any(
        name.CodeValue == code.value and name.CodingSchemeDesignator == code.scheme_designator
        for code in _POSITION
    )


def _projection_group(frame_of_reference_uid: str, images: list[Dataset]) -> Dataset:
    """A group of projection radiographs (one modality and frame of reference, if any)."""
    items: list[Dataset] = []
    if frame_of_reference_uid:
        items.append(
            hd.sr.UIDRefContentItem(
                name=codes.DCM.FrameOfReferenceUID,
                value=frame_of_reference_uid,
                relationship_type=_ACQ_CONTEXT,
            )
        )
    items.extend(_projection_entry(image) for image in images)
    return _container(codes.DCM.ImageLibraryGroup, items)


def _projection_entry(image: Dataset) -> hd.sr.ImageContentItem:
    """TID 1601 entry of a projection radiograph: TID 1602 and TID 1603 descriptors, each
    only where the image has the attribute (all are conditional on it)."""
    entry = hd.sr.ImageContentItem(
        name=pacs_codes.SOURCE,
        referenced_sop_class_uid=image.SOPClassUID,
        referenced_sop_instance_uid=image.SOPInstanceUID,
        relationship_type=_CONTAINS,
    )
    modality = next(c for c in codes.cid29.concepts.values() if c.value == image.Modality)
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(
            name=codes.DCM.Modality, value=modality, relationship_type=_ACQ_CONTEXT
        )
    ]
    for name, value in (
        (codes.DCM.PixelDataRows, image.Rows),
        (codes.DCM.PixelDataColumns, image.Columns),
    ):
        items.append(
            hd.sr.NumContentItem(
                name=name, value=value, unit=_PIXELS, relationship_type=_ACQ_CONTEXT
            )
        )
    orientation = image.get("PatientOrientation")
    if orientation is not None and len(orientation) == 2 and all(orientation):
        for name, text in zip(
            (codes.DCM.PatientOrientationRow, codes.DCM.PatientOrientationColumn),
            orientation,
            strict=True,
        ):
            items.append(
                hd.sr.TextContentItem(name=name, value=str(text), relationship_type=_ACQ_CONTEXT)
            )
    spacing = _positive_spacing(image.get("ImagerPixelSpacing")) or _positive_spacing(
        image.get("PixelSpacing")
    )
    if spacing is not None:
        for name, value in (
            (codes.DCM.HorizontalPixelSpacing, spacing[1]),
            (codes.DCM.VerticalPixelSpacing, spacing[0]),
        ):
            items.append(
                hd.sr.NumContentItem(
                    name=name,
                    value=value,
                    unit=codes.UCUM.Millimeter,
                    relationship_type=_ACQ_CONTEXT,
                )
            )
    entry.ContentSequence = hd.sr.ContentSequence(items)
    return entry


def _positive_spacing(value: object) -> tuple[float, float] | None:
    """(row, column) spacing when ``value`` is two positive numbers, else ``None``."""
    if not isinstance(value, Sequence) or len(value) != 2:
        return None
    row, column = float(value[0]), float(value[1])
    return (row, column) if row > 0 and column > 0 else None

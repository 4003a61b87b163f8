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
its Image Position (Patient) X/Y/Z: about 4 items per image instead of 15. Images that are
not cross-sectional (or lack the attributes) keep highdicom's full per-entry descriptors.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

_POSITION = (
    codes.DCM.ImagePositionPatientX,
    codes.DCM.ImagePositionPatientY,
    codes.DCM.ImagePositionPatientZ,
)
_CROSS_SECTIONAL = ("CT", "MR", "PT")
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
_SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")
_ACQ_CONTEXT = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def image_library(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """The Image Library container (TID 1600) listing ``images``, in their order.

    Raises:
        ValueError: ``images`` is empty, or holds a dataset that is not an image.
    """
    if not images:
        raise ValueError("an Image Library needs at least one image")
    groups: dict[Hashable, list[Dataset]] = {}
    for image in images:
        groups.setdefault(_group_key(image), []).append(image)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=_CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence(
        [_group(members, shared=key is not None) for key, members in groups.items()]
    )
    return library


def _group_key(image: Dataset) -> Hashable:
    """What an image shares with its group; ``None`` (one group, full entries) if unsure."""
    cross_sectional = image.get("Modality") in _CROSS_SECTIONAL
    if not cross_sectional or "ImagePositionPatient" not in image:
        return None
    if any(image.get(name) is None for name in _SHARED_REQUIRED):
        return None
    return tuple(_hashable(image.get(name)) for name in _SHARED_REQUIRED + _SHARED_OPTIONAL)


def _hashable(value: object) -> Hashable:
    if value is None or isinstance(value, str | int | float):
        return value
    try:
        return tuple(str(v) for v in value)  # type: ignore[attr-defined]
    except TypeError:
        return str(value)


def _group(images: list[Dataset], *, shared: bool) -> hd.sr.ContainerContentItem:
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, relationship_type=_CONTAINS
    )
    content = hd.sr.ContentSequence()
    if shared:
        # The first image's full descriptors without its position hold for every member.
        descriptors = hd.sr.ImageLibraryEntryDescriptors(images[0])
        content.extend(item for item in descriptors if not _is_position(item))
        content.extend(_entry(image, _position(image)) for image in images)
    else:
        frames = {image.get("FrameOfReferenceUID") for image in images}
        if len(frames) == 1 and None not in frames:
            content.append(
                hd.sr.UIDRefContentItem(
                    name=codes.DCM.FrameOfReferenceUID,
                    value=frames.pop(),
                    relationship_type=_ACQ_CONTEXT,
                )
            )
        content.extend(_entry(image, hd.sr.ImageLibraryEntryDescriptors(image)) for image in images)
    group.ContentSequence = content
    return group


def _entry(
    image: Dataset, descriptors: Iterable[hd.sr.ContentItem] | hd.sr.ContentSequence
) -> hd.sr.ImageContentItem:
    entry = hd.sr.ImageContentItem(
        name=_SOURCE,
        referenced_sop_class_uid=image.SOPClassUID,
        referenced_sop_instance_uid=image.SOPInstanceUID,
        relationship_type=_CONTAINS,
    )
    entry.ContentSequence = hd.sr.ContentSequence()
    entry.ContentSequence.extend(descriptors)
    return entry


def _position(image: Dataset) -> list[hd.sr.ContentItem]:
    return [
        hd.sr.NumContentItem(
            name=name,
            value=value,
            unit=codes.UCUM.Millimeter,
            relationship_type=_ACQ_CONTEXT,
        )
        for name, value in zip(_POSITION, image.ImagePositionPatient, strict=True)
    ]


def _is_position(item: Dataset) -> bool:
    name = item.ConceptNameCodeSequence[0]
    return any(
        name.CodeValue == code.value and name.CodingSchemeDesignator == code.scheme_designator
        for code in _POSITION
    )

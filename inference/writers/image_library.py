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
not cross-sectional (or lack the attributes) are left to highdicom's own library groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from inference import codes as pacs_codes

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
_ACQ_CONTEXT = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS


def image_library(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """The Image Library container (TID 1600) listing ``images``.

    Raises:
        ValueError: ``images`` is empty, or holds a dataset that is not an image.
    """
    if not images:
        raise ValueError("an Image Library needs at least one image")
    groups: dict[tuple[str, ...], list[Dataset]] = {}
    others: list[Dataset] = []
    for image in images:
        key = _group_key(image)
        if key is None:
            others.append(image)
        else:
            groups.setdefault(key, []).append(image)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=_CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence([_group(group) for group in groups.values()])
    if others:
        # highdicom groups them by modality and frame of reference, each entry described whole.
        library.ContentSequence.extend(hd.sr.ImageLibrary(others)[0].ContentSequence)
    return library


def _group_key(image: Dataset) -> tuple[str, ...] | None:
    """What an image shares with the rest of its group; ``None`` when not cross-sectional."""
    if image.get("Modality") not in _CROSS_SECTIONAL:
        return None
    if any(image.get(name) is None for name in (*_SHARED_REQUIRED, "ImagePositionPatient")):
        return None
    return tuple(str(image.get(name)) for name in _SHARED_REQUIRED + _SHARED_OPTIONAL)


def _group(images: list[Dataset]) -> hd.sr.ContainerContentItem:
    """One group: the first image's descriptors but its position, then each image's position."""
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, relationship_type=_CONTAINS
    )
    group.ContentSequence = hd.sr.ContentSequence()
    descriptors = hd.sr.ImageLibraryEntryDescriptors(images[0])
    group.ContentSequence.extend(item for item in descriptors if not _is_position(item))
    group.ContentSequence.extend(_entry(image) for image in images)
    return group


def _entry(image: Dataset) -> hd.sr.ImageContentItem:
    entry = hd.sr.ImageContentItem(
        name=pacs_codes.SOURCE,
        referenced_sop_class_uid=image.SOPClassUID,
        referenced_sop_instance_uid=image.SOPInstanceUID,
        relationship_type=_CONTAINS,
    )
    entry.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.NumContentItem(
                name=name,
                value=value,
                unit=codes.UCUM.Millimeter,
                relationship_type=_ACQ_CONTEXT,
            )
            for name, value in zip(_POSITION, image.ImagePositionPatient, strict=True)
        ]
    )
    return entry


def _is_position(item: Dataset) -> bool:
    name = item.ConceptNameCodeSequence[0]
    return any(
        name.CodeValue == code.value and name.CodingSchemeDesignator == code.scheme_designator
        for code in _POSITION
    )

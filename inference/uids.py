"""Deterministic DICOM UIDs for result objects.

A job may run twice (Celery ``acks_late``, an operator re-run). Result objects must then
*replace* the earlier ones in the PACS rather than pile up as duplicates, so their UIDs are
a pure function of what produced them: the source series, the model id and version and the
kind of object (``seg``, ``sr``, ...).

UIDs use the UUID-derived form of PS3.5 B.2: ``2.25.`` followed by the decimal value of a
128-bit UUID, here a name-based UUID (RFC 9562 version 5, SHA-1) of the parts. Each part is
length-prefixed before hashing so that no two different part lists give the same name
(``("a.b", "c")`` and ``("a", "b.c")`` differ), unlike ``pydicom.uid.generate_uid``, which
joins its entropy sources without a separator.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydicom.uid import UID

#: Namespace of every name-based UUID pacs-ai derives (itself the UUIDv5 of a URL naming
#: the project). Changing it changes every derived UID: never do that.
PACS_AI_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/pacs-ai/pacs-ai")

#: Kinds of result object whose UIDs :func:`result_uids` derives: Segmentation,
#: Structured Report, Secondary Capture and Encapsulated PDF.
RESULT_KINDS = frozenset({"seg", "sr", "sc", "pdf"})


def _name(parts: tuple[str, ...]) -> str:
    # Length-prefixing makes the encoding injective whatever characters the parts hold.
    return "".join(f"{len(part)}:{part};" for part in parts)


def derive_uid(*parts: str) -> UID:
    """Return the PS3.5 B.2 UUID-derived UID (``2.25.<int>``) named by ``parts``.

    The same parts always give the same UID; changing, adding, removing or reordering any
    part gives a different one. The result has at most 44 characters (PS3.5 9.1 allows 64).

    Raises:
        ValueError: no part was given.
        TypeError: a part is not a ``str``.
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part to name the UID")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"UID parts must be strings, got {type(part).__name__}")
    value = uuid.uuid5(PACS_AI_UUID_NAMESPACE, _name(parts)).int
    return UID(f"2.25.{value}")


@dataclass(frozen=True)
class ResultUids:
    """The Series and SOP Instance UIDs of one result object."""

    series_instance_uid: UID
    sop_instance_uid: UID


def result_uids(
    source_series_uid: str,
    model_id: str,
    model_version: str,
    kind: str,
    *,
    variant: str = "",
    index: int | None = None,
    source_instance: str = "",
) -> ResultUids:
    """Return the deterministic Series/SOP Instance UIDs of a result object.

    Every kind of object gets its own series, because a DICOM series holds one modality
    (PS3.3 C.7.3.1: SEG and SR objects cannot share a series). ``variant`` names a
    different encoding of the same kind whose content differs (a LABELMAP SEG, an SR
    referencing it): different objects need different UIDs, while the default variant
    (``""``) keeps the UIDs earlier versions derived. ``index`` numbers the instances of
    a series with several (Secondary Capture images); the series UID does not depend
    on it. A transfer syntax is not a variant: the same object compressed or not is the
    same SOP instance (PS3.5 10). ``source_instance`` is the SOP Instance UID of the source
    image an object is the result of, where each image of a series gets results of its own
    (the films of a projection radiograph series): like ``index`` it enters the SOP
    Instance UID only, so that the results of every film of a job share their series.

    Raises:
        ValueError: ``kind`` is not one of :data:`RESULT_KINDS`, a part is empty, or
            ``index`` is negative.
    """
    if kind not in RESULT_KINDS:
        raise ValueError(f"unknown result kind {kind!r}; expected one of {sorted(RESULT_KINDS)}")
    for name, value in (
        ("source_series_uid", source_series_uid),
        ("model_id", model_id),
        ("model_version", model_version),
    ):
        if not value:
            raise ValueError(f"{name} must not be empty when deriving result UIDs")
    if index is not None and index < 0:
        raise ValueError(f"index must be 0 or more, got {index}")
    base = (source_series_uid, model_id, model_version, kind) + ((variant,) if variant else ())
    instance = (
        base
        + ((f"image:{source_instance}",) if source_instance else ())
        + ((f"#{index}",) if index is not None else ())
    )
    return ResultUids(
        series_instance_uid=derive_uid("series", *base),
        sop_instance_uid=derive_uid("instance", *instance),
    )

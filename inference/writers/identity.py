"""Who a result object is and what made it: one value that every writer is given.

Every result object (SEG, SR, Secondary Capture, Encapsulated PDF) carries the same kind of
identity: its series (Series Instance UID, Series Number and Description), itself (SOP
Instance UID, Instance Number) and the run that made it (inference backend and precision,
the equipment's Device Serial Number). :class:`ResultIdentity` holds them, so that a
writer's signature says *what* it encodes and the identity says *as what*.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ResultIdentity:
    """The identity of one result object (PS3.3 C.7.3.1 General Series, C.12.1 SOP Common).

    ``description`` ``None``: the writer's default Series Description
    (:func:`inference.writers.series_description`). ``backend`` and ``precision`` name the
    inference run (the SEG's and SR's Algorithm Parameters, the PDF's "Ran on"); the SR
    needs both. ``device_serial_number`` ``None``: the model's Device Observer UID.
    """

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    instance_number: int = 1
    description: str | None = None
    backend: str | None = None
    precision: str | None = None
    device_serial_number: str | None = None

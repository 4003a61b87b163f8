"""What every PACS a study can be pulled from offers, whatever it speaks (DIMSE or
DICOMweb): find studies, find a study's series, retrieve one series.

A :class:`Source` answers queries with :class:`StudyMatch` and :class:`SeriesMatch`
records (UIDs and the few attributes a series filter needs, never a patient's name or
ID) and retrieves a series either into a :class:`SeriesSink` (C-GET, WADO-RS: the
instances come back to us) or by asking the PACS to send it to the node (C-MOVE).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import ValidationError
from pydicom.dataset import Dataset

from core.errors import PacsAiError, TransientError
from core.routing_rules import ConditionSpec, MatchValue
from dicom_node.routing import matches_conditions

#: Series attributes every series query asks for (besides the filter's keywords).
SERIES_KEYS = (
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "NumberOfSeriesRelatedInstances",
)


class QueryError(PacsAiError):
    """The PACS refused or failed a query or retrieval (the message says which and why)."""


class SourceUnavailableError(TransientError):
    """The PACS cannot be reached now (connection refused, association rejected, timeout)."""


@dataclass(frozen=True, slots=True)
class StudyQuery:
    """What to look for: one study, an accession number, or a patient and a date range,
    or (for a backfill) a date range with optional modalities.

    ``patient_id`` and ``accession_number`` are patient data: they go to the PACS in the
    query and nowhere else (never the ledger, never a log line).
    """

    study_uid: str | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    #: DICOM date range ``YYYYMMDD-YYYYMMDD`` (either side may be open) or one date.
    study_date: str | None = None
    modalities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (self.study_uid or self.accession_number or self.patient_id or self.study_date):
            raise ValueError("a study query needs a study UID, an accession, a patient or dates")
        if self.study_date is not None and not _DATE_RANGE.fullmatch(self.study_date):
            raise ValueError(
                f"{self.study_date!r} is not a DICOM date or range (YYYYMMDD, YYYYMMDD-YYYYMMDD)"
            )


_DATE_RANGE = re.compile(r"(\d{8})?-?(\d{8})?")


@dataclass(frozen=True, slots=True)
class StudyMatch:
    study_uid: str
    study_date: str = ""
    modalities: tuple[str, ...] = ()
    instances: int | None = None


@dataclass(frozen=True, slots=True)
class SeriesMatch:
    series_uid: str
    #: The series' attributes as the PACS answered them (:data:`SERIES_KEYS` and the
    #: filter's keywords), for :func:`passes`.
    attributes: Dataset
    instances: int | None = None

    @property
    def modality(self) -> str:
        return str(self.attributes.get("Modality", "") or "")


def study_matches(answers: Iterable[Dataset], query: StudyQuery) -> list[StudyMatch]:
    """The studies of C-FIND or QIDO-RS ``answers`` that ``query`` asked for, once each:
    answers without a Study Instance UID, or with another than the one asked for, are
    dropped, and so are those with none of the asked modalities where the PACS says which
    it has (matching on Modalities in Study is optional for a PACS, PS3.4 C.6.2.1.2)."""
    matches: dict[str, StudyMatch] = {}
    for answer in answers:
        uid = str(answer.get("StudyInstanceUID", "") or "")
        if not uid or (query.study_uid and uid != query.study_uid):
            continue
        modalities = tuple(values_of(answer.get("ModalitiesInStudy")))
        if query.modalities and modalities and not set(modalities) & set(query.modalities):
            continue
        matches[uid] = StudyMatch(
            study_uid=uid,
            study_date=str(answer.get("StudyDate", "") or ""),
            modalities=modalities,
            instances=number_of(answer.get("NumberOfStudyRelatedInstances")),
        )
    return list(matches.values())


def series_matches(answers: Iterable[Dataset]) -> list[SeriesMatch]:
    """The series of C-FIND or QIDO-RS ``answers`` (those without a Series Instance UID
    dropped)."""
    return [
        SeriesMatch(
            series_uid=str(answer.get("SeriesInstanceUID", "") or ""),
            attributes=answer,
            instances=number_of(answer.get("NumberOfSeriesRelatedInstances")),
        )
        for answer in answers
        if answer.get("SeriesInstanceUID", "")
    ]


def values_of(value: object) -> list[str]:
    """An answered attribute's values as text (none for an empty one)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [str(v) for v in value if str(v)]
    return [str(value)]


def number_of(value: object) -> int | None:
    """An answered count (an IS value), or None when absent or not a number."""
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RetrieveOutcome:
    """What the PACS reported for one series' retrieval."""

    completed: int
    failed: int = 0
    warning: int = 0
    #: Instances stored into the sink (C-GET, WADO-RS); C-MOVE sends them to the node.
    stored: int = 0
    problems: tuple[str, ...] = ()


class SeriesSink(Protocol):
    """Where a retrieved instance goes: the node's spool and ledger."""

    def store(
        self,
        data_set: bytes | memoryview,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
    ) -> None:
        """Keep one instance, given as its encoded data set (a C-STORE sub-operation).

        Raises:
            InvalidInputError: it cannot be kept as it is (malformed, unusable UIDs).
            OSError: it could not be kept (the source reports a failed sub-operation).
        """

    def store_file(self, part10: bytes | memoryview) -> None:
        """Keep one instance given as a DICOM file (preamble, file meta, data set).

        Raises:
            InvalidInputError, OSError: as for :meth:`store`.
        """


class Source(Protocol):
    """A PACS studies can be pulled from."""

    name: str
    #: ``get`` (instances come back into the sink) or ``move`` (sent to the node).
    method: str

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        """Studies matching ``query``.

        Raises:
            QueryError: refused or failed, or more studies than the source allows.
            SourceUnavailableError: the PACS cannot be reached.
        """
        ...

    def find_series(self, study_uid: str, *, keys: tuple[str, ...] = ()) -> list[SeriesMatch]:
        """The study's series with :data:`SERIES_KEYS` and ``keys``.

        Raises:
            QueryError, SourceUnavailableError: as for :meth:`find_studies`.
        """
        ...

    def retrieve_series(self, study_uid: str, series_uid: str, sink: SeriesSink) -> RetrieveOutcome:
        """Retrieve one series: into ``sink``, or (``move``) to the node.

        Raises:
            QueryError, SourceUnavailableError: as for :meth:`find_studies`.
        """
        ...


@dataclass(frozen=True, slots=True)
class SeriesFilter:
    """Conditions a series must meet to be retrieved, as a route's ``match`` (on the
    attributes the PACS answered the series query with)."""

    conditions: Mapping[str, MatchValue] = field(default_factory=dict)

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(self.conditions)

    def passes(self, series: SeriesMatch) -> bool:
        return matches_conditions(dict(self.conditions), series.attributes)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> SeriesFilter:
        """The filter :meth:`as_json` kept (in a retrieval's query)."""
        from core.routing_rules import SeriesCondition  # noqa: PLC0415

        return cls(SeriesCondition.model_validate({"match": dict(data)}).match)

    def as_json(self) -> dict[str, object]:
        return {
            key: value.model_dump(exclude_none=True) if isinstance(value, ConditionSpec) else value
            for key, value in self.conditions.items()
        }


_FILTER = re.compile(r"^\s*([A-Za-z]+)\s*(=|~|>=|<=)\s*(.*?)\s*$")


def parse_series_filter(expressions: tuple[str, ...] | list[str]) -> SeriesFilter:
    """``Modality=CT``, ``Modality=CT,MR`` (one of), ``SeriesDescription~(?i)lung``
    (regex), ``NumberOfSeriesRelatedInstances>=50`` (numeric); all must hold.

    Raises:
        ValueError: an expression is not of these forms, or names no DICOM keyword.
    """
    from core.routing_rules import SeriesCondition  # noqa: PLC0415 -- validates keywords

    raw: dict[str, object] = {}
    for expression in expressions:
        found = _FILTER.match(expression)
        if found is None or not found.group(3):
            raise ValueError(
                f"series filter {expression!r}: write KEYWORD=VALUE[,VALUE...], "
                "KEYWORD~REGEX, KEYWORD>=NUMBER or KEYWORD<=NUMBER"
            )
        keyword, operator, value = found.groups()
        current = raw.get(keyword)
        spec: dict[str, object] = dict(current) if isinstance(current, dict) else {}
        if operator == "=":
            values = [v.strip() for v in value.split(",") if v.strip()]
            spec.update({"one_of": values} if len(values) > 1 else {"equals": values[0]})
        elif operator == "~":
            spec["regex"] = value
        else:
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"series filter {expression!r}: {value!r} is no number") from None
            spec["min" if operator == ">=" else "max"] = number
        raw[keyword] = spec
    try:
        condition = SeriesCondition.model_validate({"match": raw})
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        raise ValueError(f"series filter: {problems}") from None
    return SeriesFilter(condition.match)

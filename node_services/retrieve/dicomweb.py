"""Pulling from a DICOMweb server: QIDO-RS to find, WADO-RS to retrieve (PS3.18 10.6, 10.4).

QIDO-RS answers DICOM JSON (PS3.18 F.2), read into pydicom data sets so that a series
filter works as on a C-FIND answer. A WADO-RS series retrieval asks for
``multipart/related; type="application/dicom"; transfer-syntax=*``: every instance as the
server holds it, never transcoded. The answer is split into its parts as it streams in
(:mod:`core.multipart`), one instance in memory at a time, each handed to the sink.

Query values that name a patient go into the query string of a request to the server and
nowhere else: errors name the URL's path without its query.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any

from pydicom.dataset import Dataset

from core.errors import InvalidInputError
from core.multipart import (
    MultipartError,
    PartTooLargeError,
    Readable,
    boundary_of,
    whole_parts,
)
from core.settings import DicomWebDestination, DicomWebQueryRetrieve
from node_services.retrieve.base import (
    SERIES_KEYS,
    QueryError,
    RetrieveOutcome,
    SeriesMatch,
    SeriesSink,
    SourceUnavailableError,
    StudyMatch,
    StudyQuery,
    series_matches,
    study_matches,
)

logger = logging.getLogger(__name__)

_READ = 1024 * 1024
#: HTTP statuses worth trying again later: timeouts, throttling, server-side trouble.
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DicomWebSource:
    """A DICOMweb server (``destinations.<name>`` of ``type: dicomweb`` with
    ``query_retrieve``)."""

    method = "get"

    def __init__(
        self, name: str, destination: DicomWebDestination, *, max_instance_bytes: int
    ) -> None:
        if destination.query_retrieve is None:
            raise ValueError(f"destination {name} has no query_retrieve role")
        self.name = name
        self.destination = destination
        self.settings: DicomWebQueryRetrieve = destination.query_retrieve
        self.root = (self.settings.url or destination.url).rstrip("/")
        self.max_instance_bytes = max_instance_bytes

    def describe(self) -> str:
        return f"{self.name} ({self.root})"

    # -- QIDO-RS ---------------------------------------------------------------------

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        limit = self.settings.max_studies
        params: list[tuple[str, str]] = [
            (key, value)
            for key, value in (
                ("StudyInstanceUID", query.study_uid),
                ("AccessionNumber", query.accession_number),
                ("PatientID", query.patient_id),
                ("StudyDate", query.study_date),
            )
            if value
        ]
        params += [("ModalitiesInStudy", m) for m in query.modalities]
        params += [
            ("includefield", "ModalitiesInStudy"),
            ("includefield", "NumberOfStudyRelatedInstances"),
            ("limit", str(limit + 1)),
        ]
        answers = self._qido("/studies", params)
        if len(answers) > limit:
            raise QueryError(
                f"the query finds more than {limit} studies in {self.name} "
                "(query_retrieve.max_studies): narrow it"
            )
        return study_matches(answers, query)

    def find_series(self, study_uid: str, *, keys: tuple[str, ...] = ()) -> list[SeriesMatch]:
        params = [("includefield", k) for k in dict.fromkeys((*SERIES_KEYS, *keys))]
        return series_matches(self._qido(f"/studies/{_uid(study_uid)}/series", params))

    def _qido(self, path: str, params: list[tuple[str, str]]) -> list[Dataset]:
        query = urllib.parse.urlencode(params)
        with self._open(f"{path}?{query}", accept="application/dicom+json") as response:
            if response.status == 204:
                return []
            body = response.read()
        try:
            items: Any = json.loads(body) if body.strip() else []
        except json.JSONDecodeError:
            raise QueryError(f"{self.describe()} answered {path} with no DICOM JSON") from None
        if not isinstance(items, list):
            raise QueryError(f"{self.describe()} answered {path} with no list of matches")
        return [Dataset.from_json(item) for item in items if isinstance(item, dict)]

    # -- WADO-RS ---------------------------------------------------------------------

    def retrieve_series(self, study_uid: str, series_uid: str, sink: SeriesSink) -> RetrieveOutcome:
        path = f"/studies/{_uid(study_uid)}/series/{_uid(series_uid)}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        stored = 0
        problems: list[str] = []
        with self._open(path, accept=accept) as response:
            content_type = response.headers.get("Content-Type", "")
            try:
                boundary = boundary_of(content_type)
            except MultipartError as exc:
                raise QueryError(f"{self.describe()} answered {path}: {exc}") from None
            for part in iter_parts(response, boundary, max_part=self.max_instance_bytes):
                try:
                    sink.store_file(part)
                except InvalidInputError as exc:
                    problems.append(str(exc))
                    continue
                stored += 1
        return RetrieveOutcome(
            completed=stored, failed=len(problems), stored=stored, problems=tuple(problems)
        )

    # -- HTTP ------------------------------------------------------------------------

    def _open(self, path: str, *, accept: str) -> HTTPResponse:
        destination = self.destination
        request = urllib.request.Request(  # noqa: S310 -- the scheme is checked in the settings
            self.root + path, headers={"Accept": accept, **_auth_header(destination)}
        )
        context = None if destination.verify_tls else ssl._create_unverified_context()  # noqa: S323
        shown = path.split("?", 1)[0]
        try:
            response: HTTPResponse = urllib.request.urlopen(  # noqa: S310
                request, timeout=self.settings.timeout_seconds, context=context
            )
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in _TRANSIENT_HTTP:
                raise SourceUnavailableError(
                    f"{self.describe()} answered {shown} with HTTP {exc.code}"
                ) from None
            raise QueryError(
                f"{self.describe()} refused {shown}: HTTP {exc.code} {exc.reason}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceUnavailableError(f"cannot reach {self.describe()}: {reason}") from None
        return response


def iter_parts(stream: Readable, boundary: str, *, max_part: int) -> Iterator[bytes]:
    """The bodies of a WADO-RS ``multipart/related`` answer, each whole, one at a time, as
    they arrive (:func:`core.multipart.whole_parts`).

    Raises:
        QueryError: the stream is not well-formed multipart (cut off, say), or a part is
            larger than ``max_part``.
    """
    try:
        yield from whole_parts(stream, boundary, max_part=max_part, read_size=_READ)
    except PartTooLargeError as exc:
        raise QueryError(f"a WADO-RS part is larger than {max_part} bytes") from exc
    except MultipartError as exc:
        raise QueryError(f"the WADO-RS answer is not well-formed: {exc}") from None


def _auth_header(destination: DicomWebDestination) -> dict[str, str]:
    if destination.token is not None:
        return {"Authorization": f"Bearer {destination.token.get_secret_value()}"}
    if destination.username is not None:
        password = destination.password.get_secret_value() if destination.password else ""
        credentials = base64.b64encode(f"{destination.username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {credentials}"}
    return {}


def _uid(value: str) -> str:
    # UIDs are digits and dots; anything else must not reach a URL path.
    if not re.fullmatch(r"[0-9.]{1,64}", value):
        raise QueryError(f"{value!r} is not a UID")
    return value

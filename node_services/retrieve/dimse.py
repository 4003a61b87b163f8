"""Pulling from a DICOM PACS: C-FIND, then C-GET or C-MOVE (PS3.4 Annex C, Study Root).

pynetdicom is the query/retrieve SCU. A C-GET brings the instances back on our own
association: we propose the storage SOP classes of :data:`STORAGE_CLASSES` with the SCP
role (PS3.7 D.3.3.4) and every transfer syntax we can keep, so that the PACS sends what it
holds as it holds it (the spool keeps bytes as received, never transcoded), and hand each
instance's encoded bytes, undecoded, to the sink. A C-MOVE asks the PACS to send the
series to the node's AE title (``query_retrieve.move_destination``), where the node's own
C-STORE path receives it; the PACS must know that AE title's host and port.

Query values that name a patient (Patient ID, Accession Number) go to the PACS and
nowhere else: pynetdicom logs identifiers only at DEBUG, which :mod:`core.logs` keeps off.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt, sop_class
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from core.errors import InvalidInputError
from core.settings import DestinationSettings, QueryRetrieveSettings
from dicom_node.status import QueryRetrieveStatus, Status, is_pending
from dicom_node.tls import client_context
from node_services.retrieve.base import (
    SERIES_KEYS,
    QueryError,
    RetrieveOutcome,
    SeriesMatch,
    SeriesSink,
    SourceUnavailableError,
    StudyMatch,
    StudyQuery,
    number_of,
    series_matches,
    study_matches,
)

logger = logging.getLogger(__name__)


def _sop_class(name: str) -> str:
    """A SOP class UID by its name (pynetdicom makes these names when it is imported,
    where mypy cannot see them)."""
    return str(getattr(sop_class, name))


#: Study Root Query/Retrieve Information Model (PS3.4 C.6.2.1): FIND, GET, MOVE.
FIND_MODEL = _sop_class("StudyRootQueryRetrieveInformationModelFind")
GET_MODEL = _sop_class("StudyRootQueryRetrieveInformationModelGet")
MOVE_MODEL = _sop_class("StudyRootQueryRetrieveInformationModelMove")

#: Every transfer syntax a retrieved instance may come in: we keep its bytes as they are.
ANY_TRANSFER_SYNTAX: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)

#: Storage SOP classes a C-GET can bring back: images models read, and the objects found
#: beside them in a study. A presentation context each, so at most 127 (PS3.8 9.3.2.2).
STORAGE_CLASSES: tuple[str, ...] = tuple(
    _sop_class(name)
    for name in (
        "CTImageStorage",
        "EnhancedCTImageStorage",
        "LegacyConvertedEnhancedCTImageStorage",
        "MRImageStorage",
        "EnhancedMRImageStorage",
        "EnhancedMRColorImageStorage",
        "LegacyConvertedEnhancedMRImageStorage",
        "MRSpectroscopyStorage",
        "ComputedRadiographyImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "DigitalXRayImageStorageForProcessing",
        "DigitalMammographyXRayImageStorageForPresentation",
        "DigitalMammographyXRayImageStorageForProcessing",
        "DigitalIntraOralXRayImageStorageForPresentation",
        "DigitalIntraOralXRayImageStorageForProcessing",
        "BreastTomosynthesisImageStorage",
        "XRayAngiographicImageStorage",
        "EnhancedXAImageStorage",
        "XRayRadiofluoroscopicImageStorage",
        "EnhancedXRFImageStorage",
        "XRay3DAngiographicImageStorage",
        "UltrasoundImageStorage",
        "UltrasoundMultiFrameImageStorage",
        "EnhancedUSVolumeStorage",
        "NuclearMedicineImageStorage",
        "PositronEmissionTomographyImageStorage",
        "EnhancedPETImageStorage",
        "LegacyConvertedEnhancedPETImageStorage",
        "SecondaryCaptureImageStorage",
        "MultiFrameSingleBitSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
        "MultiFrameTrueColorSecondaryCaptureImageStorage",
        "VLPhotographicImageStorage",
        "VLWholeSlideMicroscopyImageStorage",
        "SegmentationStorage",
        "ParametricMapStorage",
        "SpatialRegistrationStorage",
        "DeformableSpatialRegistrationStorage",
        "BasicTextSRStorage",
        "EnhancedSRStorage",
        "ComprehensiveSRStorage",
        "Comprehensive3DSRStorage",
        "KeyObjectSelectionDocumentStorage",
        "EncapsulatedPDFStorage",
        "GrayscaleSoftcopyPresentationStateStorage",
        "RTImageStorage",
        "RTDoseStorage",
        "RTStructureSetStorage",
        "RTPlanStorage",
    )
    if hasattr(sop_class, name)
)

#: Transfer syntaxes proposed for the query/retrieve commands and identifiers.
COMMAND_SYNTAXES: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: The presentation contexts (abstract syntax, transfer syntaxes) each association
#: proposes: a C-FIND one, a C-GET one (the model, and every storage class of
#: :data:`STORAGE_CLASSES` in any syntax we keep, with the SCP role: :data:`GET_SCP_ROLES`),
#: a C-MOVE one. The conformance statement lists these (``pacs_ai/docs_gen``).
FIND_CONTEXTS: tuple[tuple[str, tuple[str, ...]], ...] = ((FIND_MODEL, COMMAND_SYNTAXES),)
GET_CONTEXTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (GET_MODEL, COMMAND_SYNTAXES),
    *((uid, ANY_TRANSFER_SYNTAX) for uid in STORAGE_CLASSES),
)
MOVE_CONTEXTS: tuple[tuple[str, tuple[str, ...]], ...] = ((MOVE_MODEL, COMMAND_SYNTAXES),)
#: Storage SOP classes for which a C-GET association takes the SCP role (PS3.7 D.3.3.4).
GET_SCP_ROLES: tuple[str, ...] = STORAGE_CLASSES


class DimseSource:
    """A PACS reached over DIMSE (``destinations.<name>`` with ``query_retrieve``)."""

    def __init__(
        self,
        name: str,
        destination: DestinationSettings,
        *,
        calling_ae: str,
        node_ae: str,
        max_pdu: int = 131_072,
    ) -> None:
        if destination.query_retrieve is None:
            raise ValueError(f"destination {name} has no query_retrieve role")
        self.name = name
        self.destination = destination
        self.settings: QueryRetrieveSettings = destination.query_retrieve
        self.method: str = self.settings.retrieve
        self.calling_ae = calling_ae
        self.move_destination = self.settings.move_destination or node_ae
        self.max_pdu = max_pdu

    def describe(self) -> str:
        d = self.destination
        return f"{self.name} ({d.ae_title}@{d.host}:{d.port})"

    # -- queries ---------------------------------------------------------------------

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = query.study_uid or ""
        identifier.AccessionNumber = query.accession_number or ""
        identifier.PatientID = query.patient_id or ""
        identifier.StudyDate = query.study_date or ""
        identifier.ModalitiesInStudy = "\\".join(query.modalities)
        identifier.NumberOfStudyRelatedInstances = ""
        return study_matches(self._find(identifier, limit=self.settings.max_studies), query)

    def find_series(self, study_uid: str, *, keys: tuple[str, ...] = ()) -> list[SeriesMatch]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = ""
        for keyword in dict.fromkeys((*SERIES_KEYS, *keys)):
            setattr(identifier, keyword, "")
        return series_matches(self._find(identifier, limit=None))

    def _find(self, identifier: Dataset, *, limit: int | None) -> Iterator[Dataset]:
        """C-FIND ``identifier``; the matches (PS3.4 C.4.1)."""
        answers: list[Dataset] = []
        with self._association(FIND_CONTEXTS) as assoc:
            for status, answer in assoc.send_c_find(identifier, FIND_MODEL):
                code = _status(status, self.describe(), "C-FIND", self.calling_ae)
                if is_pending(code):
                    if answer is not None:
                        answers.append(answer)
                    if limit is not None and len(answers) > limit:
                        assoc.abort()
                        raise QueryError(
                            f"the query finds more than {limit} studies in {self.name} "
                            f"(query_retrieve.max_studies): narrow it"
                        )
                    continue
                if code != QueryRetrieveStatus.SUCCESS:
                    raise QueryError(
                        f"{self.describe()} refused the query: C-FIND status 0x{code:04X}"
                        f"{_comment(status)}"
                    )
        yield from answers

    # -- retrieval -------------------------------------------------------------------

    def retrieve_series(self, study_uid: str, series_uid: str, sink: SeriesSink) -> RetrieveOutcome:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        if self.method == "move":
            return self._move(identifier)
        return self._get(identifier, sink)

    def _get(self, identifier: Dataset, sink: SeriesSink) -> RetrieveOutcome:
        stored = 0
        problems: list[str] = []

        def on_store(event: Event) -> int:
            nonlocal stored
            request = event.request
            assert isinstance(request, C_STORE)  # the only request this handler gets
            try:
                sink.store(
                    event.encoded_dataset(include_meta=False),
                    sop_class_uid=str(request.AffectedSOPClassUID),
                    sop_instance_uid=str(request.AffectedSOPInstanceUID),
                    transfer_syntax_uid=str(event.context.transfer_syntax),
                )
            except InvalidInputError as exc:
                problems.append(str(exc))
                return int(Status.CANNOT_UNDERSTAND)
            except OSError as exc:
                problems.append(f"cannot keep an instance: {exc}")
                return int(Status.OUT_OF_RESOURCES)
            stored += 1
            return int(Status.SUCCESS)

        roles = [build_role(uid, scp_role=True) for uid in GET_SCP_ROLES]
        with self._association(
            GET_CONTEXTS, roles=roles, handlers=[(evt.EVT_C_STORE, on_store)]
        ) as assoc:
            final = self._final(assoc.send_c_get(identifier, GET_MODEL), "C-GET")
        return _outcome(final, stored=stored, problems=problems)

    def _move(self, identifier: Dataset) -> RetrieveOutcome:
        with self._association(MOVE_CONTEXTS) as assoc:
            final = self._final(
                assoc.send_c_move(identifier, self.move_destination, MOVE_MODEL), "C-MOVE"
            )
        return _outcome(final, stored=0, problems=[])

    def _final(self, responses: Iterator[tuple[Dataset, Dataset | None]], what: str) -> Dataset:
        """The final response of a C-GET or C-MOVE, after its pending ones."""
        for status, _identifier in responses:
            code = _status(status, self.describe(), what, self.calling_ae)
            if is_pending(code):
                continue
            if code == QueryRetrieveStatus.MOVE_DESTINATION_UNKNOWN:
                raise QueryError(
                    f"{self.describe()} does not know the move destination "
                    f"{self.move_destination}: declare it there (AE title, host, port of "
                    "this node), or use query_retrieve.retrieve: get"
                )
            if code not in (QueryRetrieveStatus.SUCCESS, QueryRetrieveStatus.SUB_OPERATIONS_FAILED):
                raise QueryError(
                    f"{self.describe()} refused the retrieval: {what} status 0x{code:04X}"
                    f"{_comment(status)}"
                )
            return status
        raise SourceUnavailableError(f"{self.describe()} ended the {what} without a final answer")

    # -- associations ----------------------------------------------------------------

    def requesting_ae(self, contexts: Sequence[tuple[str, Sequence[str]]]) -> AE:
        """The pynetdicom AE that proposes ``contexts`` (not yet associated)."""
        ae = AE(ae_title=self.calling_ae)
        timeout = self.settings.timeout_seconds
        ae.acse_timeout = min(timeout, 60.0)
        ae.dimse_timeout = timeout
        ae.network_timeout = timeout
        ae.maximum_pdu_size = self.max_pdu
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, list(syntaxes))
        return ae

    @contextlib.contextmanager
    def _association(
        self,
        contexts: Sequence[tuple[str, Sequence[str]]],
        *,
        roles: Sequence[Any] = (),
        handlers: Sequence[Any] = (),
    ) -> Iterator[Association]:
        destination = self.destination
        ae = self.requesting_ae(contexts)
        tls = None
        if destination.tls is not None:
            context = client_context(destination.tls, key=f"destinations.{self.name}.tls")
            tls = (context, destination.host)
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            max_pdu=self.max_pdu,
            ext_neg=list(roles) or None,
            tls_args=tls,
            evt_handlers=list(handlers) or None,
        )
        if not assoc.is_established:
            ae.shutdown()
            if assoc.is_rejected:
                raise SourceUnavailableError(
                    f"{self.describe()} rejected our association: it must know our AE "
                    f"title {self.calling_ae} (and this host) as a query/retrieve peer"
                )
            raise SourceUnavailableError(f"cannot associate with {self.describe()}")
        _no_delay(assoc)
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()


def _no_delay(assoc: Association) -> None:
    # Each C-STORE response of a C-GET is a small write the PACS waits for: with Nagle's
    # algorithm on, it can wait for a delayed ACK (tens of ms) every instance.
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _status(status: Dataset, peer: str, what: str, calling_ae: str) -> int:
    if "Status" not in status:
        # pynetdicom yields an empty status when the association aborted or timed out.
        raise SourceUnavailableError(
            f"{peer} ended the association during the {what} without an answer (aborted "
            f"or timed out): does it allow our AE title {calling_ae} to query and retrieve?"
        )
    return int(status.Status)


def _comment(status: Dataset) -> str:
    comment = str(status.get("ErrorComment", "") or "")
    return f" ({comment})" if comment else ""


def _outcome(final: Dataset, *, stored: int, problems: list[str]) -> RetrieveOutcome:
    return RetrieveOutcome(
        completed=number_of(final.get("NumberOfCompletedSuboperations")) or stored,
        failed=number_of(final.get("NumberOfFailedSuboperations")) or 0,
        warning=number_of(final.get("NumberOfWarningSuboperations")) or 0,
        stored=stored,
        problems=tuple(problems),
    )

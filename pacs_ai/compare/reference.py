"""Reference segmentations from a PACS: the SEG objects of a study that segment a given
series and that pacs-ai did not make.

The PACS is a destination with a ``query_retrieve`` role, reached through the sources of
:mod:`node_services.retrieve` (C-FIND + C-GET, or QIDO-RS + WADO-RS): the study's series
of Modality SEG are found and retrieved into memory, never into the spool or the ledger.
A SEG is a reference for a series when its Referenced Series Sequence (Common Instance
Reference Module, PS3.3 C.12.2) names that series, and it is not ours when neither its
Manufacturer nor any item of its Contributing Equipment Sequence is pacs-ai's.

A PACS that only moves (``query_retrieve.retrieve: move``) would send the SEG to the node,
not to this command: it is refused with a message.
"""

from __future__ import annotations

import logging
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from core.errors import PacsAiError
from core.settings import Settings

logger = logging.getLogger(__name__)


class ReferenceUnavailableError(PacsAiError):
    """The references cannot be fetched from that destination (the message says why)."""


class _MemorySink:
    """Retrieved SEGs that pacs-ai did not make, kept as data sets in memory; any other
    instance is dropped as it comes."""

    def __init__(self) -> None:
        self.datasets: list[Dataset] = []

    def _keep(self, dataset: Dataset) -> None:
        if str(dataset.get("Modality", "")) == "SEG" and not is_ours(dataset):
            self.datasets.append(dataset)

    def store(
        self,
        data_set: bytes | memoryview,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
    ) -> None:
        syntax = UID(transfer_syntax_uid)
        dataset = read_dataset(
            BytesIO(bytes(data_set)),
            is_implicit_VR=syntax.is_implicit_VR,
            is_little_endian=syntax.is_little_endian,
        )
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class_uid)
        meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
        meta.TransferSyntaxUID = syntax
        dataset.file_meta = meta
        self._keep(dataset)

    def store_file(self, part10: bytes | memoryview) -> None:
        self._keep(dcmread(BytesIO(bytes(part10))))


class ReferenceSegs:
    """Finds and retrieves the reference SEGs of series in one PACS.

    Only the last study asked for is kept, and of it only the SEGs that are not ours:
    ask for the series of one study together (the jobs grouped by study), or a study is
    retrieved again.
    """

    def __init__(self, settings: Settings, destination: str) -> None:
        from node_services.retrieve.sources import make_source  # noqa: PLC0415

        self.source = make_source(settings, destination)
        if self.source.method == "move":
            raise ReferenceUnavailableError(
                f"destinations.{destination}.query_retrieve retrieves by C-MOVE, which sends "
                "to the node: compare needs C-GET (retrieve: get) or a DICOMweb destination"
            )
        #: The study whose SEGs are held, and its SEGs that are not ours.
        self.cached_study: str | None = None
        self._segs_of_study: list[Dataset] = []

    def for_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """The SEGs of ``study_uid`` that reference ``series_uid`` and are not ours.

        Raises:
            QueryError, SourceUnavailableError: the PACS refused or cannot be reached.
        """
        return [seg for seg in self._segs(study_uid) if series_uid in _referenced_series(seg)]

    def _segs(self, study_uid: str) -> list[Dataset]:
        if study_uid != self.cached_study:
            # The previous study's SEGs go before this one's come.
            self.cached_study, self._segs_of_study = None, []
            sink = _MemorySink()
            for series in self.source.find_series(study_uid):
                if series.modality == "SEG":
                    self.source.retrieve_series(study_uid, series.series_uid, sink)
            self.cached_study, self._segs_of_study = study_uid, sink.datasets
            logger.info(
                "study %s: %d SEG object(s) not made by pacs-ai in %s",
                study_uid,
                len(self._segs_of_study),
                self.source.name,
            )
        return self._segs_of_study

    @property
    def cached_segs(self) -> int:
        """How many SEGs are held (of :attr:`cached_study`)."""
        return len(self._segs_of_study)


def is_ours(dataset: Dataset) -> bool:
    """Whether pacs-ai made this object (its Manufacturer, or a Contributing Equipment's)."""
    from inference.writers import MANUFACTURER  # noqa: PLC0415

    makers = {str(dataset.get("Manufacturer", "") or "")} | {
        str(item.get("Manufacturer", "") or "")
        for item in dataset.get("ContributingEquipmentSequence", [])
    }
    return MANUFACTURER in makers


def _referenced_series(seg: Dataset) -> set[str]:
    return {
        str(item.get("SeriesInstanceUID", "")) for item in seg.get("ReferencedSeriesSequence", [])
    }

"""Fixtures shared by every test layer.

Real test material lives outside the repository in ``../shared/data`` (or wherever
``PACS_AI_SHARED_DATA`` points). A test that needs it skips locally with a clear message
when it is absent, and fails when ``CI`` is set, so that CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from benchmarks._support import MissingMaterialError
from tests.support.missing import in_ci, skip_locally_fail_in_ci
from tests.support.peers import DICOMWEB_PLUGIN, Orthanc, RedisServer, StoreSCP

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_root() -> Path:
    configured = os.environ.get("PACS_AI_SHARED_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


#: In every skip for missing shared material: the summary counts them by it.
SHARED_MATERIAL_MISSING = "Put the shared test material in ../shared/data"


def require(path: Path, what: str) -> Path:
    """Return ``path`` if it exists; otherwise skip (locally) or fail (in CI)."""
    if not path.exists():
        skip_locally_fail_in_ci(
            f"{what} not found at {path}. {SHARED_MATERIAL_MISSING} "
            "or set PACS_AI_SHARED_DATA to its folder (docs/development.md, 'Test material')."
        )
    return path


def pytest_report_header() -> str:
    root = shared_data_root()
    if root.is_dir():
        return f"shared test material: {root}"
    return (
        f"shared test material: MISSING at {root}: the tests that need it will skip "
        "(docs/development.md, 'Test material'; or set PACS_AI_SHARED_DATA)"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many tests skipped because the shared test material is missing."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if SHARED_MATERIAL_MISSING in str(report.longrepr)
    ]
    if skipped:
        terminalreporter.write_sep("=", "shared test material missing", yellow=True)
        terminalreporter.write_line(
            f"{len(skipped)} test(s) skipped: no shared test material at {shared_data_root()}. "
            "docs/development.md, 'Test material', says where it comes from; put it there or set "
            "PACS_AI_SHARED_DATA to its folder."
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A program or development dependency that the shared peers and material need
    (:class:`~benchmarks._support.MissingMaterialError`, raised in a fixture or a test):
    the test is skipped locally, and stays an error in CI."""
    report = yield
    excinfo = call.excinfo
    if excinfo is not None and excinfo.errisinstance(MissingMaterialError) and not in_ci():
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {excinfo.value}")
    return report


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require(shared_data_root(), "shared test data")


@pytest.fixture(scope="session")
def lidc_ct_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real 275-slice LIDC-IDRI chest CT, unpacked once per test session."""
    archive = require(shared_data / "ct-lidc-idri-0314" / "series.tar.xz", "LIDC-IDRI CT archive")
    target = tmp_path_factory.mktemp("lidc-ct")
    # tar(1) with xz is several times faster than Python's lzma for 60 MB.
    if subprocess.run(["tar", "xJf", str(archive), "-C", str(target)], check=False).returncode:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    series_dir = target / "lidc-idri-0314-ct"
    assert len(list(series_dir.glob("*.dcm"))) == 275, "the LIDC CT archive should hold 275 slices"
    return series_dir


@pytest.fixture(scope="session")
def lidc_reference_dir(shared_data: Path) -> Path:
    """dcmqi's reference lung SEG / SR / label map for the LIDC CT."""
    return require(
        shared_data / "reference-seg-sr" / "lidc-idri-0314-lung-dcmqi", "dcmqi lung reference"
    )


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder kept after the run (``test-artifacts/<test name>``) for screenshots and outputs."""
    root = Path(os.environ.get("PACS_AI_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
    folder = root / request.node.name
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


# --------------------------------------------------------------------------- real peers
# Integration and e2e tests talk to real redis-server, Orthanc and DCMTK processes
# (tests/support/peers.py). Each fixture starts its own on free ports in the test's
# tmp_path, where its log stays; missing programs skip locally and fail in CI.


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server (no persistence): ``.url``, ``.restart()``, ``.flushall()``."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_orthanc(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start Orthanc servers with custom settings: ``make_orthanc(aet=..., modalities=...)``.

    Keyword arguments go to :class:`tests.support.peers.Orthanc`; each server gets its own
    folder under tmp_path and is killed at teardown (a clean stop takes Orthanc ~3 s).
    """
    started: list[Orthanc] = []

    def make(**kwargs: Any) -> Orthanc:
        server = Orthanc(tmp_path / f"orthanc-{len(started)}", **kwargs)
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop(graceful=False)


@pytest.fixture
def orthanc(make_orthanc: Callable[..., Orthanc]) -> Orthanc:
    """An empty Orthanc (AET ``ORTHANC``): DICOM on ``.dicom_port``, REST client methods."""
    return make_orthanc()


@pytest.fixture
def dicomweb_orthanc(make_orthanc: Callable[..., Orthanc]) -> Orthanc:
    """An empty Orthanc with its DICOMweb plugin at ``<url>/dicom-web/`` (QIDO, WADO, STOW)."""
    if not DICOMWEB_PLUGIN.exists():
        message = f"Orthanc's DICOMweb plugin is missing ({DICOMWEB_PLUGIN}): apt-get install orthanc-dicomweb"
        skip_locally_fail_in_ci(message)
    return make_orthanc(
        extra_config={
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
    )


@pytest.fixture
def make_storescp(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Start DCMTK storescp servers with custom settings (``aet``, ``promiscuous``, ...)."""
    started: list[StoreSCP] = []

    def make(**kwargs: Any) -> StoreSCP:
        server = StoreSCP(tmp_path / f"storescp-{len(started)}", **kwargs)
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def storescp(make_storescp: Callable[..., StoreSCP]) -> StoreSCP:
    """DCMTK storescp (AET ``STORESCP``, all transfer syntaxes, bit-preserving): ``.files()``."""
    return make_storescp()


# --------------------------------------------------------------------------- small DICOM


class DicomFactory:
    """Writes small, valid DICOM images (PS3.3 CT / MR Image IODs) for tests.

    ``image()`` writes one file; ``series()`` a series sharing study / series / frame of
    reference UIDs with increasing slice positions. Pixel data is deterministic.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def dataset(
        self,
        *,
        modality: str = "CT",
        size: int = 16,
        study_uid: str | None = None,
        series_uid: str | None = None,
        frame_of_reference_uid: str | None = None,
        instance_number: int = 1,
        sop_class_uid: str | None = None,
    ) -> Dataset:
        """An image data set with file meta for Explicit VR Little Endian."""
        sop_class = UID(sop_class_uid or {"CT": CTImageStorage, "MR": MRImageStorage}[modality])
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = "Test^Peer"
        ds.PatientID = "PACSAI-TEST"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid or generate_uid()
        ds.StudyDate = "20240102"
        ds.StudyTime = "120000"
        ds.ContentDate = "20240102"
        ds.ContentTime = "120000"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid or generate_uid()
        ds.SeriesNumber = 1
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_of_reference_uid or generate_uid()
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "pacs-ai tests"
        ds.InstanceNumber = instance_number
        ds.PatientOrientation = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.AcquisitionNumber = 1
        if modality == "CT":
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
            ds.KVP = 120
            pixels = np.arange(size * size, dtype=np.int16) - 1000 + instance_number
        else:
            ds.PixelRepresentation = 0
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = 500
            ds.EchoTime = 20
            ds.EchoTrainLength = 1
            pixels = np.arange(size * size, dtype=np.int16) + instance_number
        ds.PixelData = pixels.tobytes()
        return ds

    def save(self, ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
        """Write ``ds`` in ``transfer_syntax`` (uncompressed, deflated or RLE Lossless)."""
        syntax = UID(transfer_syntax)
        if syntax.is_encapsulated:
            ds.compress(syntax)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        self._count += 1
        path = self.folder / f"{self._count:05d}-{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    def image(self, *, transfer_syntax: str = ExplicitVRLittleEndian, **kwargs: Any) -> Path:
        """Write one image; keyword arguments as for :meth:`dataset`."""
        return self.save(self.dataset(**kwargs), transfer_syntax)

    def series(
        self,
        count: int,
        *,
        modality: str = "CT",
        transfer_syntax: str = ExplicitVRLittleEndian,
        size: int = 16,
        study_uid: str | None = None,
    ) -> list[Path]:
        """Write ``count`` slices of one series."""
        study = study_uid or generate_uid()
        series = generate_uid()
        frame = generate_uid()
        return [
            self.image(
                transfer_syntax=transfer_syntax,
                modality=modality,
                size=size,
                study_uid=study,
                series_uid=series,
                frame_of_reference_uid=frame,
                instance_number=number,
            )
            for number in range(1, count + 1)
        ]


@pytest.fixture
def dicom_factory(tmp_path: Path) -> DicomFactory:
    """Writes small valid CT / MR files under ``tmp_path/dicom`` (see :class:`DicomFactory`)."""
    return DicomFactory(tmp_path / "dicom")

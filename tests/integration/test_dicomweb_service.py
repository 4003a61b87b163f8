"""The node's DICOMweb service for remote workers, against a real node and DCMTK: WADO-RS
out of the spool with the stored bytes unchanged, STOW-RS of results into the outbox,
worker tokens only, HTTPS when the monitor has a certificate."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from core.jobs import JobRecord, JobState
from core.ledger import DeliveryState, Outbox
from core.settings import Settings, validate_settings
from dicom_node.node import Node
from monitor.web.server import MonitorServer
from tests.conftest import DicomFactory
from tests.support.monitor import call
from tests.support.peers import LOCALHOST, Orthanc, free_port, storescu, wait_for
from tests.support.tls import make_pki
from workers.dicomweb import DicomWebClient, DicomWebError, ServerUnavailableError
from workers.fetch import NodeUnavailableError, SeriesFetcher

pytestmark = [pytest.mark.peers]

WORKER_TOKEN = "worker-token-0123456789"  # noqa: S105
READER_TOKEN = "reader-token-0123456789"  # noqa: S105


@dataclass
class Serving:
    settings: Settings
    node: Node
    monitor: MonitorServer
    series: list[Path]

    @property
    def dicomweb(self) -> str:
        return f"{self.monitor.url}dicomweb"

    @property
    def series_uid(self) -> str:
        return str(dcmread(self.series[0], stop_before_pixels=True).SeriesInstanceUID)

    @property
    def study_uid(self) -> str:
        return str(dcmread(self.series[0], stop_before_pixels=True).StudyInstanceUID)

    def running_job(self) -> JobRecord:
        ledger = self.node.ledger
        job = ledger.open_job(
            ledger.get_series(self.series_uid),
            route="chest-ct",
            model_id="ct-lungs",
            destinations=["pacs"],
            priority=5,
        )
        ledger.transition(job.job_id, JobState.QUEUED)
        return ledger.transition(job.job_id, JobState.RUNNING, detail={"worker": "remote"})


@pytest.fixture
def serve(tmp_path: Path, dicom_factory: DicomFactory) -> Iterator[Callable[..., Serving]]:
    started: list[tuple[Node, MonitorServer]] = []

    def start(**monitor: Any) -> Serving:
        settings = validate_settings(
            {
                "data_dir": str(tmp_path / "node"),
                "node": {
                    "host": LOCALHOST,
                    "port": free_port(),
                    "min_free_disk_mb": 0,
                    "name": "node-a",
                    "receiver_processes": 0,
                },
                "completion": {"series_quiet_seconds": 600},
                "destinations": {"pacs": {"host": LOCALHOST, "port": 9, "ae_title": "PACS"}},
                "monitor": {
                    "port": 0,
                    "tokens": [
                        {"name": "gpu-hosts", "role": "worker", "token": WORKER_TOKEN},
                        {"name": "prometheus", "role": "read-only", "token": READER_TOKEN},
                    ],
                    **monitor,
                },
            }
        )
        node = Node(settings)
        node.start()
        monitor_server = MonitorServer(settings, node.ledger, inspector=None)
        monitor_server.start()
        started.append((node, monitor_server))
        files = dicom_factory.series(5, size=64)
        sent = storescu(files, LOCALHOST, node.port, "PACSAI")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: node.ledger.count_instances() == 5, 30, "5 instances recorded")
        return Serving(settings, node, monitor_server, files)

    yield start
    for node, monitor_server in started:
        monitor_server.stop()
        node.stop()


def remote_worker(tmp_path: Path, serving: Serving, **worker: Any) -> Settings:
    return validate_settings(
        {
            "data_dir": str(tmp_path / "worker"),
            "ledger_url": serving.settings.resolved_ledger_url,
            "destinations": {"pacs": {"host": LOCALHOST, "port": 9, "ae_title": "PACS"}},
            "worker": {"fetch_from": serving.dicomweb, "fetch_token": WORKER_TOKEN, **worker},
        }
    )


def test_a_worker_token_retrieves_the_series_with_the_stored_bytes_unchanged(
    serve: Callable[..., Serving], tmp_path: Path
) -> None:
    serving = serve()
    client = DicomWebClient(serving.dicomweb, token=WORKER_TOKEN)
    folder = tmp_path / "retrieved"
    folder.mkdir()

    parts = client.retrieve(f"studies/{serving.study_uid}/series/{serving.series_uid}", folder)

    stored = {i.sop_instance_uid: Path(i.path) for i in serving.node.ledger.series_instances(
        serving.series_uid
    )}  # fmt: skip
    assert sorted(p.sop_instance_uid or "" for p in parts) == sorted(stored)
    for part in parts:
        assert part.sop_instance_uid is not None
        assert part.path.read_bytes() == stored[part.sop_instance_uid].read_bytes()
    one = next(iter(stored))
    single = client.retrieve(
        f"studies/{serving.study_uid}/series/{serving.series_uid}/instances/{one}", folder
    )
    assert [p.sop_instance_uid for p in single] == [one]


def test_dicomweb_needs_a_worker_token_and_a_worker_token_opens_nothing_else(
    serve: Callable[..., Serving],
) -> None:
    serving = serve()
    series = f"{serving.dicomweb}/studies/{serving.study_uid}/series/{serving.series_uid}"

    assert call(series).status == 401
    assert call(series, token=READER_TOKEN).status == 403
    assert call(series, token=WORKER_TOKEN).status == 200
    assert call(f"{serving.monitor.url}api/jobs", token=WORKER_TOKEN).status == 403
    assert call(serving.monitor.url, token=WORKER_TOKEN).status == 403
    assert call(f"{serving.dicomweb}/studies/1.2.3/series/{serving.series_uid}",
                token=WORKER_TOKEN).status == 404  # fmt: skip


def test_a_remote_worker_fetches_the_series_checked_and_leaves_nothing_after_the_job(
    serve: Callable[..., Serving], tmp_path: Path
) -> None:
    serving = serve()
    job = serving.running_job()
    instances = serving.node.ledger.series_instances(serving.series_uid)
    fetcher = SeriesFetcher(remote_worker(tmp_path, serving), serving.node.ledger)

    series = fetcher.files(job, instances)

    assert series.fetched == 5
    assert series.fetched_bytes == sum(i.size for i in instances)
    for path, stored in zip(series.paths, instances, strict=True):
        assert path.is_relative_to(tmp_path / "worker")
        assert path.read_bytes() == Path(stored.path).read_bytes()
    # Asked again (a retry, or the job after its read-ahead): nothing is fetched twice.
    assert fetcher.files(job, instances).fetched == 0
    fetcher.release(job.job_id)
    assert not (fetcher.folder / job.job_id).exists()


def test_a_series_that_differs_from_the_ledger_is_not_taken(
    serve: Callable[..., Serving], tmp_path: Path
) -> None:
    serving = serve()
    job = serving.running_job()
    instances = serving.node.ledger.series_instances(serving.series_uid)
    with Path(instances[0].path).open("ab") as grown:
        grown.write(b"\0\0")
    fetcher = SeriesFetcher(remote_worker(tmp_path, serving), serving.node.ledger)

    with pytest.raises(DicomWebError, match="the ledger records"):
        fetcher.files(job, instances)


def test_a_node_that_cannot_be_reached_makes_the_job_wait_saying_which_node(
    serve: Callable[..., Serving], tmp_path: Path
) -> None:
    serving = serve()
    job = serving.running_job()
    instances = serving.node.ledger.series_instances(serving.series_uid)
    worker = remote_worker(tmp_path, serving)
    serving.monitor.stop()

    with pytest.raises(NodeUnavailableError, match="waiting for node node-a") as waiting:
        SeriesFetcher(worker, serving.node.ledger).files(job, instances)
    assert waiting.value.node == "node-a"


def test_results_uploaded_twice_are_in_the_outbox_once_on_the_node_that_took_them(
    serve: Callable[..., Serving], dicom_factory: DicomFactory
) -> None:
    serving = serve()
    job = serving.running_job()
    result = dicom_factory.image(study_uid=serving.study_uid, modality="CT", size=8)
    uid = str(dcmread(result, stop_before_pixels=True).SOPInstanceUID)
    client = DicomWebClient(serving.dicomweb, token=WORKER_TOKEN)
    query = {"job": job.job_id, "destination": "pacs"}

    assert client.store([result], study=serving.study_uid, query=query) == [uid]
    assert client.store([result], study=serving.study_uid, query=query) == [uid]

    items = Outbox(serving.node.ledger).items(job_id=job.job_id)
    assert [(i.sop_instance_uid, i.state, i.node) for i in items] == [
        (uid, DeliveryState.PENDING, "node-a")
    ]
    kept = Path(items[0].path)
    assert kept.is_relative_to(serving.settings.results_dir)
    assert kept.read_bytes() == result.read_bytes()


def test_an_object_of_another_study_or_for_another_destination_is_refused(
    serve: Callable[..., Serving], dicom_factory: DicomFactory
) -> None:
    serving = serve()
    job = serving.running_job()
    stranger = dicom_factory.image(size=8)
    client = DicomWebClient(serving.dicomweb, token=WORKER_TOKEN)

    with pytest.raises(DicomWebError, match="refused"):
        client.store([stranger], query={"job": job.job_id, "destination": "pacs"})
    with pytest.raises(DicomWebError, match="HTTP 400"):
        client.store([stranger], query={"job": job.job_id, "destination": "elsewhere"})
    assert Outbox(serving.node.ledger).items(job_id=job.job_id) == []


def test_dicomweb_is_served_over_https_when_the_monitor_has_a_certificate(
    serve: Callable[..., Serving], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    serving = serve(
        tls={"certificate": str(pki.server.certificate), "private_key": str(pki.server.private_key)}
    )
    assert serving.dicomweb.startswith("https://")
    relative = f"studies/{serving.study_uid}/series/{serving.series_uid}"
    folder = tmp_path / "retrieved"
    folder.mkdir()

    trusted = DicomWebClient(
        serving.dicomweb, token=WORKER_TOKEN, ca_certificates=pki.ca_certificate
    )
    assert len(trusted.retrieve(relative, folder)) == 5
    with pytest.raises(ServerUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        DicomWebClient(serving.dicomweb, token=WORKER_TOKEN).retrieve(relative, folder)


def test_the_next_series_is_fetched_and_read_ahead_over_dicomweb_while_a_job_runs(
    serve: Callable[..., Serving], tmp_path: Path
) -> None:
    from workers.prefetch import VolumePrefetcher  # noqa: PLC0415 -- reads pixel data

    serving = serve()
    ledger = serving.node.ledger
    queued = ledger.open_job(
        ledger.get_series(serving.series_uid),
        route="chest-ct",
        model_id="ct-lungs",
        destinations=["pacs"],
        priority=5,
    )
    queued = ledger.transition(queued.job_id, JobState.QUEUED)
    fetcher = SeriesFetcher(remote_worker(tmp_path, serving), ledger)
    prefetcher = VolumePrefetcher(ledger, fetcher, lambda: {"ct-lungs": 0})

    prefetcher.prefetch_next("0" * 32)  # the job running now is another one
    wait_for(lambda: prefetcher.holds(queued.job_id), 30, "the next series read ahead")

    instances = ledger.series_instances(serving.series_uid)
    series = fetcher.files(queued, instances)
    assert series.fetched == 0, "the job finds its series already fetched"
    ahead = prefetcher.take(queued.job_id, series.paths)
    assert ahead is not None
    assert ahead[0].voxels.shape[0] == 5


def test_a_worker_sharing_the_nodes_file_system_reads_in_place_a_node_without_dicomweb(
    serve: Callable[..., Serving], tmp_path: Path
) -> None:
    serving = serve()
    job = serving.running_job()
    instances = serving.node.ledger.series_instances(serving.series_uid)
    # Another machine's name, the node's volume mounted: as workers ran before DICOMweb.
    beside = validate_settings(
        {"data_dir": str(tmp_path / "worker"), "node": {"name": "gpu-host-1"}}
    )

    series = SeriesFetcher(beside, serving.node.ledger).files(job, instances)

    assert series.fetched == 0
    assert series.paths == [Path(i.path) for i in instances]


def test_results_held_for_review_are_kept_by_the_node_for_an_operators_release(
    serve: Callable[..., Serving], dicom_factory: DicomFactory
) -> None:
    from monitor.actions import JobActions  # noqa: PLC0415
    from monitor.auth import Principal  # noqa: PLC0415

    serving = serve()
    job = serving.running_job()
    held = dicom_factory.image(study_uid=serving.study_uid, size=8)
    uid = str(dcmread(held, stop_before_pixels=True).SOPInstanceUID)
    on_worker = f"/var/lib/pacs-ai-worker/results/{job.job_id}/seg.dcm"
    ledger = serving.node.ledger
    ledger.transition(
        job.job_id,
        JobState.NEEDS_REVIEW,
        reason="held for review: test",
        result={
            "deliveries": {"pacs": [["seg", uid, "1.2.840.10008.5.1.4.1.1.2", on_worker]]},
            "files": [on_worker],
        },
    )

    DicomWebClient(serving.dicomweb, token=WORKER_TOKEN).store(
        [held], study=serving.study_uid, query={"job": job.job_id}
    )

    kept = ledger.get_job(job.job_id).result
    node_copy = kept["deliveries"]["pacs"][0][3]
    assert Path(node_copy).is_relative_to(serving.settings.results_dir)
    assert kept["files"] == [node_copy]
    assert Outbox(ledger).items(job_id=job.job_id) == []
    admin = Principal("alice", "admin", "session")
    assert kept["node"] == "node-a", "the node holding the copies releases them"
    JobActions(ledger, node="node-b").perform("release", job.job_id, admin)
    items = Outbox(ledger).items(job_id=job.job_id)
    assert [(i.sop_instance_uid, i.path, i.node) for i in items] == [(uid, node_copy, "node-a")]


def test_the_worker_client_retrieves_a_series_from_another_servers_wado_rs_unchanged(
    dicomweb_orthanc: Orthanc, dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    # Orthanc's plugin answers in its own way (part headers, lengths or none): the
    # client takes either, parts read by their Content-Length or by their boundary.
    files = dicom_factory.series(4, size=64)
    sent = storescu(files, LOCALHOST, dicomweb_orthanc.dicom_port, dicomweb_orthanc.aet)
    assert sent.returncode == 0, sent.stderr
    first = dcmread(files[0], stop_before_pixels=True)
    folder = tmp_path / "retrieved"
    folder.mkdir()

    parts = DicomWebClient(f"{dicomweb_orthanc.url}/dicom-web").retrieve(
        f"studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}", folder
    )

    sent_uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    got = {str(dcmread(p.path).SOPInstanceUID): p for p in parts}
    assert set(got) == sent_uids
    originals = {str(dcmread(f).SOPInstanceUID): dcmread(f) for f in files}
    for uid, part in got.items():
        assert part.size == part.path.stat().st_size
        assert (dcmread(part.path).PixelData) == originals[uid].PixelData


def test_parts_without_a_content_length_are_read_by_their_boundary(tmp_path: Path) -> None:
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

    objects = [bytes([n]) * (300_000 + n) + b"\r\n--not-the-boundary" for n in range(3)]
    boundary = "b0undary"
    body = b"preamble\r\n"
    for number, data in enumerate(objects):
        # The first part says its length, as the node does; the others do not.
        length = f"Content-Length: {len(data)}\r\n" if number == 0 else ""
        body += (
            (
                f"--{boundary}\r\nContent-Type: application/dicom\r\n{length}"
                f"Content-Location: /x/instances/1.2.{number}\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header(
                "Content-Type",
                f'multipart/related; type="application/dicom"; boundary={boundary}',
            )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = DicomWebClient(f"http://{LOCALHOST}:{server.server_address[1]}/dicomweb")
        parts = client.retrieve("studies/1/series/2", tmp_path)
    finally:
        server.shutdown()
        server.server_close()

    assert [p.sop_instance_uid for p in parts] == ["1.2.0", "1.2.1", "1.2.2"]
    assert [p.path.read_bytes() for p in parts] == objects

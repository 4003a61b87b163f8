"""Series and study completion, routing and queueing, on a real Redis, with a test clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydicom import dcmread
from pydicom.uid import generate_uid

from core.jobs import JobState, SeriesState, StudyState
from core.ledger import DeliveryState, Ledger, Outbox
from core.messages import model_queue
from core.queue import JobQueue, make_celery
from core.settings import Settings, validate_settings
from dicom_node.assembly import CompletionWatcher
from dicom_node.recorder import IngestRecorder
from dicom_node.routing import Router
from tests.conftest import DicomFactory
from tests.support.peers import RedisServer
from tests.support.spooling import instance_record

pytestmark = pytest.mark.peers


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Rig:
    """A completion watcher wired to a real ledger and a real Redis, on a test clock."""

    def __init__(
        self, settings: Settings, *, node: str | None = None, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or Clock()
        self.ledger = Ledger(settings.resolved_ledger_url)
        self.ledger.create_schema()
        self.recorder = IngestRecorder(self.ledger, node=node)
        self.recorder.start()
        self.celery = make_celery(settings)
        self.watcher = CompletionWatcher(
            settings.completion,
            ledger=self.ledger,
            recorder=self.recorder,
            router=Router(settings.routes, mode=settings.routing.mode),
            queue=JobQueue(self.celery),
            clock=self.clock,
            node=node,
        )

    def arrive(self, files: list[Path], *, calling_ae: str = "SCANNER") -> None:
        """Record ``files`` as received now (the SCP's part)."""
        for path in files:
            self.recorder.add(
                instance_record(
                    path, received_at=self.clock.now, calling_ae=calling_ae, peer="10.1.2.3:40000"
                )
            )

    def after(self, seconds: float) -> None:
        self.clock.now += seconds
        self.watcher.run_once()

    def close(self) -> None:
        self.recorder.stop()
        self.celery.close()
        self.ledger.close()


@pytest.fixture
def make_rig(tmp_path: Path, redis_server: RedisServer) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(*, node: str | None = None, clock: Clock | None = None, **config: Any) -> Rig:
        raw = {
            "data_dir": str(tmp_path / "data"),
            "broker_url": redis_server.url,
            "destinations": {"pacs": {"host": "127.0.0.1", "port": 4242, "ae_title": "ORTHANC"}},
            "completion": {
                "series_quiet_seconds": 10,
                "study_quiet_seconds": 60,
                **config.pop("completion", {}),
            },
            **config,
        }
        rig = Rig(validate_settings(raw), node=node, clock=clock)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def series_uid(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def ct_route(**extra: Any) -> dict[str, Any]:
    return {
        "name": "chest-ct",
        "match": {"Modality": "CT"},
        "models": ["ct-lungs"],
        "send_results_to": ["pacs"],
        **extra,
    }


def test_a_series_completes_only_after_its_quiet_period(
    make_rig: Any, dicom_factory: DicomFactory, redis_server: RedisServer
) -> None:
    rig = make_rig(routes=[ct_route()])
    files = dicom_factory.series(3)
    rig.arrive(files[:2])
    rig.after(5)
    rig.arrive(files[2:])
    rig.after(9)

    assert rig.ledger.jobs(series_uid=series_uid(files)) == []

    rig.after(1)
    [job] = rig.ledger.jobs(series_uid=series_uid(files))
    assert job.state is JobState.QUEUED
    assert rig.ledger.get_series(series_uid(files)).state is SeriesState.ROUTED
    client = redis.Redis.from_url(redis_server.url)
    assert client.llen(f"{model_queue('ct-lungs')}:5") == 1


def test_time_the_node_was_down_does_not_count_as_quiet_time(
    make_rig: Any, dicom_factory: DicomFactory
) -> None:
    first = make_rig(routes=[ct_route()])
    files = dicom_factory.series(4)
    first.arrive(files[:2])
    first.after(1)
    first.recorder.flush()

    # The node is down for a minute; the restarted one shares the ledger.
    second = make_rig(routes=[ct_route()])
    second.clock.now = first.clock.now + 60
    second.watcher = CompletionWatcher(
        second.settings.completion,
        ledger=second.ledger,
        recorder=second.recorder,
        router=Router(second.settings.routes, mode=second.settings.routing.mode),
        queue=JobQueue(second.celery),
        clock=second.clock,
    )
    second.after(9)
    assert second.ledger.jobs(series_uid=series_uid(files)) == []

    second.arrive(files[2:])
    second.after(10)
    [job] = second.ledger.jobs(series_uid=series_uid(files))
    assert job.state is JobState.QUEUED
    assert second.ledger.get_series(series_uid(files)).instance_count == 4


def test_a_study_route_waits_for_the_whole_study(
    make_rig: Any, dicom_factory: DicomFactory
) -> None:
    rig = make_rig(routes=[ct_route(trigger="study")])
    study = generate_uid()
    ct = dicom_factory.series(2, study_uid=study)
    mr = dicom_factory.series(2, study_uid=study, modality="MR")
    rig.arrive(ct)
    rig.after(10)
    assert rig.ledger.get_series(series_uid(ct)).state is SeriesState.WAITING_STUDY

    rig.arrive(mr)  # a new series 10 s later: the study is not quiet yet
    rig.after(10)
    rig.after(49)
    assert rig.ledger.jobs(series_uid=series_uid(ct)) == []

    rig.after(1)
    [job] = rig.ledger.jobs(series_uid=series_uid(ct))
    assert job.state is JobState.QUEUED
    assert rig.ledger.get_study(study).state is StudyState.ROUTED
    assert rig.ledger.get_series(series_uid(mr)).state is SeriesState.UNROUTED


def test_a_study_route_sees_every_series_of_a_study_whose_series_arrived_at_two_nodes(
    make_rig: Any, dicom_factory: DicomFactory
) -> None:
    a = make_rig(routes=[ct_route(trigger="study")], node="node-a")
    b = make_rig(routes=[ct_route(trigger="study")], node="node-b", clock=a.clock)
    study = generate_uid()
    at_a = dicom_factory.series(2, study_uid=study)
    at_b = dicom_factory.series(2, study_uid=study)
    a.arrive(at_a)
    b.arrive(at_b)
    a.after(10)
    b.after(0)
    assert {a.ledger.get_series(series_uid(s)).state for s in (at_a, at_b)} == {
        SeriesState.WAITING_STUDY
    }

    a.after(60)  # node A decides the study: it holds only one of its series
    b.after(0)

    assert a.ledger.get_study(study).state is StudyState.ROUTED
    for files in (at_a, at_b):
        [job] = a.ledger.jobs(series_uid=series_uid(files))
        assert job.state is JobState.QUEUED
        assert a.ledger.get_series(series_uid(files)).state is SeriesState.ROUTED
    a.after(1)
    b.after(0)
    assert (
        len(a.ledger.jobs(series_uid=series_uid(at_a)) + a.ledger.jobs(series_uid=series_uid(at_b)))
        == 2
    )


def test_a_study_whose_routing_failed_midway_routes_every_series_once_on_the_next_pass(
    make_rig: Any, dicom_factory: DicomFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = make_rig(routes=[ct_route(trigger="study")])
    study = generate_uid()
    series = [dicom_factory.series(2, study_uid=study) for _ in range(3)]
    for files in series:
        rig.arrive(files)
    rig.after(10)
    open_job = rig.ledger.open_job
    calls = 0

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        # Fault injection: the ledger fails while the second series' job is opened.
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("ledger went away")
        return open_job(*args, **kwargs)

    monkeypatch.setattr(rig.ledger, "open_job", fails_once)
    with pytest.raises(ConnectionError, match="ledger went away"):
        rig.after(60)
    assert rig.ledger.get_study(study).state is StudyState.ROUTED
    states = [rig.ledger.get_series(series_uid(files)).state for files in series]
    assert states.count(SeriesState.WAITING_STUDY) == 2

    rig.after(1)

    for files in series:
        [job] = rig.ledger.jobs(series_uid=series_uid(files))
        assert job.state is JobState.QUEUED
        assert rig.ledger.get_series(series_uid(files)).state is SeriesState.ROUTED
    rig.after(1)
    assert sum(len(rig.ledger.jobs(series_uid=series_uid(files))) for files in series) == 3


def test_a_late_instance_at_another_node_while_its_study_is_decided_is_not_overwritten(
    make_rig: Any, dicom_factory: DicomFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_rig(routes=[ct_route(trigger="study")], node="node-a")
    b = make_rig(routes=[ct_route(trigger="study")], node="node-b", clock=a.clock)
    study = generate_uid()
    at_a = dicom_factory.series(2, study_uid=study)
    at_b = dicom_factory.series(3, study_uid=study)
    a.arrive(at_a)
    b.arrive(at_b[:2])
    a.after(10)
    b.after(0)
    decide = a.ledger.set_study_state

    def decide_then_late_instance(*args: Any, **kwargs: Any) -> bool:
        # Fault injection: node B records a late instance of its series just after
        # node A decided the study, before A hands that series to B.
        decided: bool = decide(*args, **kwargs)
        b.arrive(at_b[2:])
        b.recorder.flush()
        return decided

    monkeypatch.setattr(a.ledger, "set_study_state", decide_then_late_instance)
    a.after(60)
    monkeypatch.undo()

    assert a.ledger.get_series(series_uid(at_b)).state is SeriesState.RECEIVING
    b.after(10)
    a.after(60)
    b.after(0)
    for files in (at_a, at_b):
        [job] = a.ledger.jobs(series_uid=series_uid(files))
        assert job.state is JobState.QUEUED


def test_a_study_completes_as_soon_as_its_conditions_are_met(
    make_rig: Any, dicom_factory: DicomFactory
) -> None:
    rig = make_rig(
        routes=[
            ct_route(
                trigger="study", complete_when=[{"match": {"Modality": "CT"}, "min_instances": 4}]
            )
        ]
    )
    study = generate_uid()
    small = dicom_factory.series(2, study_uid=study)
    large = dicom_factory.series(4, study_uid=study)
    rig.arrive(small)
    rig.after(10)
    assert rig.ledger.get_study(study).state is StudyState.RECEIVING

    rig.arrive(large)
    rig.after(10)

    assert rig.ledger.get_study(study).state is StudyState.ROUTED
    assert len(rig.ledger.jobs(series_uid=series_uid(large))) == 1
    assert len(rig.ledger.jobs(series_uid=series_uid(small))) == 1


def test_a_series_that_never_goes_quiet_is_forced_complete_by_policy(
    make_rig: Any, dicom_factory: DicomFactory
) -> None:
    proceed = make_rig(routes=[ct_route()], completion={"force_complete_seconds": 30})
    files = dicom_factory.series(5)
    for index in range(4):  # a sender trickling one instance every 8 s
        proceed.arrive(files[index : index + 1])
        proceed.after(8)

    [job] = proceed.ledger.jobs(series_uid=series_uid(files))
    assert job.state is JobState.QUEUED


def test_the_discard_policy_records_the_series_discarded_with_its_reason(
    make_rig: Any, dicom_factory: DicomFactory
) -> None:
    rig = make_rig(
        routes=[ct_route()], completion={"force_complete_seconds": 30, "force_policy": "discard"}
    )
    files = dicom_factory.series(5)
    for index in range(4):
        rig.arrive(files[index : index + 1])
        rig.after(8)

    series = rig.ledger.get_series(series_uid(files))
    assert series.state is SeriesState.DISCARDED
    assert series.reason is not None and "discarded by completion.force_policy" in series.reason
    assert rig.ledger.jobs(series_uid=series_uid(files)) == []


def test_a_router_mode_route_forwards_the_originals_without_a_model(
    make_rig: Any, dicom_factory: DicomFactory
) -> None:
    rig = make_rig(
        routes=[{"name": "archive", "match": {"Modality": "MR"}, "forward_originals_to": ["pacs"]}]
    )
    files = dicom_factory.series(3, modality="MR")
    rig.arrive(files)
    rig.after(10)

    items = Outbox(rig.ledger).items(series_uid=series_uid(files))
    assert [(i.destination, i.kind.value, i.state) for i in items] == [
        ("pacs", "original", DeliveryState.PENDING)
    ] * 3
    assert rig.ledger.jobs(series_uid=series_uid(files)) == []
    assert rig.ledger.get_series(series_uid(files)).state is SeriesState.ROUTED


def test_results_of_pacs_ai_sent_back_to_the_node_are_never_routed_again(
    make_rig: Any, dicom_factory: DicomFactory
) -> None:
    rig = make_rig(routes=[{"name": "everything", "models": ["ct-lungs"]}])
    ours = dicom_factory.dataset()
    ours.Manufacturer = "pacs-ai"
    ours.Modality = "SEG"
    path = dicom_factory.save(ours)
    rig.arrive([path])
    rig.after(10)

    series = rig.ledger.get_series(series_uid([path]))
    assert series.state is SeriesState.UNROUTED
    assert series.reason is not None and "loop guard" in series.reason


def test_late_instances_rerun_the_job_after_the_next_quiet_period(
    make_rig: Any, dicom_factory: DicomFactory
) -> None:
    rig = make_rig(routes=[ct_route()])
    files = dicom_factory.series(3)
    rig.arrive(files[:2])
    rig.after(10)
    [job] = rig.ledger.jobs(series_uid=series_uid(files))
    for state in (JobState.RUNNING, JobState.DELIVERING, JobState.DONE):
        rig.ledger.transition(job.job_id, state)

    rig.arrive(files[2:])
    rig.after(5)
    assert rig.ledger.get_job(job.job_id).state is JobState.DONE
    rig.after(5)

    again = rig.ledger.jobs(series_uid=series_uid(files))
    assert [j.job_id for j in again] == [job.job_id]
    assert again[0].state is JobState.QUEUED
    assert rig.ledger.get_series(series_uid(files)).instance_count == 3


def test_an_enhanced_series_meets_min_instances_with_its_frames(
    make_rig: Any, dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    import highdicom as hd  # noqa: PLC0415 -- only this test makes an enhanced image

    rig = make_rig(
        routes=[
            ct_route(
                trigger="study", complete_when=[{"match": {"Modality": "CT"}, "min_instances": 4}]
            )
        ]
    )
    study = generate_uid()
    slices = [dcmread(path) for path in dicom_factory.series(4, study_uid=study)]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices,
        series_instance_uid=str(slices[0].SeriesInstanceUID),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    rig.arrive([path])
    rig.after(10)

    # One instance of four frames: the study is complete without its quiet period.
    assert rig.ledger.get_series(series_uid([path])).instance_count == 1
    assert rig.ledger.get_study(study).state is StudyState.ROUTED
    assert len(rig.ledger.jobs(series_uid=series_uid([path]))) == 1

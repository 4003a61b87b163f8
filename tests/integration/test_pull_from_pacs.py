"""Pulling studies from a real Orthanc into the node: C-FIND then C-GET, C-MOVE to a
running node, QIDO-RS then WADO-RS; and what the node's completion watcher does with a
study while it is pulled and once it is."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.jobs import JobState, SeriesState
from core.ledger import Ledger, RetrievalState, StudyPull
from core.ledger.retrievals import runner_name
from core.queue import JobQueue, make_celery
from core.settings import Settings, validate_settings
from dicom_node.assembly import CompletionWatcher
from dicom_node.node import Node
from dicom_node.recorder import IngestRecorder
from dicom_node.routing import Router
from node_services.retrieve.base import (
    RetrieveOutcome,
    SeriesFilter,
    SeriesMatch,
    SeriesSink,
    Source,
    SourceUnavailableError,
    StudyMatch,
    StudyQuery,
    parse_series_filter,
)
from node_services.retrieve.retriever import STUDY_ATTEMPTS, Retriever
from node_services.retrieve.sources import make_source
from pacs_ai.phantom import PhantomSeries, write_chest_ct_series
from tests.support.node import data_set_bytes
from tests.support.peers import LOCALHOST, Orthanc, RedisServer, free_port, wait_for
from tests.support.proxy import StallingProxy
from tests.support.spooling import instance_record

pytestmark = [pytest.mark.peers]

SLICES = 20


@dataclass
class Rig:
    """A PACS (Orthanc, DIMSE and DICOMweb) that knows the node's AE title, settings with
    three ways to pull from it (``pacs``: C-GET, ``pacs-move``: C-MOVE, ``web``: QIDO-RS
    and WADO-RS), and the ledger."""

    tmp_path: Path
    pacs: Orthanc
    node_port: int
    ledger: Ledger

    def settings(self, **extra: Any) -> Settings:
        return settings_for(self.tmp_path, self.pacs, self.node_port, **extra)

    def store(self, seed: int) -> PhantomSeries:
        """Store a small chest CT study (new UIDs per seed) in the PACS."""
        study = write_chest_ct_series(
            self.tmp_path / f"ct-{seed}", slices=SLICES, size=64, seed=seed
        )
        for path in study.paths:
            self.pacs.upload(path.read_bytes())
        return study


def settings_for(tmp_path: Path, pacs: Orthanc, node_port: int, **extra: Any) -> Settings:
    return validate_settings(config_for(tmp_path, pacs, node_port, **extra))


def config_for(
    tmp_path: Path, pacs: Orthanc, node_port: int, *, dimse_port: int | None = None, **extra: Any
) -> dict[str, Any]:
    """The configuration of :func:`settings_for`; ``dimse_port``: where ``pacs`` is reached
    (a proxy in front of the PACS), else the PACS's own port."""
    return {
        "data_dir": str(tmp_path / "data"),
        "node": {
            "ae_title": "PACSAI",
            "host": LOCALHOST,
            "port": node_port,
            "min_free_disk_mb": 0,
            "receiver_processes": 0,
        },
        "destinations": {
            "pacs": {
                "host": LOCALHOST,
                "port": dimse_port or pacs.dicom_port,
                "ae_title": pacs.aet,
                "query_retrieve": {},
            },
            "pacs-move": {
                "host": LOCALHOST,
                "port": pacs.dicom_port,
                "ae_title": pacs.aet,
                "query_retrieve": {"retrieve": "move"},
            },
            "web": {
                "type": "dicomweb",
                "url": f"{pacs.url}/dicom-web",
                "query_retrieve": {},
            },
        },
        "monitor": {"enabled": False},
        **extra,
    }


@pytest.fixture
def rig(tmp_path: Path, dicomweb_orthanc: Orthanc) -> Iterator[Rig]:
    node_port = free_port()
    dicomweb_orthanc.add_modality("pacsai", "PACSAI", LOCALHOST, node_port)
    ledger = Ledger(settings_for(tmp_path, dicomweb_orthanc, node_port).resolved_ledger_url)
    ledger.create_schema()
    yield Rig(tmp_path, dicomweb_orthanc, node_port, ledger)
    ledger.close()


def pull(
    settings: Settings,
    ledger: Ledger,
    source: str,
    study_uid: str,
    *,
    series_filter: SeriesFilter | None = None,
) -> RetrievalState:
    retriever = Retriever(settings, ledger)
    found = retriever.find(source, StudyQuery(study_uid=study_uid))
    assert [s.study_uid for s in found] == [study_uid]
    record = retriever.create(
        kind="run",
        source=source,
        studies=found,
        series_filter=series_filter or SeriesFilter(),
        models=["ct-lungs"],
        destinations=["pacs"],
        shadow=False,
        actor="test",
    )
    return retriever.run(record.retrieval_id).state


@pytest.mark.parametrize("source", ["pacs", "web"])
def test_a_pulled_study_is_filed_byte_for_byte_and_recorded_as_retrieved(
    rig: Rig, source: str
) -> None:
    settings, ledger = rig.settings(), rig.ledger
    study = rig.store(1)

    assert pull(settings, ledger, source, study.study_instance_uid) == RetrievalState.DONE

    [retrieval] = ledger.retrievals()
    [pulled] = ledger.retrieval_studies(retrieval.retrieval_id)
    assert (pulled.state, pulled.series_count, pulled.instance_count) == (
        StudyPull.RETRIEVED,
        1,
        SLICES,
    )
    series = ledger.get_series(study.series_instance_uid)
    assert series.origin == "retrieved"
    assert series.instance_count == SLICES
    assert series.state == SeriesState.RECEIVING, "the node's watcher completes it, not us"
    originals = {path.name: data_set_bytes(path) for path in study.paths}
    filed = sorted(
        data_set_bytes(Path(i.path)) for i in ledger.series_instances(series.series_instance_uid)
    )
    assert filed == sorted(originals.values()), "kept as the PACS sent it, never transcoded"
    for instance in ledger.series_instances(series.series_instance_uid):
        assert Path(instance.path).parent == settings.spool_dir / study.study_instance_uid / (
            study.series_instance_uid
        )


def test_series_the_filter_refuses_are_not_pulled_and_the_study_says_why(rig: Rig) -> None:
    settings, ledger = rig.settings(), rig.ledger
    study = rig.store(2)

    state = pull(
        settings,
        ledger,
        "pacs",
        study.study_instance_uid,
        series_filter=parse_series_filter(["Modality=MR"]),
    )

    assert state == RetrievalState.DONE
    [pulled] = ledger.retrieval_studies(ledger.retrievals()[0].retrieval_id)
    assert pulled.state == StudyPull.EMPTY
    assert pulled.reason == "none of its 1 series passed the series filter"
    assert ledger.count_instances() == 0


def test_a_pacs_that_does_not_know_our_ae_title_is_told_apart_from_one_away(
    tmp_path: Path, make_orthanc: Callable[..., Orthanc]
) -> None:
    stranger = make_orthanc()
    settings = settings_for(tmp_path, stranger, free_port())
    retriever = Retriever(settings, Ledger(settings.resolved_ledger_url))

    with pytest.raises(SourceUnavailableError, match="does it allow our AE title PACSAI"):
        retriever.find("pacs", StudyQuery(study_date="20240101"))


def test_a_study_moved_to_the_running_node_gets_the_runs_models_at_once(
    rig: Rig, redis_server: RedisServer
) -> None:
    # A quiet period far longer than the test: only the pulled state completes the series.
    settings = rig.settings(
        broker_url=redis_server.url,
        completion={"series_quiet_seconds": 600, "check_interval_seconds": 0.1},
    )
    study = rig.store(3)
    with Node(settings) as node:
        ledger = node.ledger
        assert pull(settings, ledger, "pacs-move", study.study_instance_uid) == RetrievalState.DONE

        wait_for(
            lambda: bool(ledger.jobs(series_uid=study.series_instance_uid)),
            30,
            "the pulled series' job",
        )
        [job] = ledger.jobs(series_uid=study.series_instance_uid)
        assert (job.route, job.model_id, job.destinations, job.priority, job.shadow) == (
            "run",
            "ct-lungs",
            ("pacs",),
            5,
            False,
        )
        assert job.state in (JobState.READY, JobState.QUEUED)
        series = ledger.get_series(study.series_instance_uid)
        assert (series.origin, series.calling_ae, series.instance_count) == (
            "retrieved",
            rig.pacs.aet,
            SLICES,
        )
        wait_for(
            lambda: (
                ledger.retrieval_studies(ledger.retrievals()[0].retrieval_id)[0].state
                == StudyPull.ROUTED
            ),
            30,
            "the pulled study routed",
        )


def test_the_watcher_holds_a_study_being_pulled_and_routes_it_once_pulled(
    rig: Rig, redis_server: RedisServer
) -> None:
    settings = rig.settings(broker_url=redis_server.url, completion={"series_quiet_seconds": 10})
    ledger = rig.ledger
    recorder = IngestRecorder(ledger)
    recorder.start()
    celery = make_celery(settings)
    now = [time.time()]
    watcher = CompletionWatcher(
        settings.completion,
        ledger=ledger,
        recorder=recorder,
        router=Router(settings.routes),
        queue=JobQueue(celery),
        clock=lambda: now[0],
    )
    try:
        study = write_chest_ct_series(rig.tmp_path / "ct", slices=SLICES, size=64, seed=4)
        retrieval = ledger.create_retrieval(
            kind="backfill",
            source="pacs",
            models=["ct-lungs"],
            destinations=["pacs"],
            shadow=True,
            query={},
            actor="test",
        )
        ledger.add_retrieval_studies(retrieval.retrieval_id, [study.study_instance_uid])
        ledger.set_retrieval_study(
            retrieval.retrieval_id, study.study_instance_uid, StudyPull.RETRIEVING
        )
        ledger.record_instances(
            [instance_record(p, received_at=now[0]) for p in study.paths[:10]], origin="retrieved"
        )

        now[0] += 3600
        watcher.run_once()
        assert ledger.get_series(study.series_instance_uid).state == SeriesState.RECEIVING
        assert ledger.jobs(series_uid=study.series_instance_uid) == []

        ledger.record_instances(
            [instance_record(p, received_at=now[0]) for p in study.paths[10:]], origin="retrieved"
        )
        ledger.set_retrieval_study(
            retrieval.retrieval_id, study.study_instance_uid, StudyPull.RETRIEVED
        )
        watcher.run_once()

        [job] = ledger.jobs(series_uid=study.series_instance_uid)
        assert (job.route, job.priority, job.shadow, job.state) == (
            "backfill",
            9,
            True,
            JobState.QUEUED,
        )
        assert ledger.get_series(study.series_instance_uid).state == SeriesState.ROUTED
        [pulled] = ledger.retrieval_studies(retrieval.retrieval_id)
        assert pulled.state == StudyPull.ROUTED
        assert ledger.retrieval_claim(study.study_instance_uid) is None
    finally:
        recorder.stop()
        celery.close()


def test_a_run_killed_mid_retrieval_is_ended_as_interrupted_by_the_next_run_which_finishes(
    rig: Rig,
) -> None:
    study = rig.store(7)
    ledger = rig.ledger
    # The PACS reached through a proxy that holds the C-GET once part of the series came.
    with StallingProxy(rig.pacs.dicom_port, stall_after=32 * 1024) as proxy:
        config = rig.tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(config_for(rig.tmp_path, rig.pacs, rig.node_port, dimse_port=proxy.port))
        )
        command = [
            sys.executable, "-m", "pacs_ai", "run", "--config", str(config), "--from", "pacs",
            "--study", study.study_instance_uid, "--models", "ct-lungs", "--keep", "--no-wait",
        ]  # fmt: skip
        with (rig.tmp_path / "killed.log").open("w") as log:
            killed = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(proxy.stalled.is_set, 120, "the C-GET under way")
            [first] = ledger.retrievals()
            assert first.state == RetrievalState.RUNNING
            assert ledger.studies_in_retrieval()[0] == {study.study_instance_uid}
        finally:
            killed.kill()  # SIGKILL: no handler runs, nothing is written
            killed.wait()
        proxy.release()
        assert ledger.get_retrieval(first.retrieval_id).state == RetrievalState.RUNNING

        again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)

    assert again.returncode == 0, again.stdout + again.stderr
    old = ledger.get_retrieval(first.retrieval_id)
    assert old.state == RetrievalState.FAILED
    assert old.reason == (
        f"interrupted: its process {runner_name(pid=killed.pid)} ended without "
        "finishing it; a new run pulls it again"
    )
    [left] = ledger.retrieval_studies(old.retrieval_id)
    assert (left.state, left.reason) == (StudyPull.PENDING, "interrupted while being pulled")
    [second] = [r for r in ledger.retrievals() if r.retrieval_id != old.retrieval_id]
    assert second.state == RetrievalState.DONE
    [pulled] = ledger.retrieval_studies(second.retrieval_id)
    assert (pulled.state, pulled.instance_count) == (StudyPull.RETRIEVED, SLICES)
    series = ledger.get_series(study.series_instance_uid)
    assert (series.origin, series.instance_count) == ("retrieved", SLICES)
    assert ledger.studies_in_retrieval() == (frozenset(), frozenset({study.study_instance_uid}))


def test_a_study_that_failed_is_pulled_again_when_its_backfill_resumes(rig: Rig) -> None:
    study = rig.store(8)
    ledger = rig.ledger
    no_room = config_for(rig.tmp_path, rig.pacs, rig.node_port)
    no_room["node"]["min_free_disk_mb"] = 10**9  # the spool refuses every instance
    found = Retriever(rig.settings(), ledger).find(
        "pacs", StudyQuery(study_uid=study.study_instance_uid)
    )
    record = Retriever(rig.settings(), ledger).create(
        kind="backfill",
        source="pacs",
        studies=found,
        series_filter=SeriesFilter(),
        models=["ct-lungs"],
        destinations=[],
        shadow=True,
        actor="test",
        key="failed-then-resumed",
        state=RetrievalState.STOPPED,
    )

    first = Retriever(validate_settings(no_room), ledger).run(record.retrieval_id)
    [failed] = ledger.retrieval_studies(record.retrieval_id)
    resumed = Retriever(rig.settings(), ledger).run(record.retrieval_id)

    assert first.state == RetrievalState.DONE
    assert failed.state == StudyPull.FAILED
    assert failed.reason is not None
    assert failed.reason.startswith(f"attempt 1 of {STUDY_ATTEMPTS}: ")
    assert resumed.state == RetrievalState.DONE
    [pulled] = ledger.retrieval_studies(record.retrieval_id)
    assert (pulled.state, pulled.attempts, pulled.reason, pulled.instance_count) == (
        StudyPull.RETRIEVED,
        1,
        None,
        SLICES,
    )
    assert ledger.get_series(study.series_instance_uid).instance_count == SLICES


def test_a_study_fails_at_most_the_bound_of_times_however_often_it_was_stopped_before(
    rig: Rig, make_orthanc: Callable[..., Orthanc]
) -> None:
    study = rig.store(9)
    ledger = rig.ledger
    no_room = config_for(rig.tmp_path, rig.pacs, rig.node_port)
    no_room["node"]["min_free_disk_mb"] = 10**9
    retriever = Retriever(validate_settings(no_room), ledger)
    # A PACS that turns us away (it does not know our AE title): SourceUnavailableError.
    stranger = make_orthanc()
    away = config_for(rig.tmp_path, rig.pacs, rig.node_port, dimse_port=stranger.dicom_port)
    record = retriever.create(
        kind="backfill",
        source="pacs",
        studies=retriever.find("pacs", StudyQuery(study_uid=study.study_instance_uid)),
        series_filter=SeriesFilter(),
        models=["ct-lungs"],
        destinations=[],
        shadow=True,
        actor="test",
        state=RetrievalState.STOPPED,
    )

    for _away in range(2):  # the PACS away once the study started: stopped, no failure
        stopped = Retriever(validate_settings(away), ledger).run(record.retrieval_id)
        assert stopped.state == RetrievalState.STOPPED
    reasons = []
    for _resume in range(STUDY_ATTEMPTS + 1):
        retriever.run(record.retrieval_id)
        [study_now] = ledger.retrieval_studies(record.retrieval_id)
        reasons.append((study_now.reason or "").partition(": ")[0])

    [failed] = ledger.retrieval_studies(record.retrieval_id)
    assert (failed.state, failed.attempts) == (StudyPull.FAILED, STUDY_ATTEMPTS)
    assert reasons == [
        "attempt 1 of 3",
        "attempt 2 of 3",
        "attempt 3 of 3",
        "attempt 3 of 3",  # not pulled again: the bound is reached
    ]


class TakenOverWhilePulling:
    """The PACS, as a run that stalled (its lease lapsed) sees it: while it retrieves a
    series, another process finds the run stale, takes it over and pulls the study."""

    def __init__(self, source: Source, ledger: Ledger, retrieval_id: str) -> None:
        self.source, self.ledger, self.retrieval_id = source, ledger, retrieval_id
        self.name, self.method = source.name, source.method

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        return self.source.find_studies(query)

    def find_series(self, study_uid: str, *, keys: tuple[str, ...] = ()) -> list[SeriesMatch]:
        return self.source.find_series(study_uid, keys=keys)

    def retrieve_series(self, study_uid: str, series_uid: str, sink: SeriesSink) -> RetrieveOutcome:
        outcome = self.source.retrieve_series(study_uid, series_uid, sink)
        self.ledger.claim_retrieval(self.retrieval_id, "elsewhere:2", stale_after=0)
        self.ledger.set_retrieval_study(
            self.retrieval_id, study_uid, StudyPull.RETRIEVING, runner="elsewhere:2"
        )
        return outcome


def test_a_run_whose_lease_was_taken_writes_nothing_over_the_process_that_took_it(
    rig: Rig,
) -> None:
    study = rig.store(10)
    ledger = rig.ledger
    settings = rig.settings()
    found = Retriever(settings, ledger).find("pacs", StudyQuery(study_uid=study.study_instance_uid))
    record = Retriever(settings, ledger).create(
        kind="backfill",
        source="pacs",
        studies=found,
        series_filter=SeriesFilter(),
        models=["ct-lungs"],
        destinations=[],
        shadow=True,
        actor="test",
        state=RetrievalState.STOPPED,
    )
    slow = Retriever(
        settings,
        ledger,
        source_factory=lambda s, name: TakenOverWhilePulling(
            make_source(s, name), ledger, record.retrieval_id
        ),
    )

    ended = slow.run(record.retrieval_id)

    assert (ended.state, ended.runner, ended.reason) == (
        RetrievalState.RUNNING,
        "elsewhere:2",
        None,
    )
    [pulling] = ledger.retrieval_studies(record.retrieval_id)
    assert (pulling.state, pulling.attempts, pulling.reason) == (StudyPull.RETRIEVING, 0, None)
    assert ledger.get_series(study.series_instance_uid).state == SeriesState.RECEIVING

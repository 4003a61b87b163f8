"""Two nodes sharing one PostgreSQL ledger: each records the instances it holds, and a
series completes once, however their writes interleave."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from core.jobs import InstanceRecord, JobState, SeriesState, StudyState
from core.ledger import InvalidTransitionError, Ledger, Outbox, Presence, result_items
from core.ledger.series import CLAIM_EXPIRES_SECONDS
from tests.support.postgres import fresh_database

pytestmark = [pytest.mark.peers]

T = TypeVar("T")
STUDY = "1.2.826.0.1.3680043.10.543.1"
SERIES = "1.2.826.0.1.3680043.10.543.2"


@pytest.fixture
def two_nodes() -> Iterator[tuple[Ledger, Ledger]]:
    """The ledgers of node A and node B: two connection pools on one database."""
    with fresh_database() as url:
        first, second = Ledger(url), Ledger(url)
        first.create_schema()
        try:
            yield first, second
        finally:
            first.close()
            second.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def two_nodes_on_either(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Ledger, Ledger]]:
    """Node A's and node B's ledgers on one SQLite file or one PostgreSQL database."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        else:
            url = stack.enter_context(fresh_database())
        first, second = Ledger(url), Ledger(url)
        first.create_schema()
        try:
            yield first, second
        finally:
            first.close()
            second.close()


def instance(
    number: int,
    *,
    at: float,
    node_path: str,
    series: str = SERIES,
    study: str = STUDY,
) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=f"{series}.{number}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid=series,
        study_instance_uid=study,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"{node_path}/{number}.dcm",
        size=1000 + number,
        received_at=at,
        calling_ae="SCANNER",
        called_ae="PACSAI",
        peer="10.0.0.1:4000",
        modality="CT",
    )


def at_once(*calls: Callable[[], T]) -> list[T]:
    """Run ``calls`` in threads released together; return their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], T]) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except BaseException as exc:  # noqa: BLE001 -- reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return [r for r in results if r is not None]


def test_halves_of_a_new_series_recorded_by_two_nodes_at_once_make_one_series(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes
    now = time.time()
    at_once(
        lambda: a.record_instances(
            [instance(n, at=now + n, node_path="/a") for n in range(0, 20)], node="node-a"
        ),
        lambda: b.record_instances(
            [instance(n, at=now + n, node_path="/b") for n in range(20, 40)], node="node-b"
        ),
    )
    series = a.get_series(SERIES)
    assert series.instance_count == 40
    assert series.last_received_at == now + 39
    held = {i.node for i in a.series_instances(SERIES)}
    assert held == {"node-a", "node-b"}
    assert len(a.studies()) == 1


def test_of_two_nodes_claiming_a_quiet_series_at_once_exactly_one_completes_it(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes
    now = time.time()
    a.record_instances([instance(1, at=now, node_path="/a")], node="node-a")
    b.record_instances([instance(2, at=now + 1, node_path="/b")], node="node-b")
    quiet_a = a.quiet_series(last_received_before=now + 100)[0]
    quiet_b = b.quiet_series(last_received_before=now + 100)[0]

    taken = at_once(
        lambda: a.claim_completion(quiet_a, now=now + 100),
        lambda: b.claim_completion(quiet_b, now=now + 100),
    )

    assert sorted(taken) == [False, True]
    # Claimed and not routed: nobody takes it again until the claim expires ...
    assert not a.claim_completion(quiet_a, now=now + 200)
    # ... then a node that died after claiming leaves it to another.
    assert b.claim_completion(quiet_b, now=now + 101 + CLAIM_EXPIRES_SECONDS)


def test_a_late_instance_makes_a_completed_series_claimable_again(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes
    now = time.time()
    a.record_instances([instance(1, at=now, node_path="/a")], node="node-a")
    assert a.claim_completion(a.quiet_series(last_received_before=now + 10)[0], now=now + 10)
    a.set_series_state(SERIES, SeriesState.ROUTED, completed_at=now + 10)

    b.record_instances([instance(2, at=now + 20, node_path="/b")], node="node-b")
    again = b.quiet_series(last_received_before=now + 30)[0]

    assert b.claim_completion(again, now=now + 30)
    assert not a.claim_completion(again, now=now + 30)


def test_two_nodes_opening_the_job_of_a_series_at_once_make_one_job(
    two_nodes: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes
    now = time.time()
    a.record_instances([instance(1, at=now, node_path="/a")], node="node-a")
    series = a.get_series(SERIES)

    def open_with(ledger: Ledger) -> str:
        job = ledger.open_job(
            series, route="chest-ct", model_id="ct-lungs", destinations=["pacs"], priority=5
        )
        return job.job_id

    ids = at_once(lambda: open_with(a), lambda: open_with(b))

    assert ids[0] == ids[1]
    assert len(a.jobs(series_uid=SERIES)) == 1
    readies = [e for e in a.events(ids[0]) if e.state == JobState.READY]
    assert len(readies) == 1


def test_a_ready_job_is_queued_by_one_node_only(two_nodes: tuple[Ledger, Ledger]) -> None:
    a, b = two_nodes
    a.record_instances([instance(1, at=time.time(), node_path="/a")], node="node-a")
    job = a.open_job(
        a.get_series(SERIES), route="r", model_id="m", destinations=["pacs"], priority=5
    )

    def queue(ledger: Ledger) -> bool:
        try:
            ledger.transition(job.job_id, JobState.QUEUED, expected={JobState.READY})
        except InvalidTransitionError:  # the other node queued it first
            return False
        return True

    assert sorted(at_once(lambda: queue(a), lambda: queue(b))) == [False, True]
    queued = [e for e in a.events(job.job_id) if e.state == JobState.QUEUED]
    assert len(queued) == 1


def test_each_node_delivers_only_what_its_own_disk_holds(two_nodes: tuple[Ledger, Ledger]) -> None:
    a, b = two_nodes
    outbox = Outbox(a)
    for node in ("node-a", "node-b"):
        outbox.add(
            result_items(
                job_id="0" * 32,
                series_uid=SERIES,
                route="r",
                destinations=[f"pacs-{node}"],
                files=[(f"1.2.3.{node[-1]}", "1.2.840.10008.5.1.4.1.1.66.4", Path(f"/{node}/x"))],
                node=node,
            )
        )
    assert {i.destination for i in outbox.due(node="node-a")} == {"pacs-node-a"}
    assert {i.destination for i in Outbox(b).due(node="node-b")} == {"pacs-node-b"}


def test_nodes_record_where_workers_fetch_what_they_hold(two_nodes: tuple[Ledger, Ledger]) -> None:
    a, b = two_nodes
    Presence(a).node_heartbeat(
        "pacs-ai-node@a:1",
        host="a",
        pid=1,
        ae_title="PACSAI",
        port=11112,
        node="node-a",
        dicomweb_url="https://a.example.org:8090/dicomweb",
    )
    Presence(b).node_heartbeat(
        "pacs-ai-node@b:2", host="b", pid=2, ae_title="PACSAI", port=11112, node="node-b"
    )
    endpoints = Presence(a).node_endpoints()
    assert endpoints["node-a"].dicomweb_url == "https://a.example.org:8090/dicomweb"
    assert endpoints["node-b"].dicomweb_url is None


def test_a_held_result_released_on_another_node_is_delivered_by_the_node_holding_its_files(
    two_nodes: tuple[Ledger, Ledger], tmp_path: Path
) -> None:
    from monitor.actions import JobActions  # noqa: PLC0415
    from monitor.auth import Principal  # noqa: PLC0415

    a, b = two_nodes
    b.record_instances([instance(1, at=time.time(), node_path="/b")], node="node-b")
    job = b.open_job(
        b.get_series(SERIES), route="r", model_id="m", destinations=["pacs"], priority=5
    )
    seg = tmp_path / "node-b" / "results" / job.job_id / "seg.dcm"
    seg.parent.mkdir(parents=True)
    seg.write_bytes(b"DICM")
    b.transition(job.job_id, JobState.QUEUED)
    b.transition(job.job_id, JobState.RUNNING)
    # As a worker beside node B records a result it holds (workers/execute.py).
    b.transition(
        job.job_id,
        JobState.NEEDS_REVIEW,
        reason="held for review: test",
        result={
            "deliveries": {"pacs": [["seg", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.66.4", str(seg)]]},
            "files": [str(seg)],
            "node": "node-b",
        },
    )
    seg.rename(seg.with_suffix(".elsewhere"))  # not on node A's disk, where it is released

    admin = Principal("alice", "admin", "session")
    JobActions(a, node="node-a").perform("release", job.job_id, admin)

    assert [i.node for i in Outbox(a).items(job_id=job.job_id)] == ["node-b"]
    assert Outbox(a).due(node="node-a") == []
    assert [i.path for i in Outbox(b).due(node="node-b")] == [str(seg)]


def test_of_two_nodes_moving_a_series_from_the_same_state_at_once_exactly_one_moves_it(
    two_nodes_on_either: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes_on_either
    now = time.time()
    a.record_instances([instance(1, at=now, node_path="/a")], node="node-a")
    a.set_series_state(SERIES, SeriesState.WAITING_STUDY, completed_at=now)

    def route(ledger: Ledger) -> bool:
        return ledger.set_series_state(
            SERIES, SeriesState.ROUTED, expected=SeriesState.WAITING_STUDY
        )

    assert sorted(at_once(lambda: route(a), lambda: route(b))) == [False, True]
    # A node that read the series before the other moved it: its stale claim fails.
    assert not route(b)
    assert a.get_series(SERIES).state is SeriesState.ROUTED


def test_a_study_routes_claim_is_held_by_one_node_until_released_or_expired(
    two_nodes_on_either: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes_on_either
    now = time.time()
    a.record_instances([instance(1, at=now, node_path="/a")], node="node-a")
    assert a.claim_completion(a.quiet_series(last_received_before=now + 10)[0], now=now + 10)
    a.set_series_state(SERIES, SeriesState.WAITING_STUDY, completed_at=now + 10)

    taken = at_once(
        lambda: a.claim_study_routes(SERIES, now=now + 20),
        lambda: b.claim_study_routes(SERIES, now=now + 20),
    )

    assert sorted(taken) == [False, True]
    assert not b.claim_study_routes(SERIES, now=now + 30)
    # A node that died while applying the routes leaves them to another ...
    assert b.claim_study_routes(SERIES, now=now + 21 + CLAIM_EXPIRES_SECONDS)
    # ... and one that failed releases them at once.
    b.release_study_routes(SERIES)
    assert a.claim_study_routes(SERIES, now=now + 22 + CLAIM_EXPIRES_SECONDS)


def test_a_late_instance_makes_a_series_claimed_for_its_study_routes_claimable_again(
    two_nodes_on_either: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes_on_either
    now = time.time()
    a.record_instances([instance(1, at=now, node_path="/a")], node="node-a")
    a.set_series_state(SERIES, SeriesState.WAITING_STUDY, completed_at=now + 10)
    assert a.claim_study_routes(SERIES, now=now + 20)

    b.record_instances([instance(2, at=now + 25, node_path="/b")], node="node-b")

    assert b.claim_completion(b.quiet_series(last_received_before=now + 40)[0], now=now + 40)


def test_waiting_series_of_decided_studies_come_oldest_first_whatever_waits_elsewhere(
    two_nodes_on_either: tuple[Ledger, Ledger],
) -> None:
    a, b = two_nodes_on_either
    now = time.time()
    decided = [f"{SERIES}.{n}" for n in range(3)]
    for n, series in enumerate(decided):
        a.record_instances([instance(1, at=now + n, node_path="/a", series=series)], node="node-a")
    # A newer study still receiving, its many series waiting: they must not crowd out.
    for n in range(5):
        series = f"{SERIES}.1{n}"
        b.record_instances(
            [instance(1, at=now + 100 + n, node_path="/b", series=series, study=f"{STUDY}.9")],
            node="node-b",
        )
        b.set_series_state(series, SeriesState.WAITING_STUDY)
    for series in decided:
        a.set_series_state(series, SeriesState.WAITING_STUDY)
    a.set_study_state(STUDY, StudyState.ROUTED, completed_at=now + 60)

    first_two = a.waiting_series_of_routed_studies(limit=2)

    assert [s.series_instance_uid for s in first_two] == decided[:2]
    assert [s.series_instance_uid for s in b.waiting_series_of_routed_studies()] == decided
    assert b.waiting_series_of_routed_studies(node="node-b") == []
    assert len(a.waiting_series_of_routed_studies(node="node-a")) == 3

"""Ledger benchmark: does the ledger on PostgreSQL stay as fast as its history grows?

``python benchmarks/ledger.py`` fills a throwaway PostgreSQL database (``--postgres``, a
server with trust authentication; default 127.0.0.1:5432) per size with that many finished
jobs (``--jobs 1000 50000``), each on its own series of ``--instances`` instances (20: the
larger size holds a million), and times what grows with the ledger:

* **completion check**: the ledger reads of one round of the node's completion loop
  (quiet series, forced-complete candidates, studies still receiving, READY jobs, studies
  being pulled), with 20 series receiving;
* **routing**: a completed series claimed, its instances read, its job opened, the series
  marked ROUTED and the job QUEUED (per series);
* **dashboard page**: ``GET /`` of the monitor, served as by ``pacs-ai serve``;
* **/metrics**: a scrape after the first.

The jobs are spread at a constant rate of ``--per-day`` (1,000 a day: the larger ledger is
50 days of history, not 50 times the traffic), so what the dashboard shows of the recent
hours is the same at both sizes and only the history grows: the question is whether old
rows slow the node down. 97 % of the jobs are DONE with two results delivered, 2 % FAILED
with a dead result, 1 % NOT_APPLICABLE; 2 % more series were not routed. Times are the
median of ``--runs``; the table ends with the ratio larger/smaller (target: none above 2).

The fill writes the tables directly with ``INSERT ... SELECT generate_series`` (the only
place outside ``core/ledger`` that does: it is a benchmark), sets the gauges the ledger
keeps as it goes (``Ledger.recount_states``), then runs VACUUM ANALYZE, as autovacuum
would have done on a ledger that grew over weeks. The ledger is made by its migrations
(``Ledger.create_schema``), so it has the indexes of the release being measured.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.jobs import InstanceRecord, JobState, SeriesRecord, SeriesState, StudyState  # noqa: E402
from core.ledger import Ledger, Presence, WorkerStatus  # noqa: E402
from core.settings import Settings, validate_settings  # noqa: E402
from monitor.web.server import MonitorServer  # noqa: E402

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DAY = 86_400.0
#: Series receiving while the figures are taken (the completion loop reads them).
RECEIVING = 20
#: Seconds a series must be quiet to complete (the node's default order of magnitude).
QUIET = 15.0


def fill(conn: Connection, *, jobs: int, per_series: int, per_day: int, now: float) -> None:
    """``jobs`` finished jobs, one per series of ``per_series`` instances, the newest
    finished an hour ago, one every ``DAY / per_day`` seconds before."""
    step = DAY / per_day
    start = now - 3600 - jobs * step
    values = {"k": per_series, "ct": CT, "ts": EXPLICIT}
    # s: the job's number; t: its series' first arrival (instances 0.5 s apart).
    conn.execute(
        text(
            "CREATE TEMPORARY TABLE history ON COMMIT DROP AS "
            "SELECT s, :start + s * :step AS t FROM generate_series(0, :n - 1) AS s"
        ),
        {"n": jobs, "start": start, "step": step},
    )
    statements = [
        """INSERT INTO series (series_uid, study_uid, modality, calling_ae, called_ae, peer,
              first_received_at, last_received_at, instance_count, resent_count, state,
              completed_at, updated_at, receiving_since)
            SELECT '2.25.1.' || s, '2.25.3.' || s, 'CT', 'CT' || (s % 4), 'PACSAI', '10.0.0.1',
              t, t + (:k - 1) * 0.5, :k, 0, 'ROUTED', t + :k * 0.5 + 15, t + :k * 0.5 + 15, t
            FROM history""",
        # Series no rule matched (2 % more), without instances kept.
        """INSERT INTO series (series_uid, study_uid, modality, calling_ae, called_ae, peer,
              first_received_at, last_received_at, instance_count, resent_count, state,
              reason, completed_at, updated_at, receiving_since)
            SELECT '2.25.2.' || s, '2.25.3.' || s, 'MR', 'MR1', 'PACSAI', '10.0.0.2', t, t, 1, 0,
              'UNROUTED', 'no rule matched', t + 15, t + 15, t
            FROM history WHERE s % 50 = 7""",
        """INSERT INTO studies (study_uid, first_received_at, last_received_at,
              last_new_series_at, series_count, state, completed_at, updated_at)
            SELECT '2.25.3.' || s, t, t + :k * 0.5, t, 1, 'ROUTED', t + 60, t + 60
            FROM history""",
        """INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid,
              transfer_syntax_uid, path, size, received_at, receive_count)
            SELECT '2.25.1.' || s || '.' || i, '2.25.1.' || s, '2.25.3.' || s, :ct, :ts,
              '/spool/2.25.3.' || s || '/2.25.1.' || s || '/' || i || '.dcm', 525000,
              t + i * 0.5, 1
            FROM history, generate_series(0, :k - 1) AS i""",
        """INSERT INTO jobs (job_id, series_uid, study_uid, route, model_id, destinations,
              priority, state, reason, attempts, created_at, updated_at, worker, rerun_pending,
              input_received_at)
            SELECT md5('job' || s), '2.25.1.' || s, '2.25.3.' || s, 'chest-ct', 'ct-lungs',
              '["pacs"]', 5,
              CASE WHEN s % 50 = 0 THEN 'FAILED' WHEN s % 100 = 1 THEN 'NOT_APPLICABLE'
                   ELSE 'DONE' END,
              CASE WHEN s % 50 = 0 THEN 'destination pacs refused the association'
                   WHEN s % 100 = 1 THEN 'too few slices' END,
              1, t + 30, t + 60, 'gpu0', 0, t + (:k - 1) * 0.5
            FROM history""",
        """INSERT INTO job_events (job_id, state, kind, at, reason, detail)
            SELECT md5('job' || s), e.state, 'transition', t + e.dt, NULL, NULL
            FROM history,
              (VALUES ('RECEIVING', 0.0), ('READY', 30.0), ('QUEUED', 30.0), ('RUNNING', 31.0),
                      ('DELIVERING', 50.0)) AS e(state, dt)
            WHERE s % 100 != 1
            UNION ALL
            SELECT md5('job' || s), CASE WHEN s % 50 = 0 THEN 'FAILED' ELSE 'DONE' END,
              'transition', t + 60, NULL, NULL
            FROM history WHERE s % 100 != 1
            UNION ALL
            SELECT md5('job' || s), e.state, 'transition', t + e.dt, 'too few slices', NULL
            FROM history, (VALUES ('RECEIVING', 0.0), ('NOT_APPLICABLE', 30.0)) AS e(state, dt)
            WHERE s % 100 = 1""",
        """INSERT INTO outbox (item_id, destination, kind, job_id, series_uid, route,
              sop_instance_uid, sop_class_uid, path, state, attempts, last_status, last_error,
              next_attempt_at, created_at, updated_at, sent_at)
            SELECT md5('item' || s || '.' || r), 'pacs', 'result', md5('job' || s), '2.25.1.' || s,
              'chest-ct', '2.25.4.' || s || '.' || r, :ct, '/results/' || s || '/' || r,
              CASE WHEN s % 50 = 0 THEN 'DEAD' ELSE 'SENT' END,
              CASE WHEN s % 50 = 0 THEN 6 ELSE 1 END,
              CASE WHEN s % 50 = 0 THEN NULL ELSE 0 END,
              CASE WHEN s % 50 = 0 THEN 'association refused' END,
              t + 50, t + 50, t + 55, CASE WHEN s % 50 = 0 THEN NULL ELSE t + 55 END
            FROM history, generate_series(0, 1) AS r WHERE s % 100 != 1""",
        """INSERT INTO quarantine (quarantine_id, at, stage, reason, path, series_uid, job_id)
            SELECT md5('q' || s), t + 60, CASE WHEN s % 400 = 0 THEN 'job' ELSE 'receive' END,
              'kept apart', '/quarantine/' || s, '2.25.1.' || s,
              CASE WHEN s % 400 = 0 THEN md5('job' || s) END
            FROM history WHERE s % 200 = 0""",
        """INSERT INTO audit_log (at, actor, role, action, job_id, outcome, detail)
            SELECT t + 70, 'ops', 'admin', 'retry', md5('job' || s), 'ok', '{}'
            FROM history WHERE s % 500 = 0""",
    ]
    for statement in statements:
        conn.execute(text(statement), values)


def record(
    ledger: Ledger, uid: str, *, per_series: int, last_at: float, state: SeriesState | None = None
) -> SeriesRecord:
    """A series of ``per_series`` instances whose last arrived at ``last_at``."""
    ledger.record_instances(
        [
            InstanceRecord(
                sop_instance_uid=f"{uid}.{i}",
                sop_class_uid=CT,
                series_instance_uid=uid,
                study_instance_uid=f"{uid}.0",
                transfer_syntax_uid=EXPLICIT,
                path=f"/spool/{uid}/{i}.dcm",
                size=525_000,
                received_at=last_at - (per_series - 1 - i) * 0.5,
                calling_ae="CT1",
                called_ae="PACSAI",
                peer="10.0.0.1",
                modality="CT",
            )
            for i in range(per_series)
        ]
    )
    if state is not None:
        ledger.set_series_state(uid, state, completed_at=last_at + QUIET)
    return ledger.get_series(uid)


def live(ledger: Ledger, *, per_series: int, now: float) -> None:
    """What a running node has besides its history: series arriving, jobs queued and
    running, workers and the node itself alive."""
    for n in range(RECEIVING):
        record(ledger, f"2.25.6.{n}", per_series=per_series, last_at=now - 2 * n)
    for n in range(10):
        series = record(
            ledger, f"2.25.7.{n}", per_series=per_series, last_at=now - 60, state=SeriesState.ROUTED
        )
        job = ledger.open_job(
            series, route="chest-ct", model_id="ct-lungs", destinations=["pacs"], priority=5
        )
        ledger.transition(job.job_id, JobState.QUEUED)
        if n < 2:
            ledger.transition(job.job_id, JobState.RUNNING, detail={"worker": f"gpu{n}"})
    for n in range(2):
        status = WorkerStatus(gpu_name="NVIDIA H200", gpu_memory_used=3e9, gpu_memory_total=1.4e11)
        ledger.worker_heartbeat(
            f"gpu{n}", host="gpu-host", pid=100 + n, device=f"cuda:{n}", models=["ct-lungs"],
            status=status,
        )  # fmt: skip
    Presence(ledger).node_heartbeat("node", host="node-host", pid=1, ae_title="PACSAI", port=104)


def completion_check(ledger: Ledger) -> None:
    """The ledger reads of one round of the node's completion loop
    (:meth:`dicom_node.assembly.Assembler.run_once`) when nothing completes."""
    now = time.time()
    ledger.studies_in_retrieval()
    ledger.quiet_series(last_received_before=now - QUIET)
    ledger.quiet_series(last_received_before=now)
    ledger.studies(state=StudyState.RECEIVING)
    ledger.jobs(states=[JobState.READY], limit=1000)


def route(ledger: Ledger, series: SeriesRecord) -> None:
    """What the node does to a series that completed, routed to one model."""
    now = time.time()
    assert ledger.claim_completion(series, now=now)
    ledger.series_instances(series.series_instance_uid)
    job = ledger.open_job(
        series, route="chest-ct", model_id="ct-lungs", destinations=["pacs"], priority=5
    )
    ledger.set_series_state(series.series_instance_uid, SeriesState.ROUTED, completed_at=now)
    ledger.transition(job.job_id, JobState.QUEUED)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as answer:  # noqa: S310 -- loopback
        return bytes(answer.read())


@contextmanager
def database(admin_url: str) -> Iterator[str]:
    """A database of its own on the server of ``admin_url``, dropped afterwards."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"pacs_ai_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Rig:
    """A filled ledger of one size, its monitor serving, series waiting to be routed."""

    jobs: int
    ledger: Ledger
    base: str
    waiting: list[SeriesRecord]


@contextmanager
def rig(args: argparse.Namespace, jobs: int) -> Iterator[Rig]:
    with database(args.postgres) as url, tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(url)
        ledger.create_schema()
        started = time.perf_counter()
        with ledger.engine.begin() as conn:
            fill(conn, jobs=jobs, per_series=args.instances, per_day=args.per_day, now=time.time())
        # What the ledger keeps up to date as it goes, set once for the rows put in above.
        ledger.recount_states()
        vacuum = create_engine(url, isolation_level="AUTOCOMMIT")
        with vacuum.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
        vacuum.dispose()
        live(ledger, per_series=args.instances, now=time.time())
        waiting = [
            record(ledger, f"2.25.8.{n}", per_series=args.instances, last_at=time.time() - 60)
            for n in range(args.runs + 1)
        ]
        instances = ledger.count_instances()
        filled = time.perf_counter() - started
        print(f"# {jobs} jobs, {instances} instances: filled in {filled:.0f} s", flush=True)
        server = MonitorServer(monitor_settings(url, Path(folder)), ledger, inspector=None)
        server.start()
        try:
            yield Rig(jobs, ledger, f"http://127.0.0.1:{server.port}", waiting)
        finally:
            server.stop()
            ledger.close()


#: What is timed, on a rig.
OPERATIONS: dict[str, Callable[[Rig], object]] = {
    "completion check": lambda r: completion_check(r.ledger),
    "routing (per series)": lambda r: route(r.ledger, r.waiting.pop()),
    "dashboard page (GET /)": lambda r: get(r.base + "/"),
    "/metrics": lambda r: get(r.base + "/metrics"),
}


def medians_ms(rigs: list[Rig], runs: int) -> dict[str, list[float]]:
    """The median time of each operation on each rig. The rigs take turns, run by run,
    so that what else the machine does at the time weighs on each alike."""
    figures = {}
    for name, operation in OPERATIONS.items():
        samples: list[list[float]] = [[] for _ in rigs]
        for run in range(runs + 1):
            for rig_samples, each in zip(samples, rigs, strict=True):
                started = time.perf_counter()
                operation(each)
                if run:  # the first warms connections, caches and query plans
                    rig_samples.append((time.perf_counter() - started) * 1000)
        figures[name] = [statistics.median(s) for s in samples]
    return figures


def monitor_settings(url: str, folder: Path) -> Settings:
    return validate_settings(
        {
            "data_dir": str(folder),
            "ledger_url": url,
            "broker_url": "redis://127.0.0.1:1/0",
            "routes": [{"name": "chest-ct", "match": {"Modality": "CT"}, "models": ["ct-lungs"]}],
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 11112}},
            "monitor": {"host": "127.0.0.1", "port": free_port()},
        }
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs=2, default=[1000, 50_000])
    parser.add_argument("--instances", type=int, default=20, help="instances per series")
    parser.add_argument("--per-day", type=int, default=1000, help="jobs finished per day")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        rigs = [stack.enter_context(rig(args, jobs)) for jobs in args.jobs]
        figures = medians_ms(rigs, args.runs)
    small, large = args.jobs
    print(f"| {'operation':24} | {small:>7} jobs, ms | {large:>7} jobs, ms | ratio |")
    print(f"|{'-' * 26}|{'-' * 18}:|{'-' * 18}:|------:|")
    for name, (at_small, at_large) in figures.items():
        ratio = at_large / at_small
        print(f"| {name:24} | {at_small:17.1f} | {at_large:17.1f} | {ratio:5.2f} |")


if __name__ == "__main__":
    main()

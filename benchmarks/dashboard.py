"""Monitor benchmark: how long the dashboard, the JSON API and /metrics take on a big ledger.

``python benchmarks/dashboard.py --jobs 1000 10000 50000`` fills a fresh SQLite ledger per
size with that many finished jobs (each with its series of 100 instances, six transitions
and two delivered results, spread over the last 24 hours, 2 % failed), then starts the
monitor (uvicorn on a free loopback port, as ``pacs-ai serve`` does) and times over HTTP
the requests it serves (median of ``--runs``): the overview page, one job page,
``/api/jobs``, the first ``/metrics`` scrape (which reads every DONE run once) and a
later one (only what changed). No broker: queue depths are left out. ``--server`` names
another module with a ``MonitorServer`` (to compare with an earlier monitor).
"""

from __future__ import annotations

import argparse
import importlib
import json
import socket
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.ledger import Ledger  # noqa: E402
from core.ledger.schema import (  # noqa: E402
    instances_table,
    job_events_table,
    jobs_table,
    outbox_table,
    series_table,
)
from core.settings import validate_settings  # noqa: E402


def fill(ledger: Ledger, jobs: int) -> str:
    now = time.time()
    one_job = ""
    with ledger.engine.begin() as conn:
        for start in range(0, jobs, 1000):
            series, instances, job_rows, events, items = [], [], [], [], []
            for n in range(start, min(jobs, start + 1000)):
                t0 = now - 86_400 + 86_400 * n / jobs
                series_uid, job_id = f"2.25.{n}", uuid.uuid4().hex
                one_job = job_id
                series.append(
                    {
                        "series_uid": series_uid, "study_uid": f"2.25.9{n}", "modality": "CT",
                        "calling_ae": f"CT{n % 4}", "called_ae": "PACSAI", "peer": "10.0.0.1",
                        "first_received_at": t0, "last_received_at": t0 + 5, "instance_count": 100,
                        "resent_count": 0, "state": "ROUTED", "updated_at": t0 + 15,
                    }
                )  # fmt: skip
                instances.extend(
                    {
                        "sop_instance_uid": f"{series_uid}.{i}", "series_uid": series_uid,
                        "study_uid": f"2.25.9{n}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1", "path": f"/spool/{n}/{i}",
                        "size": 525_000, "received_at": t0 + i * 0.05, "receive_count": 1,
                    }
                    for i in range(100)
                )  # fmt: skip
                failed = n % 50 == 0
                job_rows.append(
                    {
                        "job_id": job_id, "series_uid": series_uid, "study_uid": f"2.25.9{n}",
                        "route": "chest-ct", "model_id": "ct-lungs", "destinations": '["pacs"]',
                        "priority": 5, "state": "FAILED" if failed else "DONE",
                        "reason": "modality MR" if failed else None, "attempts": 1,
                        "created_at": t0 + 15, "updated_at": t0 + 30, "result": None,
                        "worker": "w", "rerun_pending": 0, "input_received_at": t0 + 5,
                    }
                )  # fmt: skip
                steps = [("RECEIVING", t0), ("READY", t0 + 15), ("QUEUED", t0 + 15),
                         ("RUNNING", t0 + 16), ("DELIVERING", t0 + 25),
                         ("FAILED" if failed else "DONE", t0 + 26)]  # fmt: skip
                events.extend(
                    {"job_id": job_id, "state": s, "kind": "transition", "at": at,
                     "reason": None, "detail": json.dumps({"worker": "w"})}
                    for s, at in steps
                )  # fmt: skip
                items.extend(
                    {
                        "item_id": uuid.uuid4().hex, "destination": "pacs", "kind": "result",
                        "job_id": job_id, "series_uid": series_uid, "route": "chest-ct",
                        "sop_instance_uid": f"2.25.8{n}{k}", "sop_class_uid": "1.2",
                        "path": "/r", "state": "SENT", "attempts": 1, "last_status": 0,
                        "last_error": None, "next_attempt_at": t0, "created_at": t0 + 25,
                        "updated_at": t0 + 26, "sent_at": t0 + 25.5,
                    }
                    for k in range(2)
                )  # fmt: skip
            for table, rows in ((series_table, series), (instances_table, instances),
                                (jobs_table, job_rows), (job_events_table, events),
                                (outbox_table, items)):  # fmt: skip
                conn.execute(insert(table), rows)
    return one_job


def get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as answer:  # noqa: S310 -- loopback
            return bytes(answer.read())
    except urllib.error.HTTPError as error:
        assert error.code == 503, (url, error.code)
        with error:
            return bytes(error.read())


def timed(base: str, path: str, runs: int) -> tuple[float, int]:
    samples = []
    size = 0
    for _ in range(runs):
        started = time.perf_counter()
        size = len(get(base + path))
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), size


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--server", default="monitor.web.server")
    args = parser.parse_args()
    server_class: Any = importlib.import_module(args.server).MonitorServer
    print(f"{'jobs':>7} {'request':24} {'median ms':>10} {'bytes':>9}")
    for count in args.jobs:
        with tempfile.TemporaryDirectory() as folder:
            settings = validate_settings(
                {"data_dir": folder, "broker_url": "redis://127.0.0.1:1/0",
                 "routes": [{"name": "chest-ct", "match": {"Modality": "CT"},
                             "models": ["ct-lungs"]}],
                 "monitor": {"host": "127.0.0.1", "port": free_port()}}
            )  # fmt: skip
            ledger = Ledger(settings.resolved_ledger_url)
            ledger.create_schema()
            job_id = fill(ledger, count)
            # The gauges the ledger keeps as it goes, set once for the rows put in above.
            ledger.recount_states()
            server = server_class(settings, ledger, inspector=None)
            server.start()
            base = f"http://127.0.0.1:{server.port}"
            try:
                first = time.perf_counter()
                get(base + "/metrics")
                first_ms = (time.perf_counter() - first) * 1000
                print(f"{count:>7} {'/metrics (first scrape)':24} {first_ms:>10.1f}")
                for path in ("/", f"/jobs/{job_id}", "/api/jobs?limit=50", "/metrics"):
                    seconds, size = timed(base, path, args.runs)
                    name = "/jobs/<id>" if path.startswith("/jobs/") else path
                    print(f"{count:>7} {name:24} {seconds * 1000:>10.1f} {size:>9}")
            finally:
                server.stop()
                ledger.close()


if __name__ == "__main__":
    main()

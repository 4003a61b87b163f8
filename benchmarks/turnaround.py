"""Turnaround of the LIDC CT with ct-lungs: from the last image to the results in the PACS.

Run it as ``.venv/bin/python benchmarks/pipeline.py --turnaround`` or on its own
(``.venv/bin/python benchmarks/turnaround.py --runs 3``). It starts Redis, Orthanc (the
PACS), ``pacs-ai serve`` and a ``pacs-ai worker`` (ct-lungs, CPU unless a GPU is there),
sends the series with DCMTK ``storescu`` and measures, per run, from the last image
acknowledged to the job DONE, that is the SEG and SR stored in Orthanc. The worker
records each stage's seconds in the job ledger; subtracting the quiet period
(``completion.series_quiet_seconds``) and the network leaves what the product adds
around the model: reading, pre- and postprocessing, writing, queueing, delivering.
Target (issue 16): at most 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._support.jobs import send_until_done  # noqa: E402
from benchmarks._support.peers import (  # noqa: E402
    LOCALHOST,
    Orthanc,
    PeerProcess,
    RedisServer,
    free_port,
    port_open,
    require_tool,
    wait_for,
)
from core.jobs import JobState  # noqa: E402
from core.ledger import Ledger  # noqa: E402

OUR_AE = "PACSAI"
QUIET_SECONDS = 1.0


def measure(work: Path, files: Sequence[Path], *, runs: int = 2) -> list[dict[str, float]]:
    """Run the LIDC CT ``runs`` times through node, worker and Orthanc; print and return
    each run's turnaround and its parts."""
    storescu = require_tool("storescu")
    orthanc = Orthanc(work / "orthanc")
    redis = RedisServer(work / "redis")
    orthanc.start()
    redis.start()
    config: dict[str, Any] = {
        "data_dir": str(work / "site"),
        "ledger_url": f"sqlite:///{work / 'site' / 'ledger.sqlite3'}",
        "broker_url": redis.url,
        "node": {"ae_title": OUR_AE, "host": LOCALHOST, "port": free_port()},
        "completion": {"series_quiet_seconds": QUIET_SECONDS, "check_interval_seconds": 0.1},
        "destinations": {
            "pacs": {"host": LOCALHOST, "port": orthanc.dicom_port, "ae_title": orthanc.aet}
        },
        "routes": [
            {
                "name": "chest-ct",
                "match": {"Modality": "CT"},
                "models": ["ct-lungs"],
                "send_results_to": ["pacs"],
            }
        ],
        "delivery": {"poll_interval_seconds": 0.1},
    }
    (work / "site").mkdir(parents=True, exist_ok=True)
    path = work / "site.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    node = PeerProcess(
        "node",
        [sys.executable, "-m", "pacs_ai", "serve", "--config", path],
        log_path=work / "node.log",
    )
    worker = PeerProcess(
        "worker",
        [sys.executable, "-m", "pacs_ai", "worker", "--config", path],
        log_path=work / "worker.log",
    )
    results = []
    ledger = Ledger(config["ledger_url"])
    try:
        node.start()
        wait_for(lambda: port_open(config["node"]["port"]), 120, "pacs-ai serve", process=node)
        since = time.time() - 1
        worker.start()
        wait_for(lambda: bool(ledger.workers(seen_since=since)), 180, "worker", process=worker)
        for run in range(runs):
            print(f"  turnaround run {run + 1} of {runs} ...", file=sys.stderr)
            orthanc.delete_all()
            results.append(_one(storescu, files, config, ledger, worker))
    finally:
        ledger.close()
        worker.stop(timeout=30)
        node.stop(timeout=30)
        redis.stop()
        orthanc.stop()
    _print(results)
    return results


def _one(
    storescu: Path,
    files: Sequence[Path],
    config: dict[str, Any],
    ledger: Ledger,
    worker: PeerProcess,
) -> dict[str, float]:
    job, last_image = send_until_done(
        storescu, files, called_ae=OUR_AE, port=config["node"]["port"], ledger=ledger,
        worker=worker,
    )  # fmt: skip
    # The latest run's transitions (the series is sent again each run: the job re-runs).
    events = [e for e in ledger.events(job.job_id) if e.is_transition and e.at > last_image]

    def at(state: JobState) -> float:
        return next(e.at for e in reversed(events) if e.state == state)

    worker_timings: dict[str, float] = next(
        e.detail.get("timings", {}) for e in reversed(events) if e.state == JobState.DELIVERING
    )
    total = at(JobState.DONE) - last_image
    network = worker_timings.get("network", 0.0)
    return {
        "total": total,
        "quiet": QUIET_SECONDS,
        "last image -> running": at(JobState.RUNNING) - last_image,
        **{f"worker {k}": v for k, v in worker_timings.items() if v},
        "deliver": at(JobState.DONE) - at(JobState.DELIVERING),
        "around the model": total - QUIET_SECONDS - network,
    }


def _print(results: list[dict[str, float]]) -> None:
    keys = list(dict.fromkeys(k for r in results for k in r))
    print()
    print("turnaround of the LIDC CT (ct-lungs): last image acknowledged -> results in Orthanc")
    print(f"{'':28} {'median s':>9}  runs")
    for key in keys:
        values = [r[key] for r in results if key in r]
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{key:28} {statistics.median(values):>9.2f}  {shown}")
    rest = statistics.median(r["around the model"] for r in results)
    print(f"target: around the model <= 2 s: {'met' if rest <= 2 else 'NOT met'} ({rest:.2f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.pipeline import lidc_series  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pacs-ai-turnaround-") as folder:
        work = Path(folder)
        measure(work, lidc_series(work), runs=args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

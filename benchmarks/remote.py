"""Remote-worker benchmark: a series over WADO-RS from the node, against reading it from
the local disk and against Orthanc's own WADO-RS; and a job's turnaround with a remote
worker against a local one.

Run it as ``.venv/bin/python benchmarks/remote.py`` (``--help`` for options). The LIDC CT
(275 slices, 145 MB) is stored in a pacs-ai node (in this process, its monitor serving
DICOMweb on loopback) and in an Orthanc with its DICOMweb plugin, both started for the run.

**Transfer** (median of ``--runs``, alternating; the node runs as a process of its own):

* *local read*: reading every spool file, as a worker on the node's machine does;
* *pacs-ai WADO-RS*: what a remote worker does (:class:`workers.fetch.SeriesFetcher`): the
  series from the node's ``/dicomweb`` into the worker's data folder, each instance
  checked against the ledger's list and sizes (target: within 1.5x of the local read);
* *Orthanc WADO-RS*: the same client fetching the series from Orthanc's plugin;
* *floor: raw TCP*: the floor under any fetch on this machine, what loopback TCP itself
  costs: the spool files over one plain socket (a thread of this process sends each with
  ``os.sendfile``, length first; the receiver reads them into reusable buffers), no HTTP,
  nothing parsed, the bytes dropped; *+ files written*: the same, a thread writing each
  file into a folder as the fetcher does. A fetch cannot be faster than the second, so
  where that lies above the local read's 1.5x, the target cannot be met on the machine
  (on a small VM, moving the bytes through the kernel twice costs several times reading
  them from the page cache once);
* with the page cache warm (memory speed), and cold (the spool's pages dropped before
  each run with ``posix_fadvise``, so that the bytes come from the disk);
* *to a volume*: the above plus decoding into the volume a model runs on
  (``inference.volume.load_series``), local files against fetched ones.

**Turnaround** (``--e2e-runs``): ``pacs-ai serve`` and ``pacs-ai worker`` processes, Redis,
the ct-lungs model on CPU, results delivered to Orthanc; from the last C-STORE
acknowledged to the job DONE, with a local worker and with a remote one (another data
folder, ``worker.fetch_from``, results handed back with STOW-RS). The quiet period
(``completion.series_quiet_seconds``, 1 s here) is part of both.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._support.jobs import send_until_done  # noqa: E402
from benchmarks._support.lidc import lidc_files  # noqa: E402
from benchmarks._support.peers import (  # noqa: E402
    DICOMWEB_PLUGIN,
    LOCALHOST,
    Orthanc,
    PeerProcess,
    RedisServer,
    dcmtk_env,
    find_tool,
    free_port,
    port_open,
    wait_for,
)
from core.jobs import JobState  # noqa: E402
from core.ledger import Ledger  # noqa: E402
from core.settings import validate_settings  # noqa: E402
from dicom_node.scu import send_files  # noqa: E402
from workers.dicomweb import CHUNK, DicomWebClient  # noqa: E402
from workers.fetch import SeriesFetcher  # noqa: E402

FLOOR = "floor: raw TCP (sendfile -> recv)"
FLOOR_FILES = "floor: raw TCP + files written"
TOKEN = "benchmark-worker-token-0123456789"  # noqa: S105 -- a throw-away local token
OUR_AE = "PACSAI"


@dataclass
class Row:
    name: str
    walls: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/remote.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=5, help="transfer runs (>= 3)")
    parser.add_argument("--e2e-runs", type=int, default=2, help="turnaround runs per worker")
    parser.add_argument("--data", type=Path, help="a folder with one series (default: LIDC CT)")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if find_tool("Orthanc") is None or not DICOMWEB_PLUGIN.exists():
        parser.error("needs Orthanc and its DICOMweb plugin: apt-get install orthanc-dicomweb")
    with tempfile.TemporaryDirectory(prefix="pacs-ai-bench-remote-") as temp:
        work = Path(temp)
        files, description = lidc_files(args.data, work)
        total = sum(path.stat().st_size for path in files)
        orthanc = Orthanc(
            work / "orthanc",
            extra_config={
                "Plugins": [str(DICOMWEB_PLUGIN)],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            },
        )
        orthanc.start()
        try:
            _store_in_orthanc(orthanc, files)
            print("pacs-ai remote-worker benchmark")
            print(f"  data:     {description}; {len(files)} files, {total / 1e6:.0f} MB")
            print(f"  machine:  {os.cpu_count()} CPUs, loopback; median of {args.runs} runs")
            print()
            rows = _transfers(work, files, orthanc, runs=args.runs)
            _transfer_table(rows, total)
            if args.e2e_runs > 0:
                print()
                _turnaround(work, files, orthanc, runs=args.e2e_runs)
        finally:
            orthanc.stop(graceful=False)
    return 0


def _store_in_orthanc(orthanc: Orthanc, files: list[Path]) -> None:
    storescu = find_tool("storescu")
    if storescu is None:
        raise SystemExit("needs DCMTK's storescu: apt-get install dcmtk")
    sent = subprocess.run(
        [str(storescu), "-aec", orthanc.aet, LOCALHOST, str(orthanc.dicom_port),
         *map(str, files)],
        env=dcmtk_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if sent.returncode:
        raise SystemExit(f"storing the series in Orthanc failed:\n{sent.stderr}")


# -- transfer ------------------------------------------------------------------------------


def _transfers(work: Path, files: list[Path], orthanc: Orthanc, *, runs: int) -> list[Row]:
    from inference.volume import load_series  # noqa: PLC0415

    config: dict[str, Any] = {
        "data_dir": str(work / "node"),
        "node": {
            "ae_title": OUR_AE,
            "host": LOCALHOST,
            "port": free_port(),
            "min_free_disk_mb": 0,
            "name": "bench-node",
        },
        "completion": {"series_quiet_seconds": 3600},
        "monitor": {
            "host": LOCALHOST,
            "port": free_port(),
            "tokens": [{"name": "w", "role": "worker", "token": TOKEN}],
        },
    }
    # The node in a process of its own, as it runs: the worker's side is this process.
    node = _process(work, "transfer-node", "serve", config)
    node.start()
    ledger = Ledger(f"sqlite:///{work / 'node' / 'ledger.sqlite3'}")
    try:
        wait_for(lambda: port_open(config["node"]["port"]), 120, "pacs-ai serve", process=node)
        send_files(
            files, host=LOCALHOST, port=config["node"]["port"], called_ae=OUR_AE, calling_ae="B"
        )
        wait_for(lambda: ledger.count_instances() == len(files), 60, "the series recorded")
        series = ledger.list_series(limit=1)[0]
        job = ledger.open_job(series, route="bench", model_id="none", destinations=[], priority=5)
        instances = ledger.series_instances(series.series_instance_uid)
        spool = [Path(i.path) for i in instances]
        monitor_url = f"http://{LOCALHOST}:{config['monitor']['port']}"
        worker = validate_settings(
            {
                "data_dir": str(work / "worker"),
                "worker": {"fetch_from": f"{monitor_url}/dicomweb", "fetch_token": TOKEN},
            }
        )
        fetcher = SeriesFetcher(worker, ledger)
        orthanc_client = DicomWebClient(f"{orthanc.url}/dicom-web")
        relative = f"studies/{job.study_instance_uid}/series/{job.series_instance_uid}"
        out = work / "orthanc-out"
        raw = _RawTcp(spool)
        raw_out = work / "raw-out"

        def ours() -> list[Path]:
            return fetcher.files(job, instances).paths

        def theirs() -> None:
            out.mkdir()
            orthanc_client.retrieve(relative, out)

        def clean() -> None:
            # Between runs, not timed: a fetch always starts with nothing fetched.
            fetcher.release(job.job_id)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(raw_out, ignore_errors=True)

        def local() -> None:
            _read_all(spool)

        def evict() -> None:
            _evict(spool)

        def warm() -> None:
            pass

        candidates: list[tuple[Row, Callable[[], object], Callable[[], None]]] = [
            (Row("local read (spool files)"), local, warm),
            (Row(FLOOR), lambda: raw.fetch(None), warm),
            (Row(FLOOR_FILES), lambda: raw.fetch(raw_out), warm),
            (Row("pacs-ai WADO-RS (node -> worker)"), ours, warm),
            (Row("Orthanc WADO-RS (plugin)"), theirs, warm),
            (Row("cold cache: local read"), local, evict),
            (Row("cold cache: pacs-ai WADO-RS"), ours, evict),
            (Row("to a volume: local files"), lambda: load_series(spool), warm),
            (Row("to a volume: pacs-ai WADO-RS"), lambda: load_series(ours()), warm),
        ]
        with raw:
            for _row, measure, _prepare in candidates:
                clean()
                measure()  # warm: page cache, connections, imports
            for run in range(runs):
                print(f"  transfer run {run + 1} of {runs} ...", file=sys.stderr)
                for row, measure, prepare in candidates:
                    clean()
                    prepare()
                    started = time.perf_counter()
                    measure()
                    row.walls.append(time.perf_counter() - started)
            clean()
    finally:
        ledger.close()
        node.stop(timeout=30)
    return [row for row, _measure, _prepare in candidates]


class _RawTcp:
    """Files over one loopback TCP connection, nothing else: the floor under a fetch.

    A thread sends every file with ``os.sendfile`` (its size first, 8 bytes) each time it is
    asked. :meth:`fetch` receives them as the fetcher does: a file (or a :data:`CHUNK` of
    it) at a time into one of a few reusable buffers, then drops it, or has a thread write
    it into a file of its own while the next one arrives.
    """

    def __init__(self, files: list[Path]) -> None:
        self._files = files
        self._buffers = [memoryview(bytearray(CHUNK)) for _ in range(4)]
        self._header = bytearray(8)
        self._listener = socket.create_server((LOCALHOST, 0))
        self._server = threading.Thread(target=self._serve, name="raw-tcp", daemon=True)
        self._client: socket.socket | None = None

    def __enter__(self) -> Self:
        self._server.start()
        self._client = socket.create_connection(self._listener.getsockname()[:2])
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            self._client.close()
        self._server.join(timeout=10)
        self._listener.close()

    def _serve(self) -> None:
        connection, _address = self._listener.accept()
        with connection:
            while connection.recv(1):  # one byte asks for every file; none: closed
                for path in self._files:
                    with path.open("rb") as stream:
                        size = os.fstat(stream.fileno()).st_size
                        connection.sendall(size.to_bytes(8, "big"))
                        sent = 0
                        while sent < size:
                            sent += os.sendfile(
                                connection.fileno(), stream.fileno(), sent, size - sent
                            )

    def fetch(self, out: Path | None) -> None:
        """Receive every file once; write each into the folder ``out`` (made here), or drop
        them."""
        assert self._client is not None, "use it in a with block"
        client, buffers = self._client, self._buffers
        if out is not None:
            out.mkdir()
        client.sendall(b"\x01")
        # One thread writes, in the order given: a buffer is free again once its write is.
        writes: list[Future[int] | None] = [None] * len(buffers)
        pieces = 0
        with ThreadPoolExecutor(max_workers=1) as writer:
            for index in range(len(self._files)):
                self._receive(self._header, 8)
                size = int.from_bytes(self._header, "big")
                stream = (out / f"{index}.dcm").open("wb") if out is not None else None
                for start in range(0, size, CHUNK):
                    slot, pieces = pieces % len(buffers), pieces + 1
                    if (previous := writes[slot]) is not None:
                        previous.result()
                    piece = buffers[slot][: min(size - start, CHUNK)]
                    self._receive(piece, len(piece))
                    if stream is not None:
                        writes[slot] = writer.submit(stream.write, piece)
                if stream is not None:
                    writer.submit(stream.close)
        for write in writes:
            if write is not None:
                write.result()

    def _receive(self, buffer: bytearray | memoryview, size: int) -> None:
        assert self._client is not None
        if self._client.recv_into(buffer, size, socket.MSG_WAITALL) != size:
            raise ConnectionError("raw TCP: the sender closed the connection")


def _read_all(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as stream:
            while stream.read(1024 * 1024):
                pass


def _evict(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (nothing else on the machine), so that
    the next read of them comes from the disk."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def _transfer_table(rows: list[Row], total: int) -> None:
    by_name = {row.name: row for row in rows}
    references = {
        "cold cache": by_name["cold cache: local read"],
        "to a volume": by_name["to a volume: local files"],
    }
    header = f"{'series transfer':36} {'wall s':>8} {'MB/s':>7} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        group = row.name.split(":")[0]
        reference = references.get(group, rows[0])
        print(
            f"{row.name:36} {row.wall:>8.3f} {total / 1e6 / row.wall:>7.0f} "
            f"{row.wall / reference.wall:>7.2f}"
        )
    ours, floor = by_name["pacs-ai WADO-RS (node -> worker)"], by_name[FLOOR_FILES]
    print()
    print(
        "ratio: wall time / the local read of the same group (warm page cache; cold cache:\n"
        "the spool's pages dropped before each run; to a volume: read and decoded)\n"
        "floor: the files over plain loopback TCP, no HTTP (the least a fetch can cost here)"
    )
    print(f"pacs-ai WADO-RS / floor with files = {ours.wall / floor.wall:.2f}x")


# -- turnaround ----------------------------------------------------------------------------


@contextmanager
def _site(work: Path, orthanc: Orthanc) -> Iterator[dict[str, Any]]:
    redis = RedisServer(work / "redis")
    redis.start()
    try:
        monitor_port = free_port()
        config: dict[str, Any] = {
            "data_dir": str(work / "site-node"),
            "ledger_url": f"sqlite:///{work / 'site-node' / 'ledger.sqlite3'}",
            "broker_url": redis.url,
            "node": {"ae_title": OUR_AE, "host": LOCALHOST, "port": free_port(), "name": "node"},
            "completion": {"series_quiet_seconds": 1, "check_interval_seconds": 0.2},
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
            "delivery": {"poll_interval_seconds": 0.2},
            "worker": {"heartbeat_seconds": 1},
            "monitor": {
                "host": LOCALHOST,
                "port": monitor_port,
                "tokens": [{"name": "w", "role": "worker", "token": TOKEN}],
            },
        }
        yield config
    finally:
        redis.stop()


def _process(work: Path, name: str, command: str, config: dict[str, Any]) -> PeerProcess:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return PeerProcess(
        name,
        [sys.executable, "-m", "pacs_ai", command, "--config", path],
        log_path=work / f"{name}.log",
    )


def _turnaround(work: Path, files: list[Path], orthanc: Orthanc, *, runs: int) -> None:
    storescu = find_tool("storescu")
    assert storescu is not None
    with _site(work, orthanc) as config:
        node = _process(work, "node", "serve", config)
        node.start()
        ledger = Ledger(config["ledger_url"])
        try:
            wait_for(lambda: port_open(config["node"]["port"]), 120, "pacs-ai serve", process=node)
            remote = {
                **config,
                "data_dir": str(work / "site-worker"),
                "worker": {
                    **config["worker"],
                    "fetch_from": f"http://{LOCALHOST}:{config['monitor']['port']}/dicomweb",
                    "fetch_token": TOKEN,
                },
            }
            kinds = {"local worker (reads the spool)": config, "remote worker (WADO/STOW)": remote}
            results: dict[str, list[Turnaround]] = {kind: [] for kind in kinds}
            # Not timed: the site's first job (first association to the PACS, first rows).
            print("  turnaround warm-up ...", file=sys.stderr)
            _one_turnaround(work, storescu, files, config, worker_config=config, ledger=ledger)
            for run in range(runs):
                for kind, worker_config in kinds.items():
                    print(f"  turnaround run {run + 1} of {runs}: {kind} ...", file=sys.stderr)
                    results[kind].append(
                        _one_turnaround(
                            work,
                            storescu,
                            files,
                            config,
                            worker_config=worker_config,
                            ledger=ledger,
                        )
                    )
        finally:
            ledger.close()
            node.stop(timeout=30)
    _turnaround_table(results)


@dataclass(frozen=True)
class Turnaround:
    #: From the last C-STORE acknowledged to the job DONE.
    seconds: float
    #: The job's own stages (fetch, load, network, write, ...) as its worker recorded them.
    stages: dict[str, float]


def _turnaround_table(results: dict[str, list[Turnaround]]) -> None:
    # The worker's stages that took time (delivery is the node's, measured above in all).
    stages = sorted(
        name
        for name in {n for runs in results.values() for r in runs for n in r.stages}
        if name != "deliver"
        and any(statistics.median(r.stages.get(name, 0.0) for r in runs) >= 0.005
                for runs in results.values())
    )  # fmt: skip
    header = f"{'turnaround (last image -> DONE)':34} {'median s':>8} " + " ".join(
        f"{name:>8}" for name in stages
    )
    print(header)
    print("-" * len(header))
    for kind, runs in results.items():
        medians = [statistics.median(r.stages.get(name, 0.0) for r in runs) for name in stages]
        print(
            f"{kind:34} {statistics.median(r.seconds for r in runs):>8.1f} "
            + " ".join(f"{m:>8.2f}" for m in medians)
        )
    print()
    for kind, runs in results.items():
        print(f"{kind}: runs {', '.join(f'{r.seconds:.1f}' for r in runs)} s")
    local, remote = (statistics.median(r.seconds for r in runs) for runs in results.values())
    print(f"remote / local: {remote / local:.2f} (ct-lungs on CPU, quiet period 1 s)")


def _one_turnaround(
    work: Path,
    storescu: Path,
    files: list[Path],
    config: dict[str, Any],
    *,
    worker_config: dict[str, Any],
    ledger: Ledger,
) -> Turnaround:
    worker = _process(work, "worker", "worker", worker_config)
    since = time.time() - 1
    worker.start()
    try:
        wait_for(lambda: bool(ledger.workers(seen_since=since)), 180, "worker", process=worker)
        job, last_image = send_until_done(
            storescu, files, called_ae=OUR_AE, port=config["node"]["port"], ledger=ledger,
            worker=worker,
        )  # fmt: skip
        stages: dict[str, float] = {}
        for event in ledger.events(job.job_id):
            if event.state in (JobState.DELIVERING, JobState.DONE) and event.at > last_image:
                stages.update(event.detail.get("timings", {}))
        return Turnaround(job.updated_at - last_image, stages)
    finally:
        worker.stop(timeout=30)


if __name__ == "__main__":
    sys.exit(main())

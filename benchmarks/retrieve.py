"""Retrieval benchmark: pulling the LIDC CT series from Orthanc, pacs-ai against DCMTK.

Run it as ``.venv/bin/python benchmarks/retrieve.py`` (``--help`` for options). The series
is stored in an Orthanc started for the run; then, in one run and alternating so that they
share the machine's conditions, it measures (median of ``--runs``):

* **pacs-ai C-GET**: what ``pacs-ai run --from`` does for one series: pynetdicom's C-GET
  (:class:`node_services.retrieve.dimse.DimseSource`), each instance filed in a spool as
  the node files received ones (identity checked, written, fsynced, renamed:
  :class:`node_services.retrieve.retriever.SpoolSink`) and recorded in a SQLite ledger;
* the same with ``node.fsync: false``: what durability costs;
* **pacs-ai C-MOVE**: the PACS sends the series to a running node (``Node``, default
  settings), received by its own C-STORE path, until its ledger has recorded them all;
* **DCMTK getscu** (``+B``, bit-preserving, straight to disk, no fsync), the peer;
* **pacs-ai WADO-RS**: the same series over DICOMweb (Orthanc's plugin), into the spool.

Wall time, images/s, MB/s and the ratio to getscu. Before each run the output is removed
and the page cache written back (``sync``). The PDU size is 128 KiB on both sides.
Orthanc runs with ``TCP_NODELAY=1`` (Debian's build leaves Nagle's algorithm on otherwise);
pacs-ai sets it on its own socket, and DCMTK's getscu gets the variable too.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._support.lidc import lidc_files  # noqa: E402
from benchmarks._support.peers import (  # noqa: E402
    DICOMWEB_PLUGIN,
    LOCALHOST,
    Orthanc,
    dcmtk_env,
    find_tool,
    free_port,
)
from core.ledger import Ledger  # noqa: E402
from core.settings import Settings, validate_settings  # noqa: E402
from node_services.retrieve.retriever import SpoolSink  # noqa: E402
from node_services.retrieve.sources import make_source  # noqa: E402

PDU = 131_072
OUR_AE = "PACSAI"
#: The node's port, for C-MOVE (Orthanc must know where to send).
NODE_PORT = free_port()
GETSCU_AE = "GETSCU"


@dataclass
class Row:
    name: str
    walls: list[float] = field(default_factory=list)
    count: int = 0

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/retrieve.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (>= 3)")
    parser.add_argument("--data", type=Path, help="a folder with one series (default: LIDC CT)")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    getscu, storescu = find_tool("getscu"), find_tool("storescu")
    if getscu is None or storescu is None or find_tool("Orthanc") is None:
        parser.error("needs DCMTK (getscu, storescu) and Orthanc: apt-get install dcmtk orthanc")
    with tempfile.TemporaryDirectory(prefix="pacs-ai-bench-retrieve-") as temp:
        work = Path(temp)
        files, description = lidc_files(args.data, work)
        total = sum(path.stat().st_size for path in files)
        study_uid, series_uid = _uids(files[0])
        orthanc = Orthanc(
            work / "orthanc",
            modalities={
                "pacsai": (OUR_AE, LOCALHOST, NODE_PORT),
                "getscu": (GETSCU_AE, LOCALHOST, 1),
            },
            extra_config=(
                {
                    "Plugins": [str(DICOMWEB_PLUGIN)],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                }
                if DICOMWEB_PLUGIN.exists()
                else {}
            ),
        )
        orthanc.start()
        try:
            sent = subprocess.run(
                [str(storescu), "-aec", orthanc.aet, "+sd", LOCALHOST, str(orthanc.dicom_port),
                 *map(str, files)],
                env=dcmtk_env(), capture_output=True, text=True, check=False,
            )  # fmt: skip
            if sent.returncode:
                raise SystemExit(f"storing the series in Orthanc failed:\n{sent.stderr}")
            _header(description, len(files), total, args.runs)
            rows = _measure(
                orthanc,
                work,
                getscu,
                study_uid,
                series_uid,
                runs=args.runs,
                web=DICOMWEB_PLUGIN.exists(),
            )
        finally:
            orthanc.stop(graceful=False)
        _table(rows, len(files), total)
    return 0


def _uids(path: Path) -> tuple[str, str]:
    from pydicom import dcmread  # noqa: PLC0415

    header = dcmread(path, stop_before_pixels=True)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID)


def _settings(work: Path, orthanc: Orthanc, *, fsync: bool) -> Settings:
    return validate_settings(
        {
            "data_dir": str(work / "node"),
            "node": {
                "ae_title": OUR_AE,
                "host": LOCALHOST,
                "port": NODE_PORT,
                "fsync": fsync,
                "min_free_disk_mb": 0,
                "max_pdu_length": PDU,
            },
            "destinations": {
                "pacs": {
                    "host": LOCALHOST,
                    "port": orthanc.dicom_port,
                    "ae_title": orthanc.aet,
                    "query_retrieve": {},
                },
                "pacs-move": {
                    "host": LOCALHOST,
                    "port": orthanc.dicom_port,
                    "ae_title": orthanc.aet,
                    "query_retrieve": {"retrieve": "move"},
                },
                "web": {
                    "type": "dicomweb",
                    "url": f"{orthanc.url}/dicom-web",
                    "query_retrieve": {},
                },
            },
        }
    )


def _measure(
    orthanc: Orthanc,
    work: Path,
    getscu: Path,
    study_uid: str,
    series_uid: str,
    *,
    runs: int,
    web: bool,
) -> list[Row]:
    out = work / "out"

    def ours(source: str, fsync: bool) -> Callable[[], tuple[int, float]]:
        def pull() -> tuple[int, float]:
            settings = _settings(work, orthanc, fsync=fsync)
            ledger = Ledger(settings.resolved_ledger_url)
            ledger.create_schema()
            try:
                from dicom_node.spool import Spool  # noqa: PLC0415

                spool = Spool(settings.spool_dir, fsync=fsync, recover_leftovers=False)
                sink = SpoolSink(spool, source_ae=orthanc.aet, called_ae=OUR_AE, peer=source)
                started = time.perf_counter()
                make_source(settings, source).retrieve_series(study_uid, series_uid, sink)
                ledger.record_instances(sink.records, origin="retrieved")
                return len(sink.records), time.perf_counter() - started
            finally:
                ledger.close()

        return pull

    def moved() -> tuple[int, float]:
        from dicom_node.node import Node  # noqa: PLC0415

        settings = _settings(work, orthanc, fsync=True)
        with Node(settings) as node:
            sink = SpoolSink(node.spool, source_ae=orthanc.aet, called_ae=OUR_AE, peer="move")
            started = time.time()
            outcome = make_source(settings, "pacs-move").retrieve_series(
                study_uid, series_uid, sink
            )
            # Done when the node has recorded them all, as `pacs-ai run` waits.
            while node.ledger.instances_received_since(series_uid, started) < outcome.completed:
                time.sleep(0.01)
            return outcome.completed, time.time() - started

    def dcmtk() -> tuple[int, float]:
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        done = subprocess.run(
            [str(getscu), "-S", "-aet", GETSCU_AE, "-aec", orthanc.aet, "+B", "-pdu", str(PDU),
             "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
             "-k", f"SeriesInstanceUID={series_uid}", "-od", str(out),
             LOCALHOST, str(orthanc.dicom_port)],
            env=dcmtk_env(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode:
            raise SystemExit(f"getscu failed:\n{done.stdout}{done.stderr}")
        return len(list(out.iterdir())), time.perf_counter() - started

    candidates: list[tuple[Row, Callable[[], tuple[int, float]]]] = [
        (Row("pacs-ai C-GET (spool, fsync)"), ours("pacs", True)),
        (Row("pacs-ai C-GET (spool, no fsync)"), ours("pacs", False)),
        (Row("pacs-ai C-MOVE to its node's SCP"), moved),
        (Row("DCMTK getscu (+B)"), dcmtk),
    ]
    if web:
        candidates.append((Row("pacs-ai WADO-RS (spool, fsync)"), ours("web", True)))
    for run in range(runs):
        print(f"  run {run + 1} of {runs} ...", file=sys.stderr)
        for row, measure in candidates:
            shutil.rmtree(work / "node", ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"], check=False)
            # The retrieval itself is timed, not the set-up (a new ledger, say).
            row.count, seconds = measure()
            row.walls.append(seconds)
    return [row for row, _measure in candidates]


def _header(description: str, count: int, total: int, runs: int) -> None:
    print("pacs-ai retrieval benchmark")
    print(f"  data:     {description}; {count} files, {total / 1e6:.0f} MB, stored in Orthanc")
    print(f"  method:   one series, C-GET at SERIES level (Study Root), PDU {PDU // 1024} KiB;")
    print(f"            median of {runs} runs, alternating; output removed and sync before each")
    print(f"  machine:  {os.cpu_count()} CPUs")
    print()


def _table(rows: list[Row], count: int, total: int) -> None:
    reference = next(r for r in rows if r.name.startswith("DCMTK"))
    header = (
        f"{'retrieval':34} {'images':>6} {'wall s':>8} {'images/s':>9} {'MB/s':>7} {'/ getscu':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.name:34} {row.count:>6} {row.wall:>8.2f} {count / row.wall:>9.0f} "
            f"{total / 1e6 / row.wall:>7.0f} {row.wall / reference.wall:>9.2f}"
        )
    print()
    print("/ getscu: wall time divided by getscu's in the same run (below 1: faster)")


if __name__ == "__main__":
    sys.exit(main())

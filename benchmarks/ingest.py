"""Ingestion benchmark: DCMTK storescu -> pacs-ai node / DCMTK storescp / Orthanc, and back.

Run it as ``benchmarks/ingest`` (``--help`` for options). In one run, alternating the
receivers so that they share the machine's conditions, it measures (median of ``--runs``):

* storescu sending the whole series over one association, and split over 4 parallel
  associations, to: our node (``pacs_ai`` ``Node`` with default settings, in this
  process), DCMTK ``storescp`` and Orthanc (``SyncStorageArea: true``, so durable too);
* the node with ``node.fsync: false``: what durability costs;
* the way back: our SCU (:func:`dicom_node.scu.send_files`) sending the series to
  storescp, against storescu doing the same.

Wall time, images/s, MB/s, the receiver's CPU time (user + system, its whole process
tree: for the node, the node process and its receiving processes) and the ratio to
storescp. Then memory: the peak resident memory of the receiver's process tree (sampled
every 20 ms) while the series arrives over one association and over 32 parallel ones,
and from that the memory per association, against storescp --fork in the same run.
Before each run the receiver's storage is emptied and the page cache written back
(``sync``), so no run pays for another's writes.

DCMTK and Orthanc run with ``TCP_NODELAY=1``: Debian's builds leave Nagle's algorithm on
otherwise and are about 30x slower. pacs-ai turns it off on its own sockets.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._support.peers import (  # noqa: E402
    LOCALHOST,
    Orthanc,
    StoreSCP,
    dcmtk_env,
    find_tool,
    free_port,
    process_tree,
)
from core.settings import Settings, validate_settings  # noqa: E402
from dicom_node.encoding import is_part10  # noqa: E402
from dicom_node.node import Node  # noqa: E402
from dicom_node.scu import send_files  # noqa: E402

SHARED_CT = "ct-lidc-idri-0314/series.tar.xz"
PARALLEL = 4
#: Parallel associations of the memory measurement.
MEMORY_PARALLEL = 32


@dataclass
class Target:
    """A receiver: how to reach it, empty it, and find its processes."""

    name: str
    ae_title: str
    port: int
    clear: Callable[[], None]
    pids: Callable[[], list[int]]
    #: Processes whose trees hold the receiver's associations (memory measurement).
    memory_roots: Callable[[], list[int]] = list


@dataclass
class Sample:
    wall: float
    #: CPU seconds of the receiver (node) or sender (our SCU); NaN where not measured.
    cpu: float


@dataclass
class Row:
    scenario: str
    receiver: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/ingest", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (>= 3)")
    parser.add_argument(
        "--data", type=Path, help="a folder of DICOM files to send (default: the LIDC CT)"
    )
    parser.add_argument(
        "--generate",
        action="store_true",
        help="send a generated 300-slice 512x512 CT instead of the shared LIDC CT",
    )
    parser.add_argument("--skip-orthanc", action="store_true", help="leave Orthanc out")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    storescu = find_tool("storescu")
    storescp = find_tool("storescp")
    orthanc = None if args.skip_orthanc else find_tool("Orthanc")
    if storescu is None or storescp is None:
        parser.error("DCMTK storescu/storescp not found (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory(prefix="pacs-ai-bench-") as temp:
        work = Path(temp)
        files, description = _data(args, work)
        total = sum(path.stat().st_size for path in files)
        _header(files, total, description, args.runs)
        rows = _measure(
            files, work, storescu=storescu, storescp=storescp, orthanc=orthanc, runs=args.runs
        )
        _table(rows, len(files), total)
        _memory_table(_measure_memory(files, work, storescu=storescu, storescp=storescp))
    return 0


# --------------------------------------------------------------------------- data


def _data(args: argparse.Namespace, work: Path) -> tuple[list[Path], str]:
    if args.data is not None:
        files = sorted(p for p in args.data.rglob("*") if p.is_file() and is_part10(p))
        return files, f"{len(files)} files from {args.data}"
    archive = (
        Path(os.environ.get("PACS_AI_SHARED_DATA", REPO.parent / "shared" / "data")) / SHARED_CT
    )
    if not args.generate and archive.exists():
        target = work / "data"
        target.mkdir()
        if subprocess.run(["tar", "xJf", str(archive), "-C", str(target)], check=False).returncode:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
        files = sorted(target.rglob("*.dcm"))
        return files, f"LIDC-IDRI-0314 chest CT, {len(files)} slices 512x512 ({archive})"
    return _generate(work / "data", 300), "generated CT, 300 slices 512x512, Explicit VR LE"


def _generate(folder: Path, count: int) -> list[Path]:
    import numpy as np  # noqa: PLC0415
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: PLC0415

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientID = "BENCH"
        ds.PatientName = "Bench^Mark"
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [0.0, 0.0, float(number)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = rng.integers(-1000, 2000, (512, 512), dtype=np.int16).tobytes()
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- receivers


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of the processes ``pids`` (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _node_settings(work: Path, *, fsync: bool, **node: object) -> Settings:
    # Defaults a user gets, but for where the data goes and the port.
    return validate_settings(
        {
            "data_dir": str(work),
            "node": {"host": LOCALHOST, "port": free_port(), "fsync": fsync, **node},
            "routes": [],
        }
    )


@contextlib.contextmanager
def _node(work: Path, *, fsync: bool, **node_settings: object) -> Iterator[Target]:
    settings = _node_settings(work, fsync=fsync, **node_settings)
    with Node(settings) as node:

        def clear() -> None:
            node.recorder.flush()
            for entry in settings.spool_dir.iterdir():
                if not entry.name.startswith("."):
                    shutil.rmtree(entry)

        yield Target(
            name="pacs-ai node" if fsync else "pacs-ai node, fsync off",
            ae_title=settings.node.ae_title,
            port=node.port,
            clear=clear,
            pids=lambda: [os.getpid(), *node.scp.pids],
            # The node runs in this process, whose memory is the benchmark's too: its
            # receiving processes, where associations live, are what is measured.
            memory_roots=lambda: list(node.scp.pids),
        )


@contextlib.contextmanager
def _storescp(work: Path, binary: Path) -> Iterator[Target]:
    # --fork: one process per association, as storescp is run for parallel senders.
    server = StoreSCP(work, binary=binary, bit_preserving=False, extra_args=["--fork"])
    server.start()
    try:

        def clear() -> None:
            for path in server.files():
                path.unlink()

        yield Target(
            name="DCMTK storescp",
            ae_title=server.aet,
            port=server.port,
            clear=clear,
            pids=list,  # not measured: forked children's CPU is not ours to read
            memory_roots=lambda: (
                [server.process.pid] if server.process and server.process.pid else []
            ),
        )
    finally:
        server.stop()


@contextlib.contextmanager
def _orthanc(work: Path, binary: Path) -> Iterator[Target]:
    server = Orthanc(
        work,
        binary=binary,
        extra_config={"SyncStorageArea": True, "DicomCheckCalledAet": False},
    )
    server.start()
    try:
        yield Target(
            name="Orthanc",
            ae_title=server.aet,
            port=server.dicom_port,
            clear=server.delete_all,
            pids=list,  # not measured
        )
    finally:
        server.stop(graceful=False)


# --------------------------------------------------------------------------- runs


def _storescu(binary: Path, target: Target, files: Sequence[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(binary), "-aec", target.ae_title, LOCALHOST, str(target.port), *map(str, files)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _send(binary: Path, target: Target, files: Sequence[Path], parallel: int) -> Sample:
    groups = [list(files[i::parallel]) for i in range(parallel)]
    target.clear()
    os.sync()
    pids = target.pids()
    cpu_before = _cpu_seconds(pids)
    started = time.perf_counter()
    senders = [_storescu(binary, target, group) for group in groups]
    failures = []
    for sender in senders:
        _out, err = sender.communicate(timeout=600)
        if sender.returncode:
            failures.append(err.decode(errors="replace")[-500:])
    wall = time.perf_counter() - started
    cpu = _cpu_seconds(pids) - cpu_before if pids else float("nan")
    if failures:
        raise RuntimeError(f"storescu to {target.name} failed: {failures[0]}")
    return Sample(wall, cpu)


def _measure(
    files: list[Path],
    work: Path,
    *,
    storescu: Path,
    storescp: Path,
    orthanc: Path | None,
    runs: int,
) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}

    def record(scenario: str, receiver: str, sample: Sample) -> None:
        rows.setdefault((scenario, receiver), Row(scenario, receiver)).samples.append(sample)

    with contextlib.ExitStack() as stack:
        targets = [
            stack.enter_context(_node(work / "node", fsync=True)),
            stack.enter_context(_node(work / "node-nofsync", fsync=False)),
            stack.enter_context(_storescp(work / "storescp", storescp)),
        ]
        if orthanc is not None:
            targets.append(stack.enter_context(_orthanc(work / "orthanc", orthanc)))
        scp = targets[2]
        for run in range(runs):
            print(f"  run {run + 1} of {runs} ...", file=sys.stderr)
            for target in targets:
                record("1 association", target.name, _send(storescu, target, files, 1))
            for target in targets:
                record(
                    f"{PARALLEL} associations",
                    target.name,
                    _send(storescu, target, files, PARALLEL),
                )
            record("way back", "storescu -> storescp", _send(storescu, scp, files, 1))
            record("way back", "pacs-ai SCU -> storescp", _send_ours(scp, files))
    return list(rows.values())


def _send_ours(target: Target, files: Sequence[Path]) -> Sample:
    target.clear()
    os.sync()
    cpu_before = _cpu_seconds([os.getpid()])
    started = time.perf_counter()
    report = send_files(files, host=LOCALHOST, port=target.port, called_ae=target.ae_title)
    wall = time.perf_counter() - started
    cpu = _cpu_seconds([os.getpid()]) - cpu_before
    if not report.ok:
        raise RuntimeError(f"our SCU failed: {report.failed[0].reason}")
    return Sample(wall, cpu)


# --------------------------------------------------------------------------- memory


def _rss_mib(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


class _PeakSampler:
    """The largest resident memory of a process tree, sampled every 20 ms."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self._roots = roots
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            pids = [p for root in self._roots() for p in process_tree(root)]
            self.peak = max(self.peak, _rss_mib(pids))


@dataclass
class MemoryRow:
    receiver: str
    idle: float
    one: float
    many: float


def _measure_memory(
    files: list[Path], work: Path, *, storescu: Path, storescp: Path
) -> list[MemoryRow]:
    rows = []
    print(f"  memory: 1 and {MEMORY_PARALLEL} associations ...", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(
            _node(work / "node-memory", fsync=True, max_associations=2 * MEMORY_PARALLEL)
        )
        scp = stack.enter_context(_storescp(work / "storescp-memory", storescp))
        for target, name in (
            (node, "pacs-ai node (receiving processes)"),
            (scp, "DCMTK storescp --fork"),
        ):
            roots = target.memory_roots
            idle = _rss_mib([p for root in roots() for p in process_tree(root)])
            peaks = []
            for parallel in (1, MEMORY_PARALLEL):
                with _PeakSampler(roots) as sampler:
                    _send(storescu, target, files, parallel)
                peaks.append(sampler.peak)
            rows.append(MemoryRow(name, idle, peaks[0], peaks[1]))
    return rows


def _memory_table(rows: list[MemoryRow]) -> None:
    print()
    header = (
        f"{'receiver':<36} {'idle MiB':>9} {'1 assoc. peak':>14} "
        f"{f'{MEMORY_PARALLEL} assoc. peak':>15} {'per association':>16}"
    )
    print(header)
    print("-" * len(header))
    per = {}
    for row in rows:
        per[row.receiver] = (row.many - row.idle) / MEMORY_PARALLEL
        print(
            f"{row.receiver:<36} {row.idle:>9.0f} {row.one:>14.0f} {row.many:>15.0f} "
            f"{per[row.receiver]:>13.1f} MiB"
        )
    node, scp = (per[row.receiver] for row in rows)
    print(f"memory per association, node / storescp: {node / scp:.2f}")
    print(
        "peak: resident memory of the receiver's processes sampled every 20 ms while the "
        "series arrives"
    )


# --------------------------------------------------------------------------- output


def _header(files: Sequence[Path], total: int, description: str, runs: int) -> None:
    dcmtk = subprocess.run(
        [str(find_tool("storescp")), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    print("pacs-ai ingestion benchmark")
    print(f"  data:     {description}; {len(files)} files, {total / 1e6:.0f} MB")
    print(
        f"  machine:  {os.cpu_count()} CPU cores, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    print(
        f"  peers:    {dcmtk[0].strip('$ ') if dcmtk else 'DCMTK'} (storescp --fork); "
        "Orthanc (SyncStorageArea: true)"
    )
    print(f"  method:   median of {runs} runs, receivers alternating; storage emptied and")
    print("            page cache written back (sync) before each run")
    print("  note:     DCMTK and Orthanc run with TCP_NODELAY=1 (Debian's builds leave Nagle's")
    print("            algorithm on otherwise: ~30x slower); pacs-ai sets it on its own sockets")
    print()


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"  # NaN: not measured


def _table(rows: list[Row], count: int, total: int) -> None:
    reference = {
        row.scenario: row.wall
        for row in rows
        if row.receiver in ("DCMTK storescp", "storescu -> storescp")
    }
    header = (
        f"{'scenario':<16} {'receiver / sender':<26} {'wall s':>7} {'img/s':>7} {'MB/s':>7} "
        f"{'CPU s':>6} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = row.wall / reference[row.scenario] if row.scenario in reference else float("nan")
        print(
            f"{row.scenario:<16} {row.receiver:<26} {row.wall:>7.2f} {count / row.wall:>7.0f} "
            f"{total / 1e6 / row.wall:>7.0f} {_number(row.cpu):>6} {ratio:>6.2f}"
        )
    print()
    by = {(row.scenario, row.receiver): row for row in rows}
    single = by[("1 association", "pacs-ai node")].wall
    parallel = by[(f"{PARALLEL} associations", "pacs-ai node")].wall
    nofsync = by[("1 association", "pacs-ai node, fsync off")].wall
    print(
        f"node, {PARALLEL} associations vs 1: {single / parallel:.2f}x the throughput "
        f"(target >= 1.6x)"
    )
    print(
        f"durability (an fsync per instance before Success) costs {single - nofsync:.2f} s "
        f"for {count} instances ({(single - nofsync) / count * 1000:.1f} ms each)"
    )
    print("ratio: wall time / storescp's (way back: / storescu's) in the same scenario;")
    print("CPU s: the node process and its receiving processes (way back: our SCU's process)")


if __name__ == "__main__":
    raise SystemExit(main())

"""Pipeline benchmark: every stage around the model, against the reference tools, in one run.

    .venv/bin/python benchmarks/pipeline.py                   # every case (a few minutes)
    .venv/bin/python benchmarks/pipeline.py --cases lidc      # lidc, brain, radiograph
    .venv/bin/python benchmarks/pipeline.py --quick           # a small brain head
    .venv/bin/python benchmarks/pipeline.py --turnaround      # + last image -> results in Orthanc
    .venv/bin/python benchmarks/pipeline.py --markdown        # the table as Markdown

Cases: the LIDC-IDRI chest CT (275 slices) with the built-in ``ct-lungs``; a brain MR (the
MNI template in a synthetic skull, ``benchmarks/_support/brain.py``) with the example
``mindgrab`` package; a chest radiograph (the shared NIH film) with a classification
package around a small random CNN. Each case runs in a fresh process, as a worker would:
the job once (read, model, SEG + SR), whose peak resident memory is reported with its
ratio to the float32 volume; then each stage again, the best of ``--repeat`` runs.

Reference tools, timed in the same run on the same files (wall and CPU time, the CPU of
their whole process): SimpleITK's ``ImageSeriesReader`` (GDCM) reading the series, for the
LIDC CT also copies of it in JPEG 2000 Lossless and JPEG-LS Lossless made for the run;
dcmqi's ``itkimage2segimage`` writing the SEG of the very label map the model produced,
reading the source files itself; where installed (``pip install dcm2niix``, in the dev
group), dcm2niix converting each series to an uncompressed NIfTI file, the issue's other
reference for reading. The ratio is ours / theirs (wall time): at most 1 is the
target (issue 16), for the SEG and SR together against dcmqi's SEG alone.

``--turnaround`` also starts ``pacs-ai serve``, a ``pacs-ai worker``, Redis and Orthanc,
sends the LIDC CT with DCMTK ``storescu`` and measures from the last image acknowledged
to the job DONE (results stored in Orthanc), less the quiet period and the network time
the worker recorded: the target is at most 2 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# As pacs-ai's own processes run (pacs_ai/__init__.py): no transparent huge pages for
# NumPy's arrays. Set before NumPy is imported, so also in each case's process.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

SHARED = Path(os.environ.get("PACS_AI_SHARED_DATA", REPO.parent / "shared" / "data"))
LIDC_ARCHIVE = SHARED / "ct-lidc-idri-0314" / "series.tar.xz"
RADIOGRAPH = SHARED / "xray" / "nih-cxr14-nccid.dcm"
DCMQI_METADATA = SHARED / "reference-seg-sr" / "lidc-idri-0314-lung-dcmqi" / "lung_seg.json"
CASES = ("lidc", "brain", "radiograph")
MIB = 2**20

T = TypeVar("T")


@dataclass(frozen=True)
class Time:
    wall: float
    cpu: float


def timed(run: Callable[[], T], repeat: int = 1) -> tuple[T, Time]:
    """The result of the best of ``repeat`` runs and its wall and CPU time (this process
    and the children it waited for, and the decoding processes)."""
    best: Time | None = None
    result: T | None = None
    for _ in range(repeat):
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        decoders = _decoding_processes_cpu()
        wall, cpu = time.perf_counter(), time.process_time()
        result = run()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = Time(
            time.perf_counter() - wall,
            time.process_time()
            - cpu
            + (after.ru_utime + after.ru_stime)
            - (children.ru_utime + children.ru_stime)
            + _decoding_processes_cpu()
            - decoders,
        )
        if best is None or spent.wall < best.wall:
            best = spent
    assert best is not None
    return result, best  # type: ignore[return-value]


def _decoding_processes_cpu() -> float:
    """CPU seconds of the decoding processes of :mod:`inference.decode_pool` so far (they
    are the fork server's children, not this process's: ``RUSAGE_CHILDREN`` misses them)."""
    if "inference.decode_pool" not in sys.modules:
        return 0.0
    from inference import decode_pool  # noqa: PLC0415

    total = 0.0
    for pid in decode_pool.process_ids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue  # gone, or no /proc: its time is not counted
    return total


# --- material ------------------------------------------------------------------------------


def lidc_series(work: Path) -> list[Path]:
    target = work / "lidc"
    if not target.is_dir():
        target.mkdir(parents=True)
        if subprocess.run(
            ["tar", "xJf", str(LIDC_ARCHIVE), "-C", str(target)], check=False
        ).returncode:
            with tarfile.open(LIDC_ARCHIVE) as tar:
                tar.extractall(target, filter="data")
    return sorted((target / "lidc-idri-0314-ct").glob("*.dcm"))


def _compressed_copy(job: tuple[str, str, str]) -> None:
    from pydicom import dcmread  # noqa: PLC0415

    source, target, syntax = job
    dataset = dcmread(source)
    dataset.compress(syntax)
    dataset.save_as(target, enforce_file_format=True)


def compressed(paths: Sequence[Path], folder: Path, syntax: str) -> list[Path]:
    """Copies of ``paths`` with their pixel data compressed losslessly in ``syntax``."""
    if not folder.is_dir():
        folder.mkdir(parents=True)
        jobs = [(str(p), str(folder / p.name), syntax) for p in paths]
        with ProcessPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
            list(pool.map(_compressed_copy, jobs, chunksize=8))
    return sorted(folder.glob("*.dcm"))


def head_series(work: Path, *, quick: bool) -> list[Path]:
    from benchmarks._support.brain import full_head, small_head, write_mr_series  # noqa: PLC0415

    folder = work / ("head-small" if quick else "head")
    if folder.is_dir():
        return sorted(folder.glob("*.dcm"))
    return write_mr_series(small_head() if quick else full_head(), folder)


def radiograph_package(work: Path) -> Path:
    """The chest X-ray example package around a small random CNN (3 classes, ONNX)."""
    import torch  # noqa: PLC0415

    from benchmarks._support.models import export_onnx, write_package  # noqa: PLC0415

    folder = work / "cxr"
    if (folder / "model.yaml").is_file():
        return folder
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 7, stride=4, padding=3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 3),
    ).eval()
    export_onnx(
        network,
        folder / "model.onnx",
        example=torch.zeros(1, 3, 224, 224),
        output_name="logits",
        dynamic_spatial=False,
    )
    example = REPO / "models" / "examples" / "radiographs" / "chest_xray_resnet18" / "model.yaml"
    content = yaml.safe_load(example.read_text())
    content["network"]["path"] = "model.onnx"
    content["backends"] = [{"name": "onnxruntime", "precision": "fp32"}]
    write_package(folder, content)
    return folder


def case_material(case: str, work: Path, *, quick: bool) -> tuple[Path, list[Path]]:
    """The model package folder and the series of ``case``."""
    if case == "lidc":
        return REPO / "models" / "builtin" / "ct_lungs", lidc_series(work)
    if case == "brain":
        folder = REPO / "models" / "examples" / "brain_extraction_mindgrab"
        return folder, head_series(work, quick=quick)
    film = work / "radiograph" / RADIOGRAPH.name
    if not film.is_file():
        film.parent.mkdir(parents=True)
        shutil.copy(RADIOGRAPH, film)
    return radiograph_package(work), [film]


# --- one case, in its own process ------------------------------------------------------------


def _peak_mib() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the parent's
    over ``exec`` on Linux)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(case: str, work: Path, *, quick: bool, repeat: int, device: str) -> dict[str, Any]:
    """Run ``case`` as a worker runs a job, then time its stages; the figures as JSON."""
    logging.basicConfig(level=logging.ERROR)
    from inference.pipeline import ModelRunner  # noqa: PLC0415
    from inference.results import predict_each, write_results  # noqa: PLC0415
    from models.registry import load_package  # noqa: PLC0415

    folder, paths = case_material(case, work, quick=quick)
    package = load_package(folder)
    runner = ModelRunner(package, device=device, engine_dir=work / "engines", profile=True)
    baseline = _peak_mib()
    # The job once, as a worker does it: its peak memory.
    runs, _ = predict_each(runner, paths)
    out = work / "out" / case
    for run in runs:
        write_results(run.volume, run.prediction, package.manifest, out_dir=out / "job")
    peak = _peak_mib()
    run = runs[0]
    stages: dict[str, dict[str, float]] = {}
    read = _reader(paths)
    volume, spent = timed(read, repeat)
    stages["decode"] = asdict(spent)
    prediction = runner.predict(volume)
    for stage in ("preprocess", "network", "stitch", "postprocess"):
        seconds = prediction.timings.get(stage, 0.0)
        stages[stage] = {"wall": seconds, "cpu": float("nan")}
    _, spent = timed(
        lambda: write_results(volume, prediction, package.manifest, out_dir=out / "bench"),
        repeat,
    )
    stages["write"] = asdict(spent)
    label_map = None
    if prediction.labels is not None and volume.projection is None:
        label_map = str(_label_map(volume, prediction.labels, package.manifest, out))
    runner.close()
    return {
        "case": case,
        "model": f"{package.manifest.id} [{prediction.backend}/{prediction.precision}]",
        "series": f"{volume.modality} {'x'.join(map(str, volume.shape))}, {len(paths)} file(s)",
        "files": [str(p) for p in paths],
        "stages": stages,
        "written": sorted(p.name for p in (out / "bench").rglob("*.dcm")),
        "baseline_mib": baseline,
        "peak_mib": peak,
        "volume_mib": run.volume.voxels.nbytes / MIB,
        "label_map": label_map,
    }


def _reader(paths: Sequence[Path]) -> Callable[[], Any]:
    from inference.projection import load_projection, series_is_projection  # noqa: PLC0415
    from inference.volume import load_series  # noqa: PLC0415

    if series_is_projection(paths):
        return lambda: load_projection(paths)
    return lambda: load_series(paths)


def _label_map(volume: Any, labels: Any, manifest: Any, out: Path) -> Path:
    """The labels as an NRRD label map on the volume's grid, and dcmqi's metadata for it."""
    import SimpleITK as sitk  # noqa: N813, PLC0415

    image = sitk.GetImageFromArray(labels.astype("uint16"))
    image.SetSpacing([float(v) for v in volume.spacing])
    image.SetOrigin([float(v) for v in volume.origin])
    image.SetDirection([float(v) for v in volume.direction.reshape(-1)])
    path = out / "labels.nrrd"
    sitk.WriteImage(image, str(path), True)
    metadata = json.loads(DCMQI_METADATA.read_text())
    metadata["segmentAttributes"] = [
        [
            {
                "labelID": label.value,
                "SegmentDescription": label.name,
                "SegmentLabel": label.name,
                "SegmentedPropertyCategoryCodeSequence": _code(label.category),
                "SegmentedPropertyTypeCodeSequence": _code(label.type),
                "SegmentAlgorithmType": "AUTOMATIC",
                "SegmentAlgorithmName": manifest.name[:64],
                "recommendedDisplayRGBValue": list(label.color),
            }
            for label in manifest.labels
        ]
    ]
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
    return path


def _code(spec: Any) -> dict[str, str]:
    return {
        "CodeValue": spec.value,
        "CodingSchemeDesignator": spec.scheme,
        "CodeMeaning": spec.meaning,
    }


# --- the reference tools -----------------------------------------------------------------------


def simpleitk_read(paths: Sequence[Path]) -> Callable[[], object]:
    """SimpleITK reading ``paths`` (a folder of one series, or one file)."""
    import SimpleITK as sitk  # noqa: N813, PLC0415

    sitk.ProcessObject.SetGlobalWarningDisplay(False)

    if len(paths) == 1:
        return lambda: sitk.ReadImage(str(paths[0]))

    folder = str(paths[0].parent)

    def read() -> object:
        # As its users do: GDCM reads the headers and orders the files by position.
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
        return reader.Execute()

    return read


def dcm2niix_read(paths: Sequence[Path], out: Path) -> Callable[[], object] | None:
    """dcm2niix converting the series in ``paths``'s folder to an uncompressed NIfTI file
    (the issue's other reference: it reads and decodes the series, and writes the volume
    to the page cache); ``None`` where it is not installed (``pip install dcm2niix``)."""
    # The wheel's build (CharLS and OpenJPEG in); a distribution's may lack JPEG-LS.
    tool = str(Path(sys.executable).parent / "dcm2niix")
    if not Path(tool).is_file():
        tool = shutil.which("dcm2niix") or tool
    if len(paths) < 2 or not Path(tool).is_file():
        return None
    out.mkdir(parents=True, exist_ok=True)
    command = [
        tool, "-z", "n", "-b", "n", "-w", "1", "-f", "volume", "-o", str(out),
        str(paths[0].parent),
    ]  # fmt: skip
    return lambda: subprocess.run(command, check=True, capture_output=True)


def dcmqi_seg(label_map: Path, source_dir: Path, target: Path) -> Callable[[], object]:
    tool = shutil.which("itkimage2segimage") or str(
        Path(sys.executable).parent / "itkimage2segimage"
    )
    command = [
        tool,
        "--inputImageList", str(label_map),
        "--inputDICOMDirectory", str(source_dir),
        "--inputMetadata", str(label_map.with_suffix(".json")),
        "--outputDICOM", str(target),
    ]  # fmt: skip
    return lambda: subprocess.run(command, check=True, capture_output=True)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    stage: str
    ours: Time | None
    reference: str = ""
    theirs: Time | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.theirs is None or self.theirs.wall <= 0:
            return None
        return self.ours.wall / self.theirs.wall


def _case_process(case: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    result = work / f"{case}.json"
    command = [
        sys.executable, __file__, "--run-case", case, "--work", str(work),
        "--repeat", str(args.repeat), "--device", args.device, "--json", str(result),
    ]  # fmt: skip
    if args.quick:
        command.append("--quick")
    subprocess.run(command, check=True)
    data: dict[str, Any] = json.loads(result.read_text())
    return data


def _rows(data: dict[str, Any], work: Path, repeat: int) -> list[Row]:
    case, stages = data["case"], data["stages"]
    paths = [Path(p) for p in data["files"]]
    rows = []

    def stage(name: str) -> Time:
        return Time(**stages[name])

    _, theirs = timed(simpleitk_read(paths), repeat)
    reader = "SimpleITK ReadImage" if len(paths) == 1 else "SimpleITK ImageSeriesReader"
    rows.append(Row(case, "decode", stage("decode"), reader, theirs))
    converter = dcm2niix_read(paths, work / "dcm2niix" / case)
    if converter is not None:
        _, theirs = timed(converter, repeat)
        rows.append(Row(case, "decode", stage("decode"), "dcm2niix (to NIfTI)", theirs))
    if case == "lidc":
        from pydicom.uid import JPEG2000Lossless, JPEGLSLossless  # noqa: PLC0415

        from inference.volume import load_series  # noqa: PLC0415

        for label, syntax in (("JPEG 2000", JPEG2000Lossless), ("JPEG-LS", JPEGLSLossless)):
            variant = compressed(paths, work / f"lidc-{label.replace(' ', '')}", syntax)
            _, ours = timed(lambda v=variant: load_series(v), repeat)  # type: ignore[misc]
            _, theirs = timed(simpleitk_read(variant), repeat)
            rows.append(Row(case, f"decode {label}", ours, "SimpleITK ImageSeriesReader", theirs))
            converter = dcm2niix_read(variant, work / "dcm2niix" / f"{case}-{label}")
            if converter is not None:
                _, theirs = timed(converter, repeat)
                rows.append(Row(case, f"decode {label}", ours, "dcm2niix (to NIfTI)", theirs))
    for name in ("preprocess", "network", "stitch", "postprocess"):
        if stages[name]["wall"] > 0:
            rows.append(Row(case, name, stage(name)))
    written = " + ".join(sorted({n.split(".")[0].split("-")[0].upper() for n in data["written"]}))
    if data["label_map"]:
        label_map = Path(data["label_map"])
        _, theirs = timed(
            dcmqi_seg(label_map, paths[0].parent, label_map.parent / "dcmqi.dcm"), repeat
        )
        rows.append(
            Row(case, f"write {written}", stage("write"), "dcmqi itkimage2segimage (SEG)", theirs)
        )
    else:
        rows.append(Row(case, f"write {written}", stage("write")))
    ratio = data["peak_mib"] / data["volume_mib"]
    rows.append(
        Row(
            case,
            "peak memory",
            None,
            note=(
                f"{data['peak_mib']:.0f} MiB = {ratio:.1f} x the float32 volume "
                f"({data['volume_mib']:.0f} MiB); {data['baseline_mib']:.0f} MiB before the job"
            ),
        )
    )
    return rows


def _fmt(value: Time | None, part: str) -> str:
    if value is None:
        return ""
    seconds = getattr(value, part)
    return "" if math.isnan(seconds) else f"{seconds:.3f}"  # NaN: not measured


def print_table(rows: list[Row], heads: dict[str, str], *, markdown: bool) -> None:
    columns = ["case", "stage", "ours s", "ours CPU s", "reference", "ref s", "ref CPU s", "ratio"]
    lines = []
    for row in rows:
        ratio = row.ratio
        lines.append(
            [
                row.case,
                row.stage,
                _fmt(row.ours, "wall"),
                _fmt(row.ours, "cpu"),
                row.reference or row.note,
                _fmt(row.theirs, "wall"),
                _fmt(row.theirs, "cpu"),
                "" if ratio is None else f"{ratio:.2f}",
            ]
        )
    for case, head in heads.items():
        print(f"{case}: {head}")
    if markdown:
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("---" for _ in columns) + "|")
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES)
    )
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per stage")
    parser.add_argument("--quick", action="store_true", help="a small brain head")
    parser.add_argument("--device", default="", help="cpu, cuda:0 (default: cuda:0 if any)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--turnaround", action="store_true", help="also the LIDC turnaround")
    parser.add_argument("--work", type=Path, help="keep material here (default: a temp dir)")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.device:
        import torch  # noqa: PLC0415

        args.device = "cuda:0" if torch.cuda.is_available() else "cpu"
    if args.run_case:
        data = run_case(
            args.run_case, args.work, quick=args.quick, repeat=args.repeat, device=args.device
        )
        args.json.write_text(json.dumps(data))
        return 0
    with _work(args.work) as work:
        rows: list[Row] = []
        heads: dict[str, str] = {}
        for case in args.cases.split(","):
            print(f"running {case} ...", file=sys.stderr)
            data = _case_process(case, work, args)
            heads[case] = f"{data['model']} on {data['series']}"
            rows.extend(_rows(data, work, args.repeat))
        print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU(s), device {args.device}")
        print_table(rows, heads, markdown=args.markdown)
        print("ratio: our wall time / the reference tool's (target <= 1)")
        if args.turnaround:
            from benchmarks.turnaround import measure  # noqa: PLC0415

            measure(work, lidc_series(work))
    return 0


@contextmanager
def _work(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="pacs-ai-pipeline-") as folder:
        yield Path(folder)


if __name__ == "__main__":
    sys.exit(main())

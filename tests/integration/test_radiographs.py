"""Projection radiographs end to end: real chest films from ../shared/data/xray and the
variants real archives hold (MONOCHROME1, JPEG 2000, 12-bit, Pixel Spacing 0), through
the chest X-ray example package (models/examples/radiographs/chest_xray_resnet18) to a
TID 1500 SR
that dciodvfy accepts and highdicom reads back.

The package's network is a ResNet-18 of torchvision's shape exported to ONNX as
docs/radiographs.md tells users to, with its final layer's weights zero: its logits are
its bias, so the probabilities are known exactly (softmax by hand).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
import torch
import yaml
from pydicom import dcmread
from pydicom.uid import ComputedRadiographyImageStorage, JPEG2000Lossless, generate_uid

from core.jobs import JobRecord, JobState
from core.messages import RunJobMessage
from core.output_profiles import OutputProfile
from core.settings import validate_settings
from dicom_node.node import Node
from inference import codes
from inference.pipeline import ModelRunner
from inference.preprocess import prepare
from inference.preprocess2d import apply_voi
from inference.projection import load_projection
from inference.results import load_and_predict, write_results
from models.acceptance import facts_from_files, refusal
from models.registry import ModelPackage, load_package, sha256_of
from node_services.delivery import DeliveryService
from tests.conftest import REPO_ROOT, require
from tests.support import radiographs
from tests.support.dicom_checks import walk
from tests.support.models import export_onnx, manifest, script, write_package
from tests.support.peers import Orthanc, RedisServer, dciodvfy, free_port, storescu, wait_for
from tests.support.resnet import fixed_logits_resnet18
from tests.support.spooling import spool
from workers.execute import JobExecutor
from workers.runtime import WorkerRuntime

EXAMPLE = REPO_ROOT / "models" / "examples" / "radiographs" / "chest_xray_resnet18"
LOGITS = (0.5, 2.0, -1.0)
CLASSES = ("Normal", "Pneumonia", "Lung cancer")
EXPECTED = dict(
    zip(CLASSES, (math.exp(v) / sum(math.exp(w) for w in LOGITS) for v in LOGITS), strict=True)
)
#: Each class's SNOMED CT finding (CodeMeaning) in the example's manifest.
MEANINGS = {
    "No abnormality detected": "Normal",
    "Pneumonia": "Pneumonia",
    "Malignant tumor of lung": "Lung cancer",
}
REAL = ("nih-cxr14-nccid.dcm", "highdicom_dx_image.dcm")
#: dciodvfy's warnings about what the films themselves lack or say: the NIH film has no
#: study date, time or ID, no structured name and no body part (so the overlay's
#: Laterality is empty: unknown); the highdicom film's body part THORAX is not a DICOM
#: defined term (CHEST is).
SOURCE_GAPS = (
    "Unrecognized defined term <THORAX> for value 1 of attribute <Body Part Examined>",
    "Study Date",
    "Study Time",
    "Study ID",
    "Retired Person Name form",
    "only permitted to be empty when actually unknown; should be absent (not empty) if an "
    "unpaired body part, and have a value if a paired body part - attribute <Laterality>",
)


@pytest.fixture(scope="session")
def xray_dir(shared_data: Path) -> Path:
    return require(shared_data / "xray", "shared radiographs")


@pytest.fixture(scope="session")
def cxr_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's export of a 3-class torchvision ResNet-18 (docs/radiographs.md)."""
    path = tmp_path_factory.mktemp("cxr-weights") / "cxr_resnet18.onnx"
    return export_onnx(
        fixed_logits_resnet18(LOGITS),
        path,
        example=torch.zeros(1, 3, 224, 224),
        output_name="logits",
        dynamic_spatial=False,
    )


@pytest.fixture
def cxr_package(
    tmp_path: Path, cxr_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModelPackage]:
    """The example package as a user installs it: weights via $PACS_AI_CXR_WEIGHTS, the
    checksum added to the manifest."""
    monkeypatch.setenv("PACS_AI_CXR_WEIGHTS", str(cxr_onnx))
    folder = tmp_path / "models" / "chest_xray_resnet18"
    folder.mkdir(parents=True)
    content = yaml.safe_load((EXAMPLE / "model.yaml").read_text())
    assert content["network"]["path"] == "$PACS_AI_CXR_WEIGHTS"
    content["network"]["sha256"] = sha256_of(cxr_onnx)
    (folder / "model.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    yield load_package(folder)


@pytest.fixture
def runner(cxr_package: ModelPackage) -> Iterator[ModelRunner]:
    instance = ModelRunner(cxr_package, device="cpu")
    yield instance
    instance.close()


Variant = Callable[[Path, Path], Path]


def _mono1_j2k_cr_no_spacing(source: Path, target: Path) -> Path:
    """The issue's chest CR: MONOCHROME1, JPEG 2000, Pixel Spacing 0."""
    flipped = radiographs.monochrome1(source, target.with_suffix(".m1.dcm"))
    zeroed = radiographs.with_spacing(
        flipped, target.with_suffix(".ps0.dcm"), pixel_spacing=[0, 0], imager_pixel_spacing=None
    )
    ds = dcmread(zeroed)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.Modality = "CR"
    ds.compress(JPEG2000Lossless)
    return radiographs.save(ds, target)


VARIANTS: dict[str, Variant] = {
    "as-is": lambda source, target: source,
    "monochrome1": radiographs.monochrome1,
    "jpeg2000": radiographs.jpeg2000,
    "monochrome1-jpeg2000-cr-spacing0": _mono1_j2k_cr_no_spacing,
}


def _probabilities(path: Path) -> dict[str, tuple[str, float, str]]:
    """Per finding: (Present/Absent, probability, referenced SOP instance) from the SR."""
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    found = {}
    for group in report.get_image_measurement_groups():
        finding = group.finding_type
        assert finding is not None
        (evaluation,) = group.get_qualitative_evaluations(name=finding)
        (probability,) = group.get_measurements(name=codes.PROBABILITY)
        assert probability.unit == codes.NO_UNITS
        value = evaluation.value
        assert isinstance(value, hd.sr.CodedConcept)
        (image,) = group.source_images
        found[finding.meaning] = (
            value.meaning,
            float(probability.value),
            str(image.referenced_sop_instance_uid),
        )
    return found


def _dciodvfy_clean(path: Path) -> None:
    errors, warnings = dciodvfy(path)
    assert errors == [], errors
    assert [w for w in warnings if not any(gap in w for gap in SOURCE_GAPS)] == [], warnings


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("name", REAL)
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person")
def test_a_chest_film_gives_a_tid_1500_report_of_every_class_that_dciodvfy_and_highdicom_accept(
    runner: ModelRunner, xray_dir: Path, tmp_path: Path, name: str, variant: str
) -> None:
    path = VARIANTS[variant](xray_dir / name, tmp_path / f"{variant}.dcm")
    sop_uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)

    volume, prediction, _ = load_and_predict(runner, [path])
    written = write_results(
        volume,
        prediction,
        runner.manifest,
        out_dir=tmp_path / "out",
        profiles={"pacs": OutputProfile(seg="none", sr=True, sc=True, pdf=True)},
    )

    assert volume.projection is not None and volume.shape[0] == 1
    assert {c.spec.name: c.probability for c in prediction.classes} == pytest.approx(
        EXPECTED, abs=1e-5
    )
    assert sorted(f.kind for f in written.files) == ["pdf", "sr"]
    sr = next(f.path for f in written.files if f.kind == "sr")
    for file in written.files:
        _dciodvfy_clean(file.path)
    findings = _probabilities(sr)
    assert set(findings) == set(MEANINGS)
    assert findings["Pneumonia"][:1] == ("Present",)
    assert findings["No abnormality detected"][0] == findings["Malignant tumor of lung"][0]
    assert findings["No abnormality detected"][0] == "Absent"
    for meaning, class_name in MEANINGS.items():
        assert findings[meaning][1] == pytest.approx(EXPECTED[class_name], abs=1e-5)
    assert {uid for _, _, uid in findings.values()} == {sop_uid}
    dataset = dcmread(sr)
    (evidence,) = dataset.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert [str(i.ReferencedSOPInstanceUID) for i in evidence.ReferencedSOPSequence] == [sop_uid]
    assert "FrameOfReferenceUID" not in dataset


@pytest.mark.parametrize("variant", ["monochrome1", "jpeg2000", "monochrome1-jpeg2000-cr-spacing0"])
@pytest.mark.parametrize("name", REAL)
def test_every_variant_loads_to_the_values_of_the_original_film(
    xray_dir: Path, tmp_path: Path, name: str, variant: str
) -> None:
    original = load_projection([xray_dir / name])

    copy = load_projection([VARIANTS[variant](xray_dir / name, tmp_path / "variant.dcm")])

    np.testing.assert_array_equal(copy.voxels, original.voxels)


def test_a_12_bit_film_loads_to_sixteen_times_the_8_bit_values_and_the_network_sees_the_same(
    runner: ModelRunner, xray_dir: Path, tmp_path: Path
) -> None:
    source = xray_dir / "nih-cxr14-nccid.dcm"
    wide = radiographs.twelve_bit(source, tmp_path / "12bit.dcm")
    narrow_volume = load_projection([source])
    wide_volume = load_projection([wide])
    spec = runner.manifest.preprocessing

    narrow = prepare(narrow_volume, torch.from_numpy(narrow_volume.voxels), spec)
    broad = prepare(wide_volume, torch.from_numpy(wide_volume.voxels), spec)

    np.testing.assert_array_equal(wide_volume.voxels, narrow_volume.voxels * 16)
    assert broad.voxels.shape == narrow.voxels.shape == (1, 224, 224)
    # No window in either: each maps its full stored range (255 or 4095) to [0, 1].
    torch.testing.assert_close(broad.voxels, narrow.voxels, atol=0.004, rtol=0)


def test_spacing_zero_is_said_in_the_notes_and_imager_spacing_is_corrected_for_magnification(
    xray_dir: Path, tmp_path: Path
) -> None:
    source = xray_dir / "highdicom_dx_image.dcm"
    zero = radiographs.with_spacing(
        source, tmp_path / "zero.dcm", pixel_spacing=[0, 0], imager_pixel_spacing=None
    )
    magnified = radiographs.with_spacing(
        source,
        tmp_path / "magnified.dcm",
        pixel_spacing=None,
        imager_pixel_spacing=[0.3, 0.3],
        magnification=1.25,
    )

    uncalibrated = load_projection([zero])
    corrected = load_projection([magnified])

    assert uncalibrated.spacing == (1.0, 1.0, 1.0)
    assert any("measurements are in pixels" in note for note in uncalibrated.notes)
    assert corrected.spacing[:2] == pytest.approx((0.24, 0.24))
    assert corrected.projection is not None and corrected.projection.magnification == 1.25


def _series(xray_dir: Path, folder: Path, views: dict[str, str]) -> list[Path]:
    """The films named in ``views`` as the instances of one series (of the first film's
    patient), with those views."""
    study, series = generate_uid(), generate_uid()
    patient = dcmread(xray_dir / next(iter(views)), stop_before_pixels=True)
    return [
        radiographs.in_series(
            xray_dir / name,
            folder / f"{number}.dcm",
            study_uid=study,
            series_uid=series,
            instance_number=number,
            view_position=view,
            patient=patient,
        )
        for number, (name, view) in enumerate(views.items(), start=1)
    ]


def _worker(
    tmp_path: Path,
    package: ModelPackage,
    *,
    destinations: dict[str, Any] | None = None,
    on_implausible: str = "hold",
) -> WorkerRuntime:
    """A worker serving ``package`` (alone in its folder), its route ``chest-xray``."""
    return WorkerRuntime(
        validate_settings(
            {
                "data_dir": str(tmp_path / "data"),
                "model_dirs": [str(package.folder.parent)],
                "destinations": destinations or {},
                "routes": [
                    {
                        "name": "chest-xray",
                        "match": {"Modality": ["CR", "DX"]},
                        "models": [package.manifest.id],
                        "send_results_to": list(destinations or {}),
                        "on_implausible": on_implausible,
                    }
                ],
                "worker": {"device": "cpu", "max_attempts": 1},
            }
        )
    )


def _run_job(runtime: WorkerRuntime, job: JobRecord) -> JobRecord:
    """Queue ``job`` (READY), run it on the worker and, if it has destinations, deliver."""
    job = runtime.ledger.transition(job.job_id, JobState.QUEUED)
    message = RunJobMessage(
        job_id=job.job_id, model_id=job.model_id, series_uid=job.series_instance_uid
    )
    JobExecutor(runtime).run(message, worker="test")
    if job.destinations:
        DeliveryService(runtime.settings, runtime.ledger).run_once()
    return runtime.ledger.get_job(job.job_id)


def _open_job(runtime: WorkerRuntime, films: list[Path], *, destinations: list[str]) -> JobRecord:
    (model_id,) = runtime.settings.routes[0].models
    series_uid = spool(runtime.settings.spool_dir, runtime.ledger, films)
    return runtime.ledger.open_job(
        runtime.ledger.get_series(series_uid),
        route="chest-xray",
        model_id=model_id,
        destinations=destinations,
        priority=5,
    )


def _sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _referenced_images(path: Path) -> set[str]:
    """Every SOP instance the SR references: its evidence and its content (image library,
    source images)."""
    return {
        str(reference.ReferencedSOPInstanceUID)
        for item in walk(dcmread(path))
        for reference in item.get("ReferencedSOPSequence", [])
    }


@pytest.fixture
def any_view_package(tmp_path: Path, cxr_package: ModelPackage) -> ModelPackage:
    """The example classifier changed by its user to accept any view (no ViewPosition)."""
    content = yaml.safe_load((cxr_package.folder / "model.yaml").read_text())
    del content["accepts"]["attributes"]["ViewPosition"]
    folder = tmp_path / "any-view" / "chest_xray_resnet18"
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(content, sort_keys=False))
    return load_package(folder)


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person")
def test_each_film_of_a_pa_and_lateral_series_gets_its_own_report_in_one_result_series(
    any_view_package: ModelPackage, xray_dir: Path, tmp_path: Path, orthanc: Orthanc
) -> None:
    pa, lateral = _series(
        xray_dir, tmp_path, {"nih-cxr14-nccid.dcm": "PA", "highdicom_dx_image.dcm": "LL"}
    )
    films = [_sop_uid(pa), _sop_uid(lateral)]
    pacs = {"pacs": {"host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": "ORTHANC"}}
    runtime = _worker(tmp_path, any_view_package, destinations=pacs)
    try:
        # Arrival order lateral first: results are numbered in Instance Number order.
        job = _open_job(runtime, [lateral, pa], destinations=["pacs"])
        done = _run_job(runtime, job)
        runtime.ledger.transition(job.job_id, JobState.READY, reason="re-run (test)")
        again = _run_job(runtime, job)
    finally:
        runtime.close()

    assert done.state is JobState.DONE, done.reason
    assert again.state is JobState.DONE, again.reason
    images = done.result["images"]
    assert [(i["sop_instance_uid"], i["instance_number"]) for i in images] == [
        (films[0], 1),
        (films[1], 2),
    ]
    reports = [i["sr_sop_instance_uid"] for i in images]
    assert len(set(reports)) == 2 and done.result["sr_sop_instance_uid"] == reports[0]
    assert all(i["plausibility"]["ok"] for i in images)
    # A re-run derives the very same UIDs: the PACS replaces, and holds two reports.
    assert [i["sr_sop_instance_uid"] for i in again.result["images"]] == reports
    stored = orthanc.instances()
    assert len(stored) == 2 and len(orthanc.series()) == 1
    by_uid = {}
    for number, instance in enumerate(stored):
        path = tmp_path / f"delivered-{number}.dcm"
        path.write_bytes(orthanc.download(instance))
        by_uid[_sop_uid(path)] = path
    assert sorted(by_uid) == sorted(reports)
    series = set()
    for film, report, number in zip(films, reports, (1, 2), strict=True):
        path = by_uid[report]
        _dciodvfy_clean(path)
        dataset = dcmread(path)
        series.add((str(dataset.SeriesInstanceUID), int(dataset.SeriesNumber)))
        assert int(dataset.InstanceNumber) == number
        assert _referenced_images(path) == {film}
        findings = _probabilities(path)
        assert {uid for _, _, uid in findings.values()} == {film}
        for meaning, class_name in MEANINGS.items():
            assert findings[meaning][1] == pytest.approx(EXPECTED[class_name], abs=1e-5)
    assert len(series) == 1


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person")
def test_of_a_pa_and_a_lateral_in_one_series_the_frontal_classifier_reports_on_the_pa_only(
    cxr_package: ModelPackage, xray_dir: Path, tmp_path: Path
) -> None:
    pa, lateral = _series(
        xray_dir, tmp_path, {"nih-cxr14-nccid.dcm": "PA", "highdicom_dx_image.dcm": "LL"}
    )
    runtime = _worker(tmp_path, cxr_package)
    try:
        done = _run_job(runtime, _open_job(runtime, [pa, lateral], destinations=[]))
        notes = [e.reason or "" for e in runtime.ledger.events(done.job_id)]
    finally:
        runtime.close()

    assert done.state is JobState.DONE, done.reason
    (image,) = done.result["images"]
    assert (image["sop_instance_uid"], image["instance_number"]) == (_sop_uid(pa), 1)
    (report,) = [Path(f) for f in done.result["files"]]
    assert _referenced_images(report) == {_sop_uid(pa)}
    (left_out,) = [n for n in notes if "left out" in n]
    assert "ran on image 1" in left_out and "left out image 2" in left_out
    assert "ViewPosition LL is not one of PA, AP" in left_out
    # The node decides the same from the headers: a lateral alone is not for this model.
    assert refusal(cxr_package.manifest, facts_from_files([lateral])) == (
        "chest-xray-resnet18 1.0 cannot run on this series: ViewPosition LL is not one of PA, AP"
    )


class Brightness(torch.nn.Module):
    """A 2-class classifier of a film's mean brightness m: logits (0, 20 (m - 0.5)), so a
    bright film is "Bright" with certainty and a mid-grey one is undecided (p 0.5)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        mean = image.mean(dim=(1, 2, 3)).unsqueeze(1)
        return torch.cat([torch.zeros_like(mean), 20.0 * (mean - 0.5)], dim=1)


@pytest.fixture
def brightness_package(tmp_path: Path) -> ModelPackage:
    folder = tmp_path / "brightness-models" / "brightness"
    folder.mkdir(parents=True)
    script(Brightness(), folder / "model.ts")
    content = manifest(
        id="cxr-brightness",
        name="Film brightness (test)",
        task="classification",
        accepts={"modalities": ["CR", "DX"], "dims": 2},
        network={"kind": "torchscript", "path": "model.ts", "output_name": "output"},
        backends=[{"name": "torch"}],
        preprocessing={"voi": "window"},
        postprocessing={"activation": "softmax"},
        labels=[],
        classes=[
            {"index": 0, "name": "Dark", "code": _local_code("Dark"), "threshold": 0.5},
            {"index": 1, "name": "Bright", "code": _local_code("Bright"), "threshold": 0.5},
        ],
        outputs={"seg": False, "sr": True},
        expect={"max_entropy": 0.5},
    )
    return write_package(folder, content)


def _local_code(name: str) -> dict[str, str]:
    """A code of a private coding scheme (PS3.16 8.2: designators starting "99")."""
    return {"value": f"PACSAI-{name.upper()}", "scheme": "99PACSAI", "meaning": name}


def _synthetic_series(folder: Path, levels: dict[str, int]) -> list[Path]:
    """Uniform 64 x 64 DX films of one series, one per (View Position, grey level)."""
    study, series = generate_uid(), generate_uid()
    films = []
    for number, (view, level) in enumerate(levels.items(), start=1):
        ds = radiographs.dx_dataset(
            np.full((64, 64), level, dtype=np.uint8),
            study_uid=study,
            series_uid=series,
            instance_number=number,
        )
        ds.ViewPosition = view
        films.append(radiographs.save(ds, folder / f"{number}.dcm"))
    return films


@pytest.mark.parametrize("on_implausible", ["hold", "deliver_flagged"])
def test_a_job_is_held_when_one_film_of_its_series_is_implausible_naming_that_film(
    brightness_package: ModelPackage, tmp_path: Path, on_implausible: str
) -> None:
    bright, grey = _synthetic_series(tmp_path / "films", {"PA": 230, "LL": 128})
    runtime = _worker(tmp_path, brightness_package, on_implausible=on_implausible)
    try:
        ended = _run_job(runtime, _open_job(runtime, [bright, grey], destinations=[]))
    finally:
        runtime.close()

    # Held: the job's reason says why. Delivered flagged: result["flagged"] does (the
    # delivery service makes it the job's reason; here no destination, results kept).
    reason = str(ended.reason if on_implausible == "hold" else ended.result["flagged"])
    undecided = f"radiograph {_sop_uid(grey)}: class probabilities undecided: entropy 1 bits"
    assert undecided in reason and _sop_uid(bright) not in reason
    assert [i["plausibility"]["ok"] for i in ended.result["images"]] == [True, False]
    assert ended.result["plausibility"]["ok"] is False
    reports = [dcmread(f) for f in ended.result["files"]]
    assert [int(r.InstanceNumber) for r in reports] == [1, 2]
    assert len({(r.SeriesInstanceUID, r.SeriesNumber, r.SeriesDescription) for r in reports}) == 1
    comments = [
        [str(item.TextValue) for item in walk(report) if "TextValue" in item] for report in reports
    ]
    if on_implausible == "hold":
        assert ended.state is JobState.NEEDS_REVIEW
        assert reason.startswith("held for review: ")
        assert not any(r.SeriesDescription.startswith("CHECK") for r in reports)
    else:
        # A series has one description: both reports are CHECK; only the grey film's
        # report says what was out of range.
        assert ended.state is JobState.DONE
        assert reason.startswith("delivered flagged CHECK: ")
        assert all(r.SeriesDescription.startswith("CHECK AI cxr-brightness SR") for r in reports)
        assert not any("entropy" in c for c in comments[0])
        assert any("entropy" in c for c in comments[1])


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person")
def test_a_worker_runs_the_example_classifier_on_a_real_chest_film_and_delivers_the_report(
    cxr_package: ModelPackage, xray_dir: Path, tmp_path: Path, orthanc: Orthanc
) -> None:
    settings = validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "model_dirs": [str(cxr_package.folder.parent)],
            "destinations": {
                "pacs": {"host": "127.0.0.1", "port": orthanc.dicom_port, "ae_title": "ORTHANC"}
            },
            "worker": {"device": "cpu", "max_attempts": 1},
        }
    )
    runtime = WorkerRuntime(settings)
    try:
        film = shutil.copy(xray_dir / "nih-cxr14-nccid.dcm", tmp_path / "film.dcm")
        series_uid = spool(settings.spool_dir, runtime.ledger, [Path(film)])
        job = runtime.ledger.open_job(
            runtime.ledger.get_series(series_uid),
            route="chest-xray",
            model_id="chest-xray-resnet18",
            destinations=["pacs"],
            priority=5,
        )
        job = runtime.ledger.transition(job.job_id, JobState.QUEUED)
        message = RunJobMessage(
            job_id=job.job_id, model_id=job.model_id, series_uid=job.series_instance_uid
        )

        JobExecutor(runtime).run(message, worker="test")
        DeliveryService(runtime.settings, runtime.ledger).run_once()
        done = runtime.ledger.get_job(job.job_id)
        notes = [e.reason for e in runtime.ledger.events(job.job_id)]
    finally:
        runtime.close()

    assert done.state is JobState.DONE, done.reason
    assert "measurements are in pixels" in json.dumps(notes)
    (stored,) = orthanc.instances()
    tags = orthanc.instance_tags(stored)
    assert tags["SOPInstanceUID"] == done.result["sr_sop_instance_uid"]
    assert tags["Modality"] == "SR"
    report = tmp_path / "delivered-sr.dcm"
    report.write_bytes(orthanc.download(stored))
    findings = _probabilities(report)
    assert findings["Pneumonia"][1] == pytest.approx(EXPECTED["Pneumonia"], abs=1e-5)


class Bright(torch.nn.Module):
    """A 2D "segmentation" of everything brighter than mid-grey: logits (0.5 - x, x - 0.5)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - image, image - 0.5], dim=1)


@pytest.fixture
def bright_package(tmp_path: Path) -> ModelPackage:
    folder = tmp_path / "bright-models" / "bright"  # alone in its folder: a worker's model_dirs
    folder.mkdir(parents=True)
    script(Bright(), folder / "model.ts")
    content = manifest(
        id="cxr-bright",
        name="Bright regions (test)",
        accepts={"modalities": ["CR", "DX"], "dims": 2},
        network={"kind": "torchscript", "path": "model.ts", "output_name": "output"},
        backends=[{"name": "torch"}],
        preprocessing={"voi": "window", "resize": {"shape": [96, 96], "mode": "letterbox"}},
        postprocessing={"reduce": "argmax"},
    )
    return write_package(folder, content)


@pytest.mark.parametrize("name", REAL)
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person")
def test_a_2d_segmentation_of_a_film_gives_a_seg_sr_and_overlay_on_the_one_image(
    bright_package: ModelPackage, xray_dir: Path, tmp_path: Path, name: str
) -> None:
    runner = ModelRunner(bright_package, device="cpu")
    volume, prediction, _ = load_and_predict(runner, [xray_dir / name])
    written = write_results(
        volume,
        prediction,
        bright_package.manifest,
        out_dir=tmp_path / "out",
        profiles={"pacs": OutputProfile(seg="binary", sr=True, sc=True, pdf=True)},
    )
    files = {f.kind: f.path for f in written.files}
    source = dcmread(xray_dir / name, stop_before_pixels=True)
    calibrated = volume.projection is not None and volume.projection.calibrated

    # Back on the film's own grid, through the letterbox: the bright half of the film.
    labels = prediction.labels
    assert labels is not None and labels.shape == volume.shape
    scaled = apply_voi(volume, torch.from_numpy(volume.voxels), "window").numpy()
    assert float(np.mean(labels == (scaled > 0.5))) > 0.97
    assert sorted(files) == ["pdf", "sc", "seg", "sr"]
    for path in files.values():
        _dciodvfy_clean(path)
    seg = hd.seg.segread(files["seg"])
    assert int(seg.NumberOfFrames) == 1 and "FrameOfReferenceUID" not in seg
    assert "PlanePositionSequence" not in seg.PerFrameFunctionalGroupsSequence[0]
    assert seg.get("PatientOrientation") == source.get("PatientOrientation", "")
    (referenced,) = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    np.testing.assert_array_equal(seg.pixel_array, labels[0])
    report = hd.sr.srread(files["sr"]).content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_planar_roi_measurement_groups()
    (on_seg,) = [g for g in groups if g.referenced_segmentation_frame is not None]
    (area,) = on_seg.get_measurements(name=codes.AREA)
    pixel_area = volume.spacing[0] * volume.spacing[1]
    assert float(area.value) == pytest.approx(int(labels.sum()) * pixel_area, rel=1e-5)
    assert area.unit == (codes.SQUARE_MILLIMETER if calibrated else codes.PIXELS)
    assert not report.get_volumetric_roi_measurement_groups()
    comments = [str(i.TextValue) for i in walk(dcmread(files["sr"])) if "TextValue" in i]
    assert any("areas are in pixels" in c for c in comments) == (not calibrated)
    overlay = dcmread(files["sc"])
    assert ("PixelSpacing" in overlay) == calibrated
    assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert overlay.get("PatientOrientation") == source.get("PatientOrientation", "")
    assert written.measurements_ml == {}


@pytest.mark.peers
@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person")
def test_a_2d_segmentation_of_two_films_gives_each_film_its_seg_sr_and_overlay_in_one_series_each(
    bright_package: ModelPackage, xray_dir: Path, tmp_path: Path, orthanc: Orthanc
) -> None:
    pa, lateral = _series(
        xray_dir, tmp_path, {"nih-cxr14-nccid.dcm": "PA", "highdicom_dx_image.dcm": "LL"}
    )
    films = [_sop_uid(pa), _sop_uid(lateral)]
    outputs = {"seg": "binary", "sr": True, "sc": True}
    pacs = {
        "pacs": {
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "ae_title": "ORTHANC",
            "outputs": outputs,
        }
    }
    runtime = _worker(tmp_path, bright_package, destinations=pacs)
    try:
        done = _run_job(runtime, _open_job(runtime, [pa, lateral], destinations=["pacs"]))
    finally:
        runtime.close()

    assert done.state is JobState.DONE, done.reason
    stored = [orthanc.instance_tags(i) for i in orthanc.instances()]
    series: dict[str, set[tuple[str, str, str]]] = {}
    for tags in stored:
        series.setdefault(tags["Modality"], set()).add(
            (tags["SeriesInstanceUID"], tags["SeriesNumber"], tags["SeriesDescription"])
        )
    assert {kind: len(found) for kind, found in series.items()} == {"SEG": 1, "SR": 1, "OT": 1}
    assert sorted(int(t["InstanceNumber"]) for t in stored) == [1, 1, 1, 2, 2, 2]
    assert len({t["SOPInstanceUID"] for t in stored}) == 6
    written = {_sop_uid(Path(f)): Path(f) for f in done.result["files"]}
    assert set(written) == {t["SOPInstanceUID"] for t in stored}
    for film, image in zip(films, done.result["images"], strict=True):
        assert image["sop_instance_uid"] == film
        seg = dcmread(written[image["seg_sop_instance_uid"]])
        (referenced,) = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        assert referenced.ReferencedSOPInstanceUID == film
        report = written[image["sr_sop_instance_uid"]]
        assert _referenced_images(report) == {film, image["seg_sop_instance_uid"]}
    overlays = [dcmread(f) for f in written.values() if "/sc/" in f.as_posix()]
    assert sorted(
        (int(o.InstanceNumber), str(o.SourceImageSequence[0].ReferencedSOPInstanceUID))
        for o in overlays
    ) == [(1, films[0]), (2, films[1])]
    for path in written.values():
        _dciodvfy_clean(path)


@pytest.mark.peers
def test_a_node_queues_a_frontal_classifier_for_a_series_whose_first_film_is_the_lateral(
    cxr_package: ModelPackage, xray_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    lateral, pa = _series(
        xray_dir, tmp_path, {"highdicom_dx_image.dcm": "LL", "nih-cxr14-nccid.dcm": "PA"}
    )
    lateral_only = _series(xray_dir, tmp_path / "ll", {"highdicom_dx_image.dcm": "LL"})
    settings = validate_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "broker_url": redis_server.url,
            "model_dirs": [str(cxr_package.folder.parent)],
            "node": {"host": "127.0.0.1", "port": free_port(), "min_free_disk_mb": 0},
            "completion": {"series_quiet_seconds": 0.5, "check_interval_seconds": 0.1},
            "routes": [
                {
                    "name": "chest-xray",
                    "match": {"Modality": ["CR", "DX"]},
                    "models": [cxr_package.manifest.id],
                }
            ],
        }
    )
    with Node(settings) as node:
        for films in ([lateral, pa], lateral_only):
            sent = storescu(films, "127.0.0.1", node.port, "PACSAI", "XRAY")
            assert sent.returncode == 0, sent.stdout + sent.stderr

        def state(film: Path) -> JobState | None:
            uid = str(dcmread(film, stop_before_pixels=True).SeriesInstanceUID)
            jobs = node.ledger.jobs(series_uid=uid)
            return jobs[0].state if jobs else None

        # The node judges every film: the PA makes the series applicable, whichever film
        # comes first; a series of laterals only is not.
        wait_for(lambda: state(pa) == JobState.QUEUED, 20, "the PA + lateral series queued")
        wait_for(lambda: state(lateral_only[0]) == JobState.NOT_APPLICABLE, 20, "laterals refused")

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

import highdicom as hd
import numpy as np
import pytest
import torch
import yaml
from pydicom import dcmread
from pydicom.uid import ComputedRadiographyImageStorage, JPEG2000Lossless, generate_uid

from core.errors import InvalidInputError
from core.jobs import JobState
from core.messages import RunJobMessage
from core.output_profiles import OutputProfile
from core.settings import validate_settings
from inference import codes
from inference.pipeline import ModelRunner
from inference.preprocess import prepare
from inference.preprocess2d import apply_voi
from inference.projection import load_projection
from inference.results import load_and_predict, write_results
from models.acceptance import facts_from_files, refusal
from models.registry import ModelPackage, load_package, sha256_of
from tests.conftest import REPO_ROOT, require
from tests.support import radiographs
from tests.support.dicom_checks import walk
from tests.support.models import export_onnx, manifest, script, write_package
from tests.support.peers import Orthanc, dciodvfy
from tests.support.resnet import fixed_logits_resnet18
from tests.support.spooling import spool
from workers.delivery import DeliveryService
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
    """The films named in ``views`` as the instances of one series, with those views."""
    study, series = generate_uid(), generate_uid()
    return [
        radiographs.in_series(
            xray_dir / name,
            folder / f"{number}.dcm",
            study_uid=study,
            series_uid=series,
            instance_number=number,
            view_position=view,
        )
        for number, (name, view) in enumerate(views.items(), start=1)
    ]


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person")
def test_of_a_pa_and_a_lateral_in_one_series_the_frontal_classifier_takes_the_pa(
    runner: ModelRunner, xray_dir: Path, tmp_path: Path
) -> None:
    lateral, frontal = _series(
        xray_dir, tmp_path, {"highdicom_dx_image.dcm": "LL", "nih-cxr14-nccid.dcm": "PA"}
    )
    frontal_uid = str(dcmread(frontal, stop_before_pixels=True).SOPInstanceUID)

    volume, prediction, _ = load_and_predict(runner, [lateral, frontal])
    written = write_results(volume, prediction, runner.manifest, out_dir=tmp_path / "out")

    assert volume.source_headers[0].SOPInstanceUID == frontal_uid
    assert any(
        "left out image 1" in n and "ViewPosition LL is not one of" in n for n in volume.notes
    )
    (sr,) = written.files
    assert {uid for _, _, uid in _probabilities(sr.path).values()} == {frontal_uid}
    # The node decides the same from the headers: a lateral alone is not for this model.
    assert refusal(runner.manifest, facts_from_files([lateral])) == (
        "chest-xray-resnet18 1.0 cannot run on this series: ViewPosition LL is not one of PA, AP"
    )


def test_two_frontal_films_in_one_series_are_refused_with_what_to_do(
    runner: ModelRunner, xray_dir: Path, tmp_path: Path
) -> None:
    paths = _series(
        xray_dir, tmp_path, {"highdicom_dx_image.dcm": "AP", "nih-cxr14-nccid.dcm": "PA"}
    )

    with pytest.raises(
        InvalidInputError, match=r"holds 2 radiographs the model accepts.*own series"
    ):
        load_and_predict(runner, paths)


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
    folder = tmp_path / "bright"
    folder.mkdir()
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

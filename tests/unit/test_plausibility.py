"""The manifest's ``expect:`` block: validated at load, checked on predictions, and what a
result delivered flagged looks like (CHECK descriptions, the SR's qualitative evaluation)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pytest
import yaml
from pydicom import dcmread

from core.errors import ConfigError
from core.output_profiles import OutputProfile
from inference import codes
from inference.pipeline import ClassResult, Prediction
from inference.plausibility import Plausibility, check_plausibility, combined, entropy_bits
from inference.results import write_results
from inference.volume import Volume
from models.manifest import ClassSpec, ModelManifest
from models.registry import EXAMPLES_DIR, load_package
from tests.support.dicom_checks import walk
from tests.support.models import manifest as manifest_dict
from tests.support.small_ct import COLUMNS, ROWS, SLICES, TWO_LUNGS, manifest, small_ct

PNEUMONIA = {"value": "233604007", "scheme": "SCT", "meaning": "Pneumonia"}
NODULE = {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"}


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    return small_ct(tmp_path_factory.mktemp("ct"))


def lungs(**expect: Any) -> ModelManifest:
    return manifest(list(TWO_LUNGS.model_dump()["labels"]), expect={"labels": expect})


def segmentation(labels: npt.NDArray[np.integer]) -> Prediction:
    return Prediction(
        labels=labels.astype(np.uint16),
        backend="torch",
        precision="fp32",
        device="cpu",
        fallbacks=(),
    )


def classification(*probabilities: float) -> Prediction:
    classes = tuple(
        ClassResult(ClassSpec(index=i, name=f"class {i}", code=PNEUMONIA), p)
        for i, p in enumerate(probabilities)
    )
    return Prediction(
        labels=None, backend="torch", precision="fp32", device="cpu", fallbacks=(), classes=classes
    )


def two_blocks() -> npt.NDArray[np.uint16]:
    """Right lung: two separate blocks of 2 x 2 x 2 and 1 voxel; left lung: 3 x 4 x 5."""
    labels = np.zeros((SLICES, ROWS, COLUMNS), dtype=np.uint16)
    labels[0:2, 0:2, 0:2] = 1
    labels[5, 7, 0] = 1
    labels[1:4, 2:6, 4:9] = 2
    return labels


def _problems(tmp_path: Path, content: dict[str, Any]) -> str:
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as caught:
        load_package(tmp_path, check_weights=False)
    return str(caught.value)


def test_ranges_that_cannot_hold_are_all_reported_with_their_keys(tmp_path: Path) -> None:
    content = manifest_dict(
        expect={"labels": {"Thing": {"volume_ml": [2000, 900], "fov_fraction": [0.1, 1.5]}}}
    )
    empty = manifest_dict(expect={"labels": {"Thing": {}}})

    text = _problems(tmp_path, content)
    nothing = _problems(tmp_path, empty)

    assert "expect.labels.Thing: volume_ml [2000.0, 900.0] must be [min, max]" in text
    assert "fov_fraction [0.1, 1.5] must lie within [0, 1]" in text
    assert "expect.labels.Thing: give at least one of volume_ml, fov_fraction, components" in (
        nothing
    )


def test_expectations_that_do_not_fit_the_model_are_all_reported(tmp_path: Path) -> None:
    content = manifest_dict(
        expect={"labels": {"Brain": {"components": 3}}, "max_entropy": 0.5},
    )

    text = _problems(tmp_path, content)

    assert "expect.labels names ['Brain'], which are not labels of the model" in text
    assert "(labels: ['Thing'])" in text
    assert "expect.max_entropy is for classification models" in text


def test_a_single_number_of_components_is_the_maximum() -> None:
    model = lungs(**{"Right lung": {"components": 3}})

    assert model.expect.labels["Right lung"].components == (0, 3)


def test_a_result_within_every_range_is_plausible_and_says_what_was_measured(
    volume: Volume,
) -> None:
    model = lungs(
        **{
            "Right lung": {"volume_ml": [0, 1], "components": [1, 2]},
            "Left lung": {"fov_fraction": [0.1, 0.2]},
        }
    )

    verdict = check_plausibility(volume, segmentation(two_blocks()), model)

    voxel_ml = volume.voxel_volume_mm3 / 1000
    assert verdict.ok and verdict.reason == ""
    assert verdict.measured["Right lung"]["volume_ml"] == pytest.approx(9 * voxel_ml)
    assert verdict.measured["Right lung"]["components"] == 2
    assert verdict.measured["Left lung"]["fov_fraction"] == pytest.approx(60 / 480)
    assert "components" not in verdict.measured["Left lung"]


def test_each_value_outside_its_range_is_named_with_the_range(volume: Volume) -> None:
    model = lungs(
        **{
            "Right lung": {"volume_ml": [900, 2500], "components": 1},
            "Left lung": {"fov_fraction": [0.5, 0.9]},
        }
    )

    verdict = check_plausibility(volume, segmentation(two_blocks()), model)

    right_ml = 9 * volume.voxel_volume_mm3 / 1000
    assert not verdict.ok
    assert verdict.problems == (
        f"Right lung: volume {right_ml:.4g} mL, expected 900-2500 mL",
        "Right lung: 2 connected components, expected at most 1",
        "Left lung: 0.125 of the field of view, expected 0.5-0.9",
    )
    assert verdict.reason == "; ".join(verdict.problems)
    assert verdict.as_dict()["ok"] is False


def test_specks_under_the_minimum_component_volume_are_not_counted(volume: Volume) -> None:
    speck_ml = volume.voxel_volume_mm3 / 1000
    model = lungs(**{"Right lung": {"components": 1, "min_component_ml": 2 * speck_ml}})

    verdict = check_plausibility(volume, segmentation(two_blocks()), model)

    assert verdict.ok, verdict.problems
    assert verdict.measured["Right lung"]["components"] == 1


def test_an_empty_label_is_outside_a_volume_range_that_starts_above_zero(volume: Volume) -> None:
    model = lungs(**{"Left lung": {"volume_ml": [0.001, 1]}})
    labels = two_blocks()
    labels[labels == 2] = 0

    verdict = check_plausibility(volume, segmentation(labels), model)

    assert verdict.problems == ("Left lung: volume 0 mL, expected 0.001-1 mL",)


def test_a_model_without_expectations_is_not_checked(volume: Volume) -> None:
    verdict = check_plausibility(volume, segmentation(two_blocks()), TWO_LUNGS)

    assert verdict == Plausibility()


@pytest.mark.parametrize(
    ("probabilities", "bits"),
    [
        ((0.5, 0.5), 1.0),
        ((1.0, 0.0), 0.0),
        ((0.25, 0.25, 0.25, 0.25), 2.0),
        ((0.9, 0.1), -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))),
        # Sigmoid classes, each its own yes/no: the most undecided one counts.
        ((0.5,), 1.0),
        ((0.99, 0.5), 1.0),
        ((0.9, 0.9), -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))),
    ],
)
def test_the_entropy_of_a_classification_is_in_bits(
    probabilities: tuple[float, ...], bits: float
) -> None:
    assert entropy_bits(classification(*probabilities).classes) == pytest.approx(bits)


def test_an_undecided_classification_is_implausible(volume: Volume) -> None:
    content = manifest_dict(
        task="classification",
        labels=[],
        classes=[
            {"index": 0, "name": "Pneumonia", "code": PNEUMONIA},
            {"index": 1, "name": "Nodule", "code": NODULE},
        ],
        outputs={"seg": False},
        expect={"max_entropy": 0.5},
    )
    model = ModelManifest.model_validate(content)

    decided = check_plausibility(volume, classification(0.95, 0.05), model)
    undecided = check_plausibility(volume, classification(0.55, 0.45), model)

    assert decided.ok and decided.measured["classes"]["entropy_bits"] < 0.5
    assert undecided.problems == (
        "class probabilities undecided: entropy 0.993 bits, expected at most 0.5",
    )


def test_the_brain_packages_accept_the_template_brain_and_refuse_a_lost_one() -> None:
    from tests.support.brain import load_template  # noqa: PLC0415 -- nilearn's template

    template, _affine = load_template()
    # The true brain mask of the tests' synthetic head (full_head: 1 mm voxels, the
    # template padded by 24 voxels for the skull and scalp), without building the head.
    mask = np.pad(template > 0, 24).astype(np.uint8)
    brain = Volume(
        voxels=np.zeros(mask.shape, dtype=np.float32),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=np.eye(3),
        source_headers=(),
        frame_of_reference_uid="1.2.3",
        study_instance_uid="1.2.3.1",
        series_instance_uid="1.2.3.2",
        modality="MR",
    )
    lost = np.zeros(mask.shape, dtype=np.uint16)
    lost[100:110, 100:110, 100:108] = 1  # 0.8 mL, as deepbrain found on a T2

    for package in ("brain_extraction_deepbrain", "brain_extraction_mindgrab"):
        model = load_package(EXAMPLES_DIR / package, check_weights=False).manifest
        found = check_plausibility(brain, segmentation(mask), model)
        missed = check_plausibility(brain, segmentation(lost), model)

        assert found.ok, (package, found.problems)
        assert found.measured["Brain"] == {
            "volume_ml": 1886.54,
            "fov_fraction": pytest.approx(0.1156, abs=1e-4),
            "components": 1.0,
        }
        assert missed.problems[0] == "Brain: volume 0.8 mL, expected 800-2500 mL"


def test_a_flagged_result_says_check_in_every_description_and_what_was_wrong_in_the_sr(
    volume: Volume, tmp_path: Path
) -> None:
    model = lungs(**{"Right lung": {"volume_ml": [900, 2500]}})
    prediction = segmentation(two_blocks())
    verdict = check_plausibility(volume, prediction, model)
    everything = OutputProfile(seg="binary", sr=True, sc=True, pdf=True)

    flagged = write_results(
        volume,
        prediction,
        model,
        out_dir=tmp_path / "flagged",
        profiles={"pacs": everything},
        flagged=verdict,
    )
    normal = write_results(
        volume, prediction, model, out_dir=tmp_path / "normal", profiles={"pacs": everything}
    )

    assert {f.kind for f in flagged.files} == {"seg", "sr", "sc", "pdf"}
    descriptions = {
        f.path.relative_to(tmp_path): str(dcmread(f.path).SeriesDescription)
        for f in (*flagged.files, *normal.files)
    }
    for file in normal.files:
        name = file.path.relative_to(tmp_path / "normal")
        plain = descriptions[Path("normal") / name]
        assert not plain.startswith("CHECK")
        assert descriptions[Path("flagged") / name] == f"CHECK {plain}"[:64], file.kind
    [flagged_sr] = [f.path for f in flagged.files if f.kind == "sr"]
    [normal_sr] = [f.path for f in normal.files if f.kind == "sr"]
    assert isinstance(hd.sr.srread(flagged_sr).content, hd.sr.MeasurementReport)
    assert _quality_control(flagged_sr) == (
        ["Value out of range"],
        [f"Right lung: volume {9 * volume.voxel_volume_mm3 / 1000:.4g} mL, expected 900-2500 mL"],
    )
    assert _quality_control(normal_sr) == ([], [])
    # The flag changes no identity: a re-run replaces the flagged objects in the PACS.
    assert {f.sop_instance_uid for f in flagged.files} == {f.sop_instance_uid for f in normal.files}


def test_a_flagged_classification_report_carries_the_quality_control_too(
    volume: Volume, tmp_path: Path
) -> None:
    model = ModelManifest.model_validate(
        manifest_dict(
            task="classification",
            labels=[],
            classes=[
                {"index": 0, "name": "Pneumonia", "code": PNEUMONIA},
                {"index": 1, "name": "Nodule", "code": NODULE},
            ],
            outputs={"seg": False, "sc": False},
            expect={"max_entropy": 0.5},
        )
    )
    prediction = classification(0.55, 0.45)
    verdict = check_plausibility(volume, prediction, model)

    written = write_results(volume, prediction, model, out_dir=tmp_path, flagged=verdict)

    [sr] = [f.path for f in written.files if f.kind == "sr"]
    assert str(dcmread(sr).SeriesDescription).startswith("CHECK ")
    assert _quality_control(sr) == (["Value out of range"], list(verdict.problems))
    report = hd.sr.srread(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert len(report.get_image_measurement_groups()) == 2


def test_several_films_are_implausible_together_when_one_is_each_problem_naming_its_film() -> None:
    fine = Plausibility((), {"classes": {"entropy_bits": 0.1}})
    undecided = Plausibility(("class probabilities undecided",), {"classes": {"entropy_bits": 1}})

    verdict = combined([("radiograph 1.2.1", fine), ("radiograph 1.2.2", undecided)])

    assert not verdict.ok
    assert verdict.problems == ("radiograph 1.2.2: class probabilities undecided",)
    assert verdict.measured == fine.measured
    assert combined([("radiograph 1.2.1", fine), ("radiograph 1.2.2", fine)]).ok
    assert combined([("", undecided)]) == undecided


def _quality_control(path: Path) -> tuple[list[str], list[str]]:
    """The Quality Control values and the Comments in the report's qualitative evaluations."""
    dataset = dcmread(path)
    containers = [
        item
        for item in walk(dataset)
        if "ConceptNameCodeSequence" in item
        and item.ConceptNameCodeSequence[0].CodeValue == codes.QUALITATIVE_EVALUATIONS.value
    ]
    values: list[str] = []
    comments: list[str] = []
    for container in containers:
        for item in container.ContentSequence:
            name = item.ConceptNameCodeSequence[0].CodeValue
            if name == codes.QUALITY_CONTROL.value:
                values.append(str(item.ConceptCodeSequence[0].CodeMeaning))
            elif name == codes.COMMENT.value:
                comments.append(str(item.TextValue))
    return values, comments

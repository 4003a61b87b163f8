"""Classification models: probabilities per class become TID 1500 findings in an SR.

The model is made here: a TorchScript network whose logits are fixed by its bias, so the
expected probabilities are known exactly (softmax by hand). The SR is read back with
highdicom and checked with dciodvfy.
"""

from __future__ import annotations

import math
from pathlib import Path

import highdicom as hd
import pypdf
import pytest
import torch
from pydicom import dcmread

from core.output_profiles import OutputProfile
from inference import codes
from inference.pipeline import ModelRunner
from inference.results import load_and_predict, write_results
from models.registry import ModelPackage
from tests.conftest import DicomFactory
from tests.support.dicom_checks import walk
from tests.support.models import manifest, script, write_package
from tests.support.peers import dciodvfy

PNEUMONIA = {"value": "233604007", "scheme": "SCT", "meaning": "Pneumonia"}
NODULE = {"value": "27925004", "scheme": "SCT", "meaning": "Nodule"}
LOGITS = (2.0, -1.0)


class FixedLogits(torch.nn.Module):
    """Global average pooling then a linear layer whose weights are zero: logits = bias."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.copy_(torch.tensor(LOGITS))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = image.mean(dim=(2, 3, 4))
        logits: torch.Tensor = self.linear(pooled)
        return logits


@pytest.fixture
def classifier(tmp_path: Path) -> ModelPackage:
    folder = tmp_path / "classifier"
    folder.mkdir()
    script(FixedLogits(), folder / "model.ts")
    content = manifest(
        id="chest-findings",
        name="Chest findings (test)",
        task="classification",
        network={"kind": "torchscript", "path": "model.ts", "output_name": "output"},
        backends=[{"name": "torch"}],
        postprocessing={"activation": "softmax"},
        preprocessing={"intensity": {"kind": "window", "window": [-1000, 400]}},
        labels=[],
        classes=[
            {"index": 0, "name": "Pneumonia", "code": PNEUMONIA, "threshold": 0.5},
            {"index": 1, "name": "Nodule", "code": NODULE, "threshold": 0.5},
        ],
        outputs={"seg": False, "sr": True},
    )
    return write_package(folder, content)


def test_probabilities_are_the_softmax_of_the_network_output(
    classifier: ModelPackage, dicom_factory: DicomFactory
) -> None:
    runner = ModelRunner(classifier, device="cpu")

    _, prediction, timings = load_and_predict(runner, dicom_factory.series(6))

    total = sum(math.exp(v) for v in LOGITS)
    assert prediction.labels is None
    assert [c.spec.name for c in prediction.classes] == ["Pneumonia", "Nodule"]
    assert [c.probability for c in prediction.classes] == pytest.approx(
        [math.exp(v) / total for v in LOGITS], abs=1e-6
    )
    assert [c.present for c in prediction.classes] == [True, False]
    assert {"decode", "preprocess", "network", "postprocess"} <= set(timings)


def test_findings_with_probabilities_are_written_as_a_tid_1500_report(
    classifier: ModelPackage, dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    runner = ModelRunner(classifier, device="cpu")
    volume, prediction, _ = load_and_predict(runner, dicom_factory.series(6))

    written = write_results(volume, prediction, classifier.manifest, out_dir=tmp_path / "out")

    assert [f.path.name for f in written.files] == ["sr.dcm"]
    assert written.seg_sop_instance_uid == "" and written.measurements_ml == {}
    assert written.probabilities["Pneumonia"] == pytest.approx(0.952574, abs=1e-6)
    report = hd.sr.srread(written.files[0].path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_image_measurement_groups()
    assert len(groups) == 2
    findings = {}
    for group in groups:
        finding = group.finding_type
        assert finding is not None
        (evaluation,) = group.get_qualitative_evaluations(name=finding)
        (probability,) = group.get_measurements(name=codes.PROBABILITY)
        assert probability.unit == codes.NO_UNITS
        value = evaluation.value
        assert isinstance(value, hd.sr.CodedConcept)
        findings[finding.meaning] = (value.meaning, float(probability.value))
    assert findings["Pneumonia"][0] == "Present"
    assert findings["Nodule"][0] == "Absent"
    assert findings["Pneumonia"][1] == pytest.approx(0.952574, abs=1e-5)
    dataset = dcmread(written.files[0].path)
    texts = {str(item.TextValue) for item in walk(dataset) if "TextValue" in item}
    assert "backend=torch,precision=fp32" in texts
    assert (
        len(
            dataset.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence
        )
        == 6
    )


def test_the_classification_report_and_its_pdf_summary_pass_dciodvfy_without_warnings(
    classifier: ModelPackage, dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    runner = ModelRunner(classifier, device="cpu")
    volume, prediction, _ = load_and_predict(runner, dicom_factory.series(6))
    written = write_results(
        volume,
        prediction,
        classifier.manifest,
        out_dir=tmp_path / "out",
        profiles={"ris": OutputProfile(seg="none", sr=True, sc=True, pdf=True)},
    )

    # No SEG and no Secondary Capture for a classification: nothing to outline.
    assert sorted(f.kind for f in written.files) == ["pdf", "sr"]
    for file in written.files:
        assert dciodvfy(file.path) == ([], []), file.path.name
    text = pypdf.PdfReader(written.files[1].path).pages[0].extract_text()
    assert "Pneumonia present 0.953 0.50" in text
    assert "Nodule absent" in text

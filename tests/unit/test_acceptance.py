"""What a model accepts, decided from headers: attribute conditions, physical extent,
the manifest checks of both, and the node, the worker and `routes test` agreeing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from core.errors import InvalidInputError
from core.jobs import JobState
from core.ledger import Ledger
from core.routing_rules import RouteSettings
from inference.pipeline import check_accepts
from inference.volume import load_series
from models.acceptance import (
    SeriesFacts,
    attribute_refusal,
    extent_refusals,
    facts_from_files,
    facts_from_volume,
    lookup,
    refusal,
    refusals,
)
from models.header_rules import AttributeCondition, ExtentSpec
from models.manifest import AcceptsSpec, ModelManifest
from models.registry import EXAMPLES_DIR, load_package
from models.route_acceptance import describe_accepts, route_conflicts
from pacs_ai.cli import main
from tests.conftest import DicomFactory
from tests.support.models import manifest
from tests.support.spooling import spool
from tests.support.whole_body import whole_body_pet

MINDGRAB = EXAMPLES_DIR / "brain_extraction_mindgrab"
DEEPBRAIN = EXAMPLES_DIR / "brain_extraction_deepbrain"


def condition(**parts: Any) -> AttributeCondition:
    return AttributeCondition.model_validate(parts)


def accepts(**fields: Any) -> AcceptsSpec:
    return AcceptsSpec.model_validate({"modalities": ["MR"], **fields})


# -- attribute conditions -----------------------------------------------------------------


def test_a_range_says_the_value_and_the_bound_with_its_unit() -> None:
    rule = condition(max=20)

    assert attribute_refusal("EchoTime", rule, 95.0) == "EchoTime 95 ms > 20 ms"
    assert attribute_refusal("EchoTime", condition(min=2), "1.5") == "EchoTime 1.5 ms < 2 ms"
    assert attribute_refusal("EchoTime", rule, "20") is None
    assert attribute_refusal("EchoTime", rule, "n/a") == "EchoTime n/a is not a number"


def test_equals_and_in_compare_numbers_numerically_and_text_exactly() -> None:
    assert attribute_refusal("EchoTime", condition(equals=4), "4.0") is None
    assert attribute_refusal("ScanningSequence", condition(equals="GR"), "GR ") is None
    assert (
        attribute_refusal("ScanningSequence", condition(equals="GR"), "SE")
        == "ScanningSequence is SE, not GR"
    )
    assert (
        attribute_refusal("ScanningSequence", condition(**{"in": ["GR", "IR"]}), ["GR", "EP"])
        == "ScanningSequence GR\\EP is not one of GR, IR"
    )
    assert (
        attribute_refusal("ScanningSequence", condition(**{"in": ["GR", "IR"]}), ["IR", "GR"])
        is None
    )
    assert (
        attribute_refusal("ScanningSequence", condition(not_in=["EP"]), ["SE", "EP"])
        == "ScanningSequence is SE\\EP, which the model does not accept"
    )


def test_a_regular_expression_must_match_the_whole_value() -> None:
    t1 = condition(regex="(?i).*t1.*")
    exact = condition(regex="T1")

    assert attribute_refusal("SeriesDescription", t1, "Sag MPRAGE T1 1mm") is None
    assert attribute_refusal("SeriesDescription", exact, "T1 MPRAGE") == (
        "SeriesDescription 'T1 MPRAGE' does not match T1"
    )
    assert attribute_refusal("SeriesDescription", t1, "AX T2 FSE") == (
        "SeriesDescription 'AX T2 FSE' does not match (?i).*t1.*"
    )


def test_contains_and_excludes_look_at_the_values_of_a_multi_valued_attribute() -> None:
    original = condition(contains=["ORIGINAL"], excludes=["LOCALIZER"])

    assert attribute_refusal("ImageType", original, ["ORIGINAL", "PRIMARY", "M"]) is None
    assert attribute_refusal("ImageType", original, ["DERIVED", "SECONDARY"]) == (
        "ImageType DERIVED\\SECONDARY does not contain ORIGINAL"
    )
    assert attribute_refusal("ImageType", original, ["ORIGINAL", "PRIMARY", "LOCALIZER"]) == (
        "ImageType ORIGINAL\\PRIMARY\\LOCALIZER contains LOCALIZER"
    )


def test_a_missing_attribute_is_accepted_unless_the_condition_refuses_it() -> None:
    nothing: list[Any] = [None, "", [], "  "]
    for absent in nothing:
        assert attribute_refusal("EchoTime", condition(max=20), absent) is None
        assert attribute_refusal("EchoTime", condition(max=20, missing="refuse"), absent) == (
            "EchoTime is absent or empty, and the model needs it"
        )
    assert attribute_refusal("InversionTime", condition(missing="refuse"), 900) is None


def test_an_enhanced_mr_gives_its_echo_time_from_its_functional_groups() -> None:
    echo = Dataset()
    echo.EffectiveEchoTime = 95.0
    timing = Dataset()
    timing.RepetitionTime = 4000.0
    shared = Dataset()
    shared.MREchoSequence = Sequence([echo])
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    header = Dataset()
    header.SharedFunctionalGroupsSequence = Sequence([shared])

    assert lookup(header, "EchoTime") == 95.0
    assert lookup(header, "RepetitionTime") == 4000.0
    assert lookup(header, "InversionTime") is None


# -- the manifest's checks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"EchoTim": {"max": 20}}, "'EchoTim' is not a DICOM keyword; did you mean 'EchoTime'?"),
        ({"ReferencedImageSequence": "x"}, "'ReferencedImageSequence' is a sequence"),
        ({"SeriesDescription": {"max": 3}}, "SeriesDescription is LO \\(text\\)"),
        ({"SeriesDescription": {"regex": "(?i"}}, "regex '\\(\\?i' does not compile"),
        ({"EchoTime": {"missing": "accept"}}, "give at least one of equals, in"),
        ({"EchoTime": {"min": 30, "max": 20}}, "min 30 is above max 20"),
    ],
)
def test_a_bad_attribute_condition_is_refused_when_the_manifest_loads(
    attributes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        accepts(attributes=attributes)


def test_a_bare_value_means_equals_and_a_list_means_in() -> None:
    spec = accepts(attributes={"ScanningSequence": ["GR", "IR"], "MRAcquisitionType": "3D"})

    assert spec.attributes["ScanningSequence"] == condition(**{"in": ["GR", "IR"]})
    assert spec.attributes["MRAcquisitionType"] == condition(equals="3D")


def test_an_extent_the_network_cannot_hold_is_refused_when_the_manifest_loads() -> None:
    content = manifest(
        accepts={"modalities": ["MR"], "extent_mm": {"max": [300, 300, 300]}},
        preprocessing={
            "orientation": "LIA",
            "target_spacing": [1.0, 1.0, 1.0],
            "crop_foreground": {"threshold": 0.1, "margin": 20},
        },
        inference={"mode": "whole_volume", "max_shape": [320, 320, 320]},
    )

    with pytest.raises(ValidationError, match=r"up to 340 voxels .* lower it to 280 mm"):
        ModelManifest.model_validate(content)
    content["inference"]["max_shape"] = [340, 340, 340]
    assert ModelManifest.model_validate(content).accepts.extent_mm is not None


# -- extent ------------------------------------------------------------------------------


def _write(folder: Path, datasets: list[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_a_whole_body_pet_is_refused_by_a_head_model_from_its_headers(tmp_path: Path) -> None:
    mindgrab = load_package(MINDGRAB, check_weights=False).manifest
    facts = facts_from_files(whole_body_pet(tmp_path / "pet"))

    assert facts.extent_mm == (700.0, 700.0, 1800.0)
    assert refusal(mindgrab, facts) == (
        "brain-extraction-mindgrab 2025.08.13 cannot run on this series: body part WHOLEBODY "
        "is not one the model accepts (HEAD, BRAIN); extent along x (right-left) 700 mm > "
        "300 mm; extent along y (anterior-posterior) 700 mm > 300 mm; extent along z "
        "(feet-head) 1800 mm > 300 mm"
    )


def test_the_extent_follows_the_patient_axes_whatever_the_slice_direction(
    dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    series, study = generate_uid(), generate_uid()
    sagittal = []
    for number in range(1, 21):
        ds = dicom_factory.dataset(
            modality="MR", size=16, series_uid=series, study_uid=study, instance_number=number
        )
        # Sagittal: along a row towards posterior (y), down a column towards feet (z).
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.PixelSpacing = [10.0, 15.0]  # between rows (z), between columns (y)
        ds.ImagePositionPatient = [2.5 * number, 0.0, 0.0]
        sagittal.append(ds)

    facts = facts_from_files(_write(tmp_path / "sagittal", sagittal))

    assert facts.extent_mm == (50.0, 240.0, 160.0)
    assert extent_refusals(ExtentSpec(max=(300, 200, 300)), facts) == [
        "extent along y (anterior-posterior) 240 mm > 200 mm"
    ]


def test_a_single_number_bounds_every_edge_even_without_an_orientation() -> None:
    radiograph = SeriesFacts(
        modality="DX", header=None, images=1, edges_mm=(430.0, 350.0, None), patient_axes=None
    )

    assert extent_refusals(ExtentSpec(max=400), radiograph) == [
        "extent along the rows 430 mm > 400 mm"
    ]
    assert extent_refusals(ExtentSpec(max=(400, 400, 400)), radiograph) == []
    assert extent_refusals(ExtentSpec(max=(400, 400, 400), missing="refuse"), radiograph) == [
        "the headers do not give the series' physical size, and the model needs it"
    ]


def test_the_worker_refuses_the_loaded_volume_for_the_reason_the_node_gives(
    dicom_factory: DicomFactory,
) -> None:
    files = dicom_factory.series(20, modality="MR")
    model = ModelManifest.model_validate(
        manifest(
            accepts={
                "modalities": ["MR"],
                "attributes": {"EchoTime": {"max": 10}},
                "extent_mm": {"max": 15},
            }
        )
    )
    node_says = refusal(model, facts_from_files(files))

    assert node_says == (
        "test-model 1.0 cannot run on this series: EchoTime 20 ms > 10 ms; "
        "extent along z (feet-head) 20 mm > 15 mm"
    )
    with pytest.raises(InvalidInputError) as raised:
        check_accepts(model, load_series(files))
    assert str(raised.value) == f"model {node_says}"


def test_facts_without_geometry_count_the_files_and_skip_the_extent(
    dicom_factory: DicomFactory,
) -> None:
    facts = facts_from_files(dicom_factory.series(3, modality="MR"), geometry=False)

    assert (facts.images, facts.modality, facts.extent_mm) == (3, "MR", (None, None, None))
    assert refusals(accepts(min_slices=4), facts) == ["3 slices, the model needs at least 4"]


# -- the brain examples ------------------------------------------------------------------


def head_mr(factory: DicomFactory, *, echo_time: float, repetition_time: float) -> list[Path]:
    """20 slices of a head MR with these timings (the headers are what counts here)."""
    series, study = generate_uid(), generate_uid()
    paths = []
    for number in range(1, 21):
        ds = factory.dataset(
            modality="MR", size=16, series_uid=series, study_uid=study, instance_number=number
        )
        ds.BodyPartExamined = "HEAD"
        ds.PixelSpacing = [12.0, 12.0]
        ds.EchoTime = echo_time
        ds.RepetitionTime = repetition_time
        paths.append(factory.save(ds))
    return paths


def test_deepbrain_declares_t1_only_and_mindgrab_any_contrast(
    dicom_factory: DicomFactory,
) -> None:
    deepbrain = load_package(DEEPBRAIN, check_weights=False).manifest
    mindgrab = load_package(MINDGRAB, check_weights=False).manifest
    t1 = facts_from_files(head_mr(dicom_factory, echo_time=3.5, repetition_time=2300))
    t2 = facts_from_files(head_mr(dicom_factory, echo_time=95, repetition_time=4000))

    assert refusals(deepbrain.accepts, t1) == []
    assert refusals(deepbrain.accepts, t2) == [
        "EchoTime 95 ms > 20 ms",
        "RepetitionTime 4000 ms > 3000 ms",
    ]
    assert refusals(mindgrab.accepts, t2) == []
    assert "EchoTime <= 20 ms (required)" in describe_accepts(deepbrain.accepts)


def test_a_route_whose_every_series_its_model_refuses_is_named() -> None:
    deepbrain = load_package(DEEPBRAIN, check_weights=False).manifest

    def route(match: dict[str, Any]) -> RouteSettings:
        return RouteSettings.model_validate({"name": "r", "match": match, "models": ["m"]})

    assert route_conflicts(route({"Modality": "CT"}), deepbrain) == [
        "the route matches Modality CT; the model accepts MR"
    ]
    assert route_conflicts(route({"EchoTime": {"min": 80}}), deepbrain) == [
        "the route matches EchoTime >= 80 ms; the model accepts <= 20 ms"
    ]
    assert route_conflicts(route({"EchoTime": [90, 100]}), deepbrain) == [
        "the route matches EchoTime 90/100: EchoTime 90 ms > 20 ms"
    ]
    assert (
        route_conflicts(route({"Modality": ["CT", "MR"], "EchoTime": {"max": 10}}), deepbrain) == []
    )


def test_routes_test_says_which_model_would_refuse_the_series_and_why(
    dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"model_dirs: [{MINDGRAB}, {DEEPBRAIN}]\n"
        "routes:\n"
        "  - name: brain\n"
        "    match: {Modality: MR}\n"
        "    models: [brain-extraction-mindgrab, brain-extraction-deepbrain]\n"
    )
    files = head_mr(dicom_factory, echo_time=95, repetition_time=2500)

    result = CliRunner().invoke(
        main, ["routes", "test", "--config", str(config), str(files[0].parent)]
    )

    assert result.exit_code == 0, result.output
    assert "     brain-extraction-mindgrab accepts it\n" in result.output
    assert (
        "     would be refused by brain-extraction-deepbrain: EchoTime 95 ms > 20 ms "
        "(recorded NOT_APPLICABLE, not queued)\n"
    ) in result.output


def test_config_check_warns_of_a_route_its_model_refuses_entirely(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"model_dirs: [{DEEPBRAIN}]\n"
        "routes:\n"
        "  - name: t2\n"
        "    match: {Modality: MR, EchoTime: {min: 80}}\n"
        "    models: [brain-extraction-deepbrain]\n"
    )

    result = CliRunner().invoke(main, ["config", "check", str(config)])

    assert result.exit_code == 0, result.output
    assert "routes[0] t2 -> brain-extraction-deepbrain accepts MR; body part HEAD/BRAIN" in (
        result.output
    )
    assert (
        "warning: routes[0] t2: every series it matches would be refused by "
        "brain-extraction-deepbrain (NOT_APPLICABLE): the route matches EchoTime >= 80 ms; "
        "the model accepts <= 20 ms"
    ) in result.output


# -- the ledger --------------------------------------------------------------------------


def test_a_not_applicable_job_runs_once_the_series_received_again_is_acceptable(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    ledger.create_schema()
    files = dicom_factory.series(3, modality="MR")
    series_uid = spool(tmp_path / "spool", ledger, files[:2])
    first = ledger.get_series(series_uid)
    args: dict[str, Any] = {"route": "r", "model_id": "m", "destinations": [], "priority": 5}

    refused = ledger.record_not_applicable(first, reason="m 1 cannot run: 2 slices", **args)
    again = ledger.record_not_applicable(first, reason="m 1 cannot run: 2 slices", **args)
    spool(tmp_path / "spool", ledger, files[2:])
    runs = ledger.open_job(ledger.get_series(series_uid), **args)

    assert (refused.state, refused.reason) == (JobState.NOT_APPLICABLE, "m 1 cannot run: 2 slices")
    assert again == refused, "nothing new arrived: left alone"
    assert runs.job_id == refused.job_id and runs.state is JobState.READY
    assert [e.state for e in ledger.events(runs.job_id)] == [
        JobState.RECEIVING,
        JobState.NOT_APPLICABLE,
        JobState.READY,
    ]
    ledger.close()


def test_a_finished_job_becomes_not_applicable_when_its_series_received_again_is_not(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    ledger.create_schema()
    files = dicom_factory.series(2, modality="MR")
    series_uid = spool(tmp_path / "spool", ledger, files[:1])
    args: dict[str, Any] = {"route": "r", "model_id": "m", "destinations": [], "priority": 5}
    job = ledger.open_job(ledger.get_series(series_uid), **args)
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.DELIVERING, JobState.DONE):
        ledger.transition(job.job_id, state)
    spool(tmp_path / "spool", ledger, files[1:])

    refused = ledger.record_not_applicable(ledger.get_series(series_uid), reason="why", **args)

    assert (refused.job_id, refused.state, refused.reason) == (
        job.job_id,
        JobState.NOT_APPLICABLE,
        "why",
    )
    ledger.close()


def test_facts_from_a_volume_match_those_from_its_files(dicom_factory: DicomFactory) -> None:
    files = dicom_factory.series(20, modality="MR")
    volume = load_series(files)

    from_volume = facts_from_volume(
        modality=volume.modality,
        header=volume.source_headers[0],
        shape=volume.shape,
        spacing=volume.spacing,
        direction=np.asarray(volume.direction),
    )

    assert from_volume.extent_mm == facts_from_files(files).extent_mm == (8.0, 8.0, 20.0)
    assert from_volume.images == 20

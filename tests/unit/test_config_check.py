"""`pacs-ai config check` reports every problem at once, one line per mistake: settings,
model packages and route models together, with "did you mean" for keywords and ids."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner

from models.registry import BUILTIN_DIR
from pacs_ai.cli import main
from pacs_ai.config_check import check_config


def write(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def broken_package(tmp_path: Path) -> Path:
    """A model folder with one valid package (a copy of ct-lungs) and one invalid one."""
    folder = tmp_path / "models"
    good = folder / "copy"
    shutil.copytree(BUILTIN_DIR / "ct_lungs", good)
    manifest = yaml.safe_load((good / "model.yaml").read_text())
    manifest["id"] = "ct-lungs-copy"
    (good / "model.yaml").write_text(yaml.safe_dump(manifest))
    bad = folder / "bad"
    bad.mkdir()
    (bad / "model.yaml").write_text("id: bad-model\nversion: 1\n")
    return folder


def test_settings_packages_and_route_models_are_all_reported_one_line_each(
    tmp_path: Path,
) -> None:
    config = write(
        tmp_path,
        {
            "data_dir": str(tmp_path / "data"),
            "model_dirs": [str(broken_package(tmp_path))],
            "node": {"prot": 104},
            "routes": [
                {
                    "name": "r",
                    "match": {
                        "Modaltiy": "CT",
                        "SeriesDescription": {"regex": "("},
                        "BodyPartExamined": [True],
                    },
                    "models": ["ct-lung", "ct-lungs-copy"],
                }
            ],
        },
    )

    report = check_config(config)
    result = CliRunner().invoke(main, ["config", "check", str(config)])

    problems = report.problems
    # One line per mistake, whatever pydantic makes of a union.
    assert [p for p in problems if p.startswith("routes[0].match.SeriesDescription")] == [
        "routes[0].match.SeriesDescription: regex '(' does not compile: missing ), "
        "unterminated subpattern at position 0"
    ]
    assert "routes[0].match.Modaltiy: not a DICOM keyword; did you mean 'Modality'?" in problems
    assert (
        "routes[0].match.BodyPartExamined[0]: a value to match is text or a number, got True"
        in problems
    )
    assert any(p.startswith("node.prot: unknown key; did you mean 'port'?") for p in problems)
    # The model packages are checked although the settings are invalid: the bad one's
    # problems are listed, the good one counts.
    assert any(p.startswith(f"{tmp_path}/models/bad/model.yaml: ") for p in problems)
    assert (
        "routes[0].models[0]: no model package 'ct-lung'; did you mean 'ct-lungs'? "
        "(installed: ct-lungs, ct-lungs-copy)" in problems
    )
    assert not any("ct-lungs-copy'" in p for p in problems)
    assert len(problems) == len(set(problems)), "each mistake once"
    assert result.exit_code == 1
    assert f"{len(problems)} problems:" in result.output
    assert all(f"  - {problem}" in result.output for problem in problems)


def test_a_route_that_can_send_a_modality_its_model_refuses_is_warned_about(
    tmp_path: Path,
) -> None:
    config = write(
        tmp_path,
        {
            "data_dir": str(tmp_path / "data"),
            "routes": [
                {"name": "any", "models": ["ct-lungs"]},
                {"name": "ct-or-mr", "match": {"Modality": ["CT", "MR"]}, "models": ["ct-lungs"]},
                {"name": "ct", "match": {"Modality": "CT"}, "models": ["ct-lungs"]},
            ],
        },
    )

    report = check_config(config)

    assert report.ok
    assert report.warnings == [
        "routes[0] any: matches any modality, and ct-lungs accepts CT only: other series end "
        "NOT_APPLICABLE (add match: {Modality: CT} to the route if that is meant)",
        "routes[1] ct-or-mr: sends MR series to ct-lungs, which accepts CT only: they end "
        "NOT_APPLICABLE",
    ]


def test_config_check_reads_pacs_ai_config_when_no_file_is_given(tmp_path: Path) -> None:
    config = write(tmp_path, {"data_dir": str(tmp_path / "data"), "node": {"ae_title": "ENV"}})

    result = CliRunner(env={"PACS_AI_CONFIG": str(config)}).invoke(main, ["config", "check"])

    assert result.exit_code == 0, result.output
    assert f"{config}: OK" in result.output
    assert "ENV on 0.0.0.0:11112" in result.output

"""The command line: every command has --help; `config check` names every problem."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from inference.writers import pacs_ai_version
from pacs_ai.cli import main
from tests.conftest import DicomFactory
from tests.support.readme import readme_configuration

# The README's smallest real configuration, read from README.md itself.
CONTRACT = readme_configuration()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["worker"],
        ["config", "check"],
        ["demo"],
        ["status"],
        ["models", "list"],
        ["send"],
    ],
)
def test_every_command_explains_itself_with_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])

    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_version_is_the_installed_packages_and_the_one_results_carry() -> None:
    result = CliRunner().invoke(main, ["--version"])

    assert result.exit_code == 0, result.output
    assert result.output == f"pacs-ai, version {version('pacs-ai')}\n"
    assert pacs_ai_version() == version("pacs-ai")


def test_config_check_accepts_the_documented_configuration(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONTRACT)

    result = CliRunner().invoke(main, ["config", "check", str(config)])

    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    assert "ct-lungs" in result.output


def test_config_check_reports_every_problem_and_fails(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        CONTRACT.replace("models: [ct-lungs]", "models: [ct-lung]").replace("port: 4242", "port: 0")
    )

    result = CliRunner().invoke(main, ["config", "check", str(config)])

    assert result.exit_code == 1
    assert "destinations.pacs.port: Input should be greater than or equal to 1" in result.output


def test_config_check_names_a_route_model_that_is_not_installed(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONTRACT.replace("models: [ct-lungs]", "models: [ct-lung]"))

    result = CliRunner().invoke(main, ["config", "check", str(config)])

    assert result.exit_code == 1
    assert (
        "routes[0].models[0]: no model package 'ct-lung'; did you mean 'ct-lungs'? "
        "(installed: ct-lungs)" in result.output
    )


def test_models_list_shows_the_built_in_model() -> None:
    result = CliRunner().invoke(main, ["models", "list"])

    assert result.exit_code == 0, result.output
    assert "ct-lungs" in result.output
    assert "Classical lung segmentation (HU threshold)" in result.output


def test_routes_test_shows_which_rule_matches_and_why_the_others_do_not(
    tmp_path: Path, dicom_factory: DicomFactory
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        CONTRACT
        + """\
  - name: brain-mr
    match: {Modality: MR}
    models: [ct-lungs]
"""
    )
    files = dicom_factory.series(2)

    result = CliRunner().invoke(
        main, ["routes", "test", "--config", str(config), str(files[0].parent)]
    )

    assert result.exit_code == 0, result.output
    assert "(CT, 2 file(s))" in result.output
    assert "chest-ct  MATCH  (series) models ct-lungs; results to pacs" in result.output
    assert "brain-mr  no     Modality is 'CT', not 'MR'" in result.output
    assert "=> chest-ct (routing.mode: all)" in result.output


def test_resend_explains_a_job_that_never_reached_delivery(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")

    result = CliRunner().invoke(main, ["resend", "--config", str(config), "0123abcd"])

    assert result.exit_code == 1
    assert "no job 0123abcd in the ledger" in result.output

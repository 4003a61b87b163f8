"""Commands work as printed: the configuration from PACS_AI_CONFIG, the 8-character job
ids `status` shows, and every command the product prints, run exactly as printed.

The printed hints of a failed delivery are produced for real (a real Orthanc stopped, or
refusing our AE title) and run with the installed ``pacs-ai`` in a fresh process, from
another directory, with only PACS_AI_CONFIG to find the configuration.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydicom import dcmread
from sqlalchemy import update

from core.jobs import InstanceRecord, JobRecord, JobState
from core.ledger import Ledger, Outbox, result_items
from core.ledger.schema import jobs_table
from core.settings import load_settings
from node_services.delivery import DeliveryService
from pacs_ai.cli import main
from tests.conftest import DicomFactory
from tests.support.peers import LOCALHOST, Orthanc

pytestmark = pytest.mark.peers

REPOSITORY = Path(__file__).resolve().parents[2]
PRODUCT = ("core", "dicom_node", "workers", "inference", "models", "monitor", "pacs_ai")
#: The installed console script, as an operator runs it.
PACS_AI = Path(sys.executable).with_name("pacs-ai")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "pacs-ai.yaml"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path / "data"),
                "node": {"ae_title": "ENVNODE"},
                "routes": [
                    {"name": "chest-ct", "match": {"Modality": "CT"}, "models": ["ct-lungs"]}
                ],
                "delivery": {"retry_delays": [1]},
                "monitor": {"enabled": False},
            }
        )
    )
    return path


@pytest.fixture
def ledger(config: Path) -> Iterator[Ledger]:
    instance = Ledger(load_settings(config, env={}).resolved_ledger_url)
    instance.create_schema()
    yield instance
    instance.close()


def make_job(ledger: Ledger, dicom_factory: DicomFactory, *, destinations: list[str]) -> JobRecord:
    path = dicom_factory.image()
    header = dcmread(path, stop_before_pixels=True)
    ledger.record_instances(
        [
            InstanceRecord(
                sop_instance_uid=str(header.SOPInstanceUID),
                sop_class_uid=str(header.SOPClassUID),
                series_instance_uid=str(header.SeriesInstanceUID),
                study_instance_uid=str(header.StudyInstanceUID),
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=str(path),
                size=path.stat().st_size,
                received_at=time.time(),
                calling_ae="CT1",
                called_ae="ENVNODE",
                peer="127.0.0.1:1",
            )
        ]
    )
    return ledger.open_job(
        ledger.get_series(str(header.SeriesInstanceUID)),
        route="chest-ct",
        model_id="ct-lungs",
        destinations=destinations,
        priority=5,
    )


def test_every_command_takes_its_configuration_from_pacs_ai_config(
    config: Path, ledger: Ledger, dicom_factory: DicomFactory
) -> None:
    job = make_job(ledger, dicom_factory, destinations=[])
    runner = CliRunner(env={"PACS_AI_CONFIG": str(config)})

    checked = runner.invoke(main, ["config", "check"])
    listed = runner.invoke(main, ["models", "list"])
    routed = runner.invoke(main, ["routes", "test", str(dicom_factory.image())])
    release = runner.invoke(main, ["release", job.job_id[:8]])
    discarded = runner.invoke(main, ["discard", job.job_id[:8], "--reason", "test series"])
    without = CliRunner(env={"PACS_AI_CONFIG": None}).invoke(main, ["config", "check"])

    assert checked.exit_code == 0, checked.output
    assert "ENVNODE" in checked.output
    assert listed.exit_code == 0 and "ct-lungs" in listed.output
    assert routed.exit_code == 0 and "=> chest-ct" in routed.output
    # The job was found in the configured ledger by its short id (release needs a held one).
    assert release.exit_code == 1 and "only a result held for review" in release.output
    assert discarded.exit_code == 0, discarded.output
    assert f"job {job.job_id}: discarded" in discarded.output
    assert ledger.get_job(job.job_id).state is JobState.FAILED
    assert without.exit_code == 2 and "set PACS_AI_CONFIG" in without.output


def test_a_short_job_id_names_its_job_and_an_unknown_or_ambiguous_one_is_refused_clearly(
    config: Path, ledger: Ledger, dicom_factory: DicomFactory, tmp_path: Path
) -> None:
    first = make_job(ledger, dicom_factory, destinations=[])
    second = make_job(ledger, dicom_factory, destinations=[])
    with ledger.engine.begin() as conn:  # two ids sharing their first 8 characters
        for job, tail in ((first, "1"), (second, "2")):
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.job_id == job.job_id)
                .values(job_id="abcdef01" + tail * 24)
            )
    runner = CliRunner(env={"PACS_AI_CONFIG": str(config)})

    ambiguous = runner.invoke(main, ["discard", "abcdef01", "--reason", "x"])
    unique = runner.invoke(main, ["discard", "ABCDEF012", "--reason", "x"])
    unknown = runner.invoke(main, ["resend", "0000aaaa"])
    not_an_id = runner.invoke(main, ["resend", "job-1"])
    # No configuration: the defaults, with the data directory (and so the default ledger)
    # in a temp folder rather than /var/lib/pacs-ai.
    default_data = tmp_path / "default-data"
    unconfigured = CliRunner(
        env={"PACS_AI_CONFIG": None, "PACS_AI_DATA_DIR": str(default_data)}
    ).invoke(main, ["resend", "0000aaaa"])

    assert ambiguous.exit_code == 1
    assert "abcdef01 is the start of several job ids: abcdef01111" in ambiguous.output
    assert "give more of it" in ambiguous.output
    assert unique.exit_code == 0 and f"job abcdef01{'2' * 24}: discarded" in unique.output
    assert unknown.exit_code == 1 and "no job 0000aaaa in the ledger (sqlite:///" in unknown.output
    assert not_an_id.exit_code == 1 and "'job-1' is not a job id" in not_an_id.output
    assert "PACS_AI_CONFIG is not set, so this is the default ledger" in unconfigured.output
    assert f"sqlite:///{default_data}" in unconfigured.output


def _printed_commands() -> Iterator[tuple[str, str]]:
    """(where, command text) of each ``pacs-ai ...`` in the product's strings."""
    for folder in PRODUCT:
        for path in sorted((REPOSITORY / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.JoinedStr):
                    text = "".join(
                        str(v.value) if isinstance(v, ast.Constant) else "X" for v in node.values
                    )
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value
                else:
                    continue
                where = f"{path.relative_to(REPOSITORY)}:{node.lineno}"
                for match in re.finditer(
                    r"pacs-ai(?: [a-z][\w-]*| --?[a-z][\w-]*| [A-Z_]+)+", text
                ):
                    yield where, match.group(0)


def _check_command(words: list[str]) -> str | None:
    """Why ``words`` (after ``pacs-ai``) is not a command line of ours; None if it is."""
    command: click.Command = main
    context = click.Context(main, info_name="pacs-ai")
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(context, rest[0])
        if sub is None:
            return f"no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [w for w in rest if w.startswith("--") and w not in options and w != "--help"]
    return f"no option {', '.join(unknown)}" if unknown else None


def test_every_command_the_product_prints_exists_with_its_options() -> None:
    commands = {m.name for m in main.commands.values()}
    checked = 0
    wrong = []
    for where, text in _printed_commands():
        words = text.split()[1:]
        if words[0] not in commands:
            continue  # prose ("the pacs-ai node ...")
        checked += 1
        problem = _check_command(words)
        if problem:
            wrong.append(f"{where}: {text!r}: {problem}")

    assert wrong == []
    assert checked > 20, "the scan found the hints"


def run_as_printed(command: str, *, config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a printed command line in a fresh process, from ``cwd``, as an operator would."""
    argv = shlex.split(command)
    assert argv[0] == "pacs-ai"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_AI_")}
    env["PACS_AI_CONFIG"] = str(config)
    return subprocess.run(
        [str(PACS_AI), *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _hint(reason: str | None) -> str:
    assert reason is not None
    match = re.search(r"`(pacs-ai [^`]+)`", reason)
    assert match, f"no command in {reason!r}"
    return match.group(1)


class LaterClock:
    """Real time plus what the test skips ahead (a retry schedule without waiting)."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.time() + self.skipped


@pytest.fixture
def clock() -> LaterClock:
    return LaterClock()


@pytest.fixture
def delivery_rig(
    config: Path, ledger: Ledger, make_orthanc: Callable[..., Orthanc], clock: LaterClock
) -> Callable[..., tuple[Orthanc, DeliveryService]]:
    def make(**orthanc_config: object) -> tuple[Orthanc, DeliveryService]:
        orthanc = make_orthanc(extra_config=orthanc_config)
        raw = json.loads(config.read_text())
        raw["destinations"] = {
            "pacs": {"host": LOCALHOST, "port": orthanc.dicom_port, "ae_title": orthanc.aet}
        }
        config.write_text(json.dumps(raw))
        return orthanc, DeliveryService(load_settings(config, env={}), ledger, clock=clock)

    return make


def waiting_results(ledger: Ledger, dicom_factory: DicomFactory) -> JobRecord:
    job = make_job(ledger, dicom_factory, destinations=["pacs"])
    for state in (JobState.QUEUED, JobState.RUNNING):
        ledger.transition(job.job_id, state)
    path = dicom_factory.image()
    header = dcmread(path, stop_before_pixels=True)
    Outbox(ledger).add(
        result_items(
            job_id=job.job_id,
            series_uid=job.series_instance_uid,
            route="chest-ct",
            destinations=["pacs"],
            files=[(str(header.SOPInstanceUID), str(header.SOPClassUID), path)],
        )
    )
    return ledger.transition(job.job_id, JobState.DELIVERING)


def test_the_resend_printed_for_a_dead_letter_and_a_retry_runs_as_printed(
    config: Path,
    ledger: Ledger,
    dicom_factory: DicomFactory,
    delivery_rig: Callable[..., tuple[Orthanc, DeliveryService]],
    clock: LaterClock,
) -> None:
    orthanc, service = delivery_rig()
    job = waiting_results(ledger, dicom_factory)
    orthanc.stop(graceful=False)

    service.run_once()
    waiting = _hint(ledger.get_job(job.job_id).reason)
    orthanc.start(fixed_ports=True)
    tried_now = run_as_printed(waiting, config=config, cwd=config.parent)
    service.run_once()
    first_done = ledger.get_job(job.job_id).state

    second = waiting_results(ledger, dicom_factory)
    orthanc.stop(graceful=False)
    service.run_once()
    clock.skipped += 1  # delivery.retry_delays is [1]: the one retry, then dead-lettered
    service.run_once()
    failed = ledger.get_job(second.job_id)
    orthanc.start(fixed_ports=True)
    resent = run_as_printed(_hint(failed.reason), config=config, cwd=config.parent)
    service.run_once()

    assert tried_now.returncode == 0, tried_now.stderr
    assert first_done is JobState.DONE
    assert failed.state is JobState.FAILED
    assert resent.returncode == 0, resent.stderr
    assert "queued for delivery again" in resent.stdout
    assert ledger.get_job(second.job_id).state is JobState.DONE
    assert len(orthanc.instances()) == 2


def test_the_resend_printed_for_a_misconfigured_destination_runs_as_printed(
    tmp_path: Path,
    config: Path,
    ledger: Ledger,
    dicom_factory: DicomFactory,
    delivery_rig: Callable[..., tuple[Orthanc, DeliveryService]],
) -> None:
    orthanc, service = delivery_rig(DicomAlwaysAllowStore=False, DicomAlwaysAllowEcho=False)
    job = waiting_results(ledger, dicom_factory)

    service.run_once()
    printed = _hint(ledger.get_job(job.job_id).reason)
    orthanc.add_modality("pacsai", "ENVNODE", LOCALHOST, 11112)  # the PACS is fixed
    result = run_as_printed(printed, config=config, cwd=tmp_path)
    service.run_once()

    assert printed == f"pacs-ai resend {job.job_id}"
    assert result.returncode == 0, result.stderr
    assert "ignoring environment variable" not in result.stderr
    assert ledger.get_job(job.job_id).state is JobState.DONE
    assert len(orthanc.instances()) == 1

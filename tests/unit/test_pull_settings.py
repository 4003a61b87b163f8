"""The configuration of pulling from a PACS and of shadow routes: every mistake named."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from core.errors import ConfigError
from core.settings import validate_settings
from pacs_ai.cli import main

PACS = {"host": "10.0.0.5", "port": 104, "ae_title": "PACS"}


@pytest.fixture(autouse=True)
def _process_logging_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    # The commands set up the process's logging, which the rest of the session shares.
    monkeypatch.setattr("core.logs.configure_logging", lambda *_args: None)


def settings(**raw: Any) -> Any:
    return validate_settings({"destinations": {"pacs": PACS}, **raw})


def test_a_destination_gains_a_query_retrieve_role_with_c_get_by_default() -> None:
    loaded = settings(destinations={"pacs": {**PACS, "query_retrieve": {}}})
    role = loaded.destinations["pacs"].query_retrieve
    assert role is not None
    assert (role.retrieve, role.move_destination, role.max_studies) == ("get", None, 1000)


def test_a_bad_query_retrieve_role_and_backfill_window_are_each_named() -> None:
    with pytest.raises(ConfigError) as raised:
        settings(
            destinations={
                "pacs": {
                    **PACS,
                    "query_retrieve": {"retrieve": "fetch", "move_destination": "A\\B"},
                }
            },
            backfill={"window": "8pm-6am"},
        )
    text = str(raised.value)
    assert "destinations.pacs.query_retrieve.retrieve" in text
    assert "destinations.pacs.query_retrieve.move_destination" in text
    assert "backfill.window" in text and "not a time window HH:MM-HH:MM" in text


def test_a_shadow_route_may_not_forward_originals() -> None:
    route = {
        "name": "shadow",
        "models": ["ct-lungs"],
        "send_results_to": ["pacs"],
        "forward_originals_to": ["pacs"],
        "shadow": True,
    }
    with pytest.raises(ConfigError, match="a shadow route delivers nothing"):
        settings(routes=[route])


def test_the_routes_of_pulled_studies_cannot_be_taken_by_a_configured_route() -> None:
    with pytest.raises(ConfigError, match=r"routes\[0\].name: 'backfill' is the route of the jobs"):
        settings(routes=[{"name": "backfill", "models": ["ct-lungs"]}])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", "1.2", "--accession", "A1", "--models", "ct-lungs", "--keep"], "exactly one of"),
        (["--patient-id", "P1", "--models", "ct-lungs", "--keep"], "--patient-id needs --study-date"),
        (["--study", "1.2", "--keep"], "give --models a,b (or --routes"),
        (["--study", "1.2", "--models", "ct-lungs"], "give --send-results-to DESTINATION, or --keep"),
        (["--study", "1.2", "--models", "no-such-model", "--keep"], "no model package no-such-model"),
        (["--study", "1.2", "--routes", "--keep"], "--routes routes by the configured rules"),
        (["--study", "1.2", "--models", "ct-lungs", "--send-results-to", "nowhere"], "no destination nowhere"),
        (["--study", "1.2", "--series-filter", "Modalty=CT", "--models", "ct-lungs", "--keep"], "did you mean 'Modality'"),
    ],
)  # fmt: skip
def test_pacs_ai_run_says_what_is_wrong_with_its_options(
    tmp_path: Any, args: list[str], message: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndestinations:\n  pacs: {PACS}\n".replace("'", ""))
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--from", "pacs", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_pacs_ai_backfill_refuses_a_window_it_cannot_read() -> None:
    result = CliRunner().invoke(
        main, ["backfill", "--from", "pacs", "--study-date", "20240101", "--window", "nights"]
    )
    assert result.exit_code == 2
    assert "expected HH:MM-HH:MM (e.g. 20:00-06:00) or 'any'" in result.output

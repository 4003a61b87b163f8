"""The configuration contract: the issue's file works as written; every problem is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import DestinationSettings, load_settings, validate_settings
from tests.support.readme import readme_configuration

# The README's smallest real configuration, read from README.md itself.
CONTRACT = readme_configuration()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_documented_configuration_loads_exactly_as_written(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, CONTRACT), env={})

    assert settings.data_dir == Path("/var/lib/pacs-ai")
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert (settings.node.ae_title, settings.node.host, settings.node.port) == (
        "PACSAI",
        "0.0.0.0",
        11112,
    )
    assert settings.completion.series_quiet_seconds == 10
    pacs = settings.destinations["pacs"]
    assert isinstance(pacs, DestinationSettings) and pacs.ae_title == "ORTHANC"
    route = settings.routes[0]
    assert (route.name, route.match, route.models, route.send_results_to) == (
        "chest-ct",
        {"Modality": "CT"},
        ["ct-lungs"],
        ["pacs"],
    )
    assert settings.resolved_ledger_url == "sqlite:////var/lib/pacs-ai/ledger.sqlite3"


def test_an_empty_route_list_is_a_valid_receive_only_node(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "routes: []\n"), env={})

    assert settings.routes == []
    assert settings.broker_url is None


def test_every_problem_is_reported_at_once_naming_its_key(tmp_path: Path) -> None:
    text = """\
data_dir: 5
nod: {}
node: {ae_title: "PACS\\\\AI", port: "11112"}
completion: {series_quiet_seconds: -1}
destinations:
  pacs: {host: 127.0.0.1, port: 99999, ae_title: ORTHANC}
routes:
  - name: chest-ct
    match: {Modalty: CT}
    models: [ct-lungs]
    priority: 10
    send_results_to: [pac]
"""
    with pytest.raises(ConfigError, match="problems") as caught:
        load_settings(write(tmp_path, text), env={})

    problems = "\n".join(caught.value.problems)
    for expected in (
        "data_dir: Input should be a valid string",
        "nod: unknown key; did you mean 'node'?",
        "node.ae_title: 'PACS\\\\AI' is not a valid AE title",
        "node.port: Input should be a valid integer, got '11112'",
        "completion.series_quiet_seconds: Input should be greater than 0",
        "destinations.pacs.port: Input should be less than or equal to 65535",
        "routes[0].match.Modalty: not a DICOM keyword; did you mean 'Modality'?",
        "routes[0].priority: Input should be less than or equal to 9",
        "routes[0].send_results_to[0]: unknown destination 'pac' (destinations: pacs)",
    ):
        assert expected in problems
    assert len(caught.value.problems) == 9


def test_environment_variables_override_the_file_and_are_named_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, CONTRACT)

    settings = load_settings(path, env={"PACS_AI_NODE__PORT": "11113", "PACS_AI_BROKER_URL": ""})
    assert settings.node.port == 11113
    assert settings.broker_url is None

    with pytest.raises(ConfigError, match=r"node\.port \(from PACS_AI_NODE__PORT\)"):
        load_settings(path, env={"PACS_AI_NODE__PORT": "eleven"})
    with pytest.raises(ConfigError, match=r"node\.prot \(from PACS_AI_NODE__PROT\): unknown key"):
        load_settings(path, env={"PACS_AI_NODE__PROT": "1"})


def test_variables_that_name_no_setting_are_ignored_and_reported(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, CONTRACT), env={"PACS_AI_CONFIG": "x.yaml", "PACS_AI_SHARED_DATA": "/data"}
    )

    assert settings.ignored_environment == ("PACS_AI_CONFIG", "PACS_AI_SHARED_DATA")


def test_duplicate_route_names_are_refused(tmp_path: Path) -> None:
    text = CONTRACT + "  - {name: chest-ct, models: [ct-lungs]}\n"

    with pytest.raises(ConfigError, match=r"routes\[1\]\.name: duplicate route name 'chest-ct'"):
        load_settings(write(tmp_path, text), env={})


def test_a_file_that_is_not_yaml_says_where(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2, column"):
        load_settings(write(tmp_path, "node:\n  port: [1\n"), env={})


def test_a_broker_url_that_is_not_redis_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"broker_url: 'amqp://x' is not a Redis URL"):
        load_settings(write(tmp_path, "broker_url: amqp://x\n"), env={})


def test_a_route_must_run_models_or_forward_originals(tmp_path: Path) -> None:
    text = "routes:\n  - {name: nothing, match: {Modality: CT}}\n"

    with pytest.raises(
        ConfigError, match="routes\\[0\\]: a route needs models to run or forward_originals_to"
    ):
        load_settings(write(tmp_path, text), env={})


def test_route_conditions_are_checked_when_loaded(tmp_path: Path) -> None:
    text = """\
destinations: {web: {type: dicomweb, url: "ftp://x"}}
routes:
  - name: r
    match: {SeriesDescription: {regex: "(unclosed"}, SliceThickness: {min: 5, max: 1}, Modality: {}}
    source: [10.0.0.0/33]
    forward_originals_to: [web, nowhere]
    complete_when: [{min_instances: 50}]
"""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env={})

    problems = "\n".join(caught.value.problems)
    assert "destinations.web.url: String should match pattern '^https?://'" in problems
    assert "regex '(unclosed' does not compile" in problems
    assert "min 5.0 is above max 1.0" in problems
    assert "give at least one of equals, one_of, regex, min, max, present" in problems
    assert "'10.0.0.0/33' is not an IP address or network" in problems
    assert "routes[0].forward_originals_to[1]: unknown destination 'nowhere'" in problems


def test_a_dicomweb_destination_and_a_study_route_load(tmp_path: Path) -> None:
    text = """\
destinations:
  web: {type: dicomweb, url: "http://orthanc:8042/dicom-web", token: secret}
  pacs: {host: 127.0.0.1, port: 4242, ae_title: ORTHANC}
routes:
  - name: petct
    trigger: study
    complete_when: [{match: {Modality: CT}, min_instances: 50}, {match: {Modality: PT}}]
    match: {Modality: [CT, PT], SeriesDescription: {regex: "(?i)wb"}}
    calling_ae: {one_of: [PETCT1, PETCT2]}
    source: [10.0.0.0/8]
    models: [ct-lungs]
    send_results_to: [web]
    forward_originals_to: [pacs]
    priority: 0
routing: {mode: first, unrouted: discard}
delivery: {retry_delays: [1, 2]}
"""
    settings = load_settings(write(tmp_path, text), env={})

    web = settings.destinations["web"]
    assert web.type == "dicomweb"
    assert "secret" not in repr(settings)
    assert settings.destinations["pacs"].type == "dimse"
    route = settings.routes[0]
    assert route.trigger == "study" and route.complete_when[0].min_instances == 50
    assert settings.routing.mode == "first" and settings.delivery.retry_delays == [1, 2]


@pytest.mark.parametrize("title", ["PACSAI\n", "PACS\tAI", "PACS\\AI", "   "])
def test_an_ae_title_with_a_control_character_or_a_trailing_newline_is_refused(
    title: str,
) -> None:
    with pytest.raises(ConfigError, match=r"node\.ae_title: .* is not a valid AE title"):
        validate_settings({"node": {"ae_title": title}, "routes": []})


def test_decoding_processes_default_to_the_cpus_and_may_be_turned_off() -> None:
    assert validate_settings({}).worker.decode_processes is None
    assert validate_settings({"worker": {"decode_processes": 0}}).worker.decode_processes == 0
    with pytest.raises(ConfigError, match=r"worker\.decode_processes"):
        validate_settings({"worker": {"decode_processes": -1}})

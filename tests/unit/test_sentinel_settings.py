"""Redis Sentinel in the configuration: Celery's documented URL form plus the master's name,
every mistake refused at start-up with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from core.broker import transport_options
from core.errors import ConfigError
from core.queue import make_celery
from core.sentinel import SentinelUrl, parse_sentinel_url
from core.settings import load_settings, validate_settings
from pacs_ai.cli import main

SENTINELS = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3/0"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_sentinel_broker_loads_with_its_master_name(tmp_path: Path) -> None:
    text = f"broker_url: {SENTINELS}\nbroker_sentinel: {{master_name: pacs-ai}}\n"

    settings = load_settings(write(tmp_path, text), env={})

    assert settings.broker_url == SENTINELS
    assert settings.broker_sentinel is not None
    assert settings.broker_sentinel.master_name == "pacs-ai"


def test_the_environment_can_point_every_process_at_the_sentinels() -> None:
    settings = load_settings(
        None,
        env={
            "PACS_AI_BROKER_URL": SENTINELS,
            "PACS_AI_BROKER_SENTINEL__MASTER_NAME": "pacs-ai",
            "PACS_AI_BROKER_SENTINEL__PASSWORD": "sentinel-secret",
        },
    )

    assert settings.broker_sentinel is not None
    assert settings.broker_sentinel.master_name == "pacs-ai"


def test_celery_gets_the_master_name_and_the_sentinels_password_as_transport_options() -> None:
    settings = validate_settings(
        {
            "broker_url": SENTINELS,
            "broker_sentinel": {
                "master_name": "pacs-ai",
                "password": "s3cret",
                "timeout_seconds": 2,
            },
        }
    )

    app = make_celery(settings)

    options = app.conf.broker_transport_options
    assert options["master_name"] == "pacs-ai"
    assert options["sentinel_kwargs"] == {
        "password": "s3cret",
        "socket_timeout": 2,
        "socket_connect_timeout": 2,
    }
    # The rest of the reliability contract is unchanged.
    assert options["visibility_timeout"] > settings.worker.job_timeout_seconds


def test_a_plain_redis_broker_has_no_sentinel_options() -> None:
    assert transport_options(validate_settings({"broker_url": "redis://10.0.0.1:6379/0"})) == {}


def test_the_url_gives_every_sentinel_and_the_masters_database_and_password() -> None:
    parsed = parse_sentinel_url("sentinel://:pa%40ss@10.0.0.1:26380/2;sentinel://10.0.0.2")

    assert parsed == SentinelUrl(
        addresses=(("10.0.0.1", 26380), ("10.0.0.2", 26379)),
        db=2,
        username=None,
        password="pa@ss",  # noqa: S106 -- percent-decoded from the URL
    )


def test_the_database_number_is_read_from_the_first_address() -> None:
    assert parse_sentinel_url("sentinel://a:1/3;sentinel://b:2").db == 3
    with pytest.raises(ValueError, match="read from the first Sentinel address only"):
        parse_sentinel_url("sentinel://a:1;sentinel://b:2/3")


def test_a_sentinel_url_without_a_master_name_is_refused_saying_where_it_comes_from() -> None:
    with pytest.raises(
        ConfigError, match=r"broker_sentinel\.master_name: missing: .*sentinel monitor"
    ):
        validate_settings({"broker_url": SENTINELS})


def test_a_master_name_without_a_sentinel_url_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"broker_sentinel: set, but broker_url is not a sentinel"
    ):
        validate_settings(
            {"broker_url": "redis://10.0.0.1:6379/0", "broker_sentinel": {"master_name": "x"}}
        )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sentinel://a:26379,b:26379", r"separate the Sentinels with ';'"),
        ("sentinel://a:26379/pacs-ai", r"the path is the Redis database number"),
        ("sentinel://a:26379?master=pacs-ai", r"takes no '\?' or '#' part"),
        ("sentinel://a:26379;redis://b:6379", r"'redis://b:6379' is not a Sentinel address"),
        ("sentinel://a:263790", r"is not a Sentinel address \(Port out of range"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_with_the_form_to_use(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"broker_url: .*{message}"):
        validate_settings({"broker_url": url, "broker_sentinel": {"master_name": "pacs-ai"}})


def test_a_broker_url_of_another_kind_names_both_redis_forms() -> None:
    with pytest.raises(ConfigError, match=r"'amqp://x' is not a Redis URL.*sentinel://HOST:PORT"):
        validate_settings({"broker_url": "amqp://x"})


def test_config_check_names_the_sentinel_master(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f"data_dir: {tmp_path / 'data'}\nbroker_url: {SENTINELS}\n"
        "broker_sentinel: {master_name: pacs-ai}\n",
    )

    result = CliRunner().invoke(main, ["config", "check", str(config)])

    assert result.exit_code == 0, result.output
    assert f"broker      {SENTINELS} (Redis Sentinel, master pacs-ai)" in result.output

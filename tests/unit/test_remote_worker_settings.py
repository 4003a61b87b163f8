"""The settings of remote workers and of nodes that share a ledger."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import Settings, load_settings, validate_settings
from workers.app import worker_settings_json

TOKEN = "a-worker-token-of-24-chars"  # noqa: S105 -- a test value


def test_a_remote_worker_takes_its_token_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text("worker:\n  fetch_from: https://node-a.example.org:8090/dicomweb\n")

    settings = load_settings(config, env={"PACS_AI_WORKER__FETCH_TOKEN": TOKEN})

    assert settings.worker.fetch_from == "https://node-a.example.org:8090/dicomweb"
    assert settings.worker.fetch_token is not None
    assert settings.worker.fetch_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)


def test_the_worker_processes_receive_the_fetch_token_and_no_other_secret() -> None:
    settings = validate_settings(
        {
            "worker": {"fetch_from": "http://node:8090/dicomweb", "fetch_token": TOKEN},
            "monitor": {"tokens": [{"name": "ops", "role": "admin", "token": "x" * 20}]},
        }
    )

    received = Settings.model_validate_json(worker_settings_json(settings))

    assert received.worker.fetch_token is not None
    assert received.worker.fetch_token.get_secret_value() == TOKEN
    assert "x" * 20 not in worker_settings_json(settings)
    assert json.loads(worker_settings_json(settings))["monitor"]["tokens"][0]["token"] != "x" * 20


def test_a_fetch_url_that_is_not_http_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"worker\.fetch_from"):
        validate_settings({"worker": {"fetch_from": "node-a:8090"}})


def test_a_token_may_have_the_worker_role_and_a_user_may_not() -> None:
    settings = validate_settings(
        {"monitor": {"tokens": [{"name": "gpu-hosts", "role": "worker", "token": TOKEN}]}}
    )
    assert settings.monitor.tokens[0].role == "worker"
    with pytest.raises(ConfigError, match=r"monitor\.users\[0\]\.role"):
        validate_settings(
            {
                "monitor": {
                    "users": [{"name": "w", "role": "worker", "password_hash": "scrypt$1$1$1$a$b"}]
                }
            }
        )


def test_a_node_is_named_after_its_machine_unless_named_and_its_dicomweb_url_is_checked() -> None:
    assert validate_settings({}).node.name == socket.gethostname()
    named = validate_settings(
        {"node": {"name": "node-b", "dicomweb_url": "https://node-b.example.org:8090/dicomweb"}}
    )
    assert (named.node.name, named.node.dicomweb_url) == (
        "node-b",
        "https://node-b.example.org:8090/dicomweb",
    )
    with pytest.raises(ConfigError, match=r"node\.name"):
        validate_settings({"node": {"name": "node b/../x"}})
    with pytest.raises(ConfigError, match=r"node\.dicomweb_url"):
        validate_settings({"node": {"dicomweb_url": "node-b:8090"}})

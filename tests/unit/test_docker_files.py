"""The docker/ files hold together without a Docker engine: every pacs-ai container's
configuration (the mounted config file plus the environment compose gives it, secrets
filled in) passes the settings loader with no variable ignored; node and workers keep
separate data volumes; the images copy every package pyproject installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings, load_settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE_FILES = ["compose.yaml", "compose.two-nodes.yaml"]
DATA_DIR = "/var/lib/pacs-ai"
PACS_AI_IMAGES = {"pacs-ai-node", "pacs-ai-worker"}

#: What a site puts in docker/.env (env.example lists the names): well-formed test values.
SECRETS = {
    "PACS_AI_DB_PASSWORD": "db-password",
    "PACS_AI_METRICS_TOKEN": "metrics-token-0123456789",
    "PACS_AI_WORKER_TOKEN": "worker-token-0123456789",
    "PACS_AI_ADMIN_PASSWORD_HASH": "scrypt$16384$8$1$c2FsdHNhbHQ=$aGFzaGhhc2g=",
}
# Compose's interpolation: ${NAME}, ${NAME:?error}, ${NAME:-default}, $$ for a dollar.
_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")
# ${NAME:-default}: optional, with a default (the published host ports), not a secret.
_OPTIONAL = re.compile(r"\$\{(\w+):-(?P<default>[^}]*)\}")


def interpolate(value: Any) -> Any:
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: SECRETS[m.group(1)], value).replace("$$", "$")
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    return value


def compose(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((DOCKER / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def pacs_ai_services(name: str) -> dict[str, dict[str, Any]]:
    services = compose(name)["services"]
    return {key: s for key, s in services.items() if s.get("image") in PACS_AI_IMAGES}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume, or a path relative to docker/)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def settings_of(service: dict[str, Any]) -> Settings:
    """The service's configuration as `pacs-ai` loads it in the container."""
    config = DOCKER / mounts(service)["/etc/pacs-ai/config.yaml"]
    environment = {key: str(value) for key, value in interpolate(service["environment"]).items()}
    settings = load_settings(config, env=environment)
    assert settings.ignored_environment == (), "variables that name no setting"
    return settings


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_variable_a_compose_file_needs_is_listed_in_env_example(name: str) -> None:
    text = (DOCKER / name).read_text()
    needed = set(_VARIABLE.findall(text)) - {m[1] for m in _OPTIONAL.finditer(text)}
    listed = {
        line.split("=", 1)[0]
        for line in (DOCKER / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }

    assert needed <= listed
    assert needed <= set(SECRETS)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_pacs_ai_container_configuration_passes_the_settings_loader(name: str) -> None:
    services = pacs_ai_services(name)
    loaded = {key: settings_of(service) for key, service in services.items()}

    assert {s.get("image") for s in services.values()} == PACS_AI_IMAGES
    # One broker and one PostgreSQL ledger for all of them.
    assert len({s.broker_url for s in loaded.values()}) == 1
    assert {s.resolved_ledger_url.split(":", 1)[0] for s in loaded.values()} == {
        "postgresql+psycopg"
    }
    assert len({s.ledger_url for s in loaded.values()}) == 1


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_node_and_workers_have_data_volumes_of_their_own_and_workers_fetch_over_dicomweb(
    name: str,
) -> None:
    services = pacs_ai_services(name)
    volumes = [mounts(service)[DATA_DIR] for service in services.values()]
    declared = set(compose(name)["volumes"])

    assert len(volumes) == len(set(volumes)), f"a data volume is shared: {volumes}"
    assert set(volumes) <= declared
    for key, service in services.items():
        settings = settings_of(service)
        if service["image"] == "pacs-ai-worker":
            assert settings.worker.fetch_from is not None, key
            assert settings.worker.fetch_token is not None, key
        else:
            tokens = {token.role for token in settings.monitor.tokens}
            assert "worker" in tokens, f"{key} has no token for the workers"


def test_two_nodes_have_their_own_names_and_addresses_and_the_balancer_sends_to_both() -> None:
    services = compose("compose.two-nodes.yaml")["services"]
    nodes = {
        key: settings_of(service)
        for key, service in services.items()
        if service.get("image") == "pacs-ai-node"
    }
    balancer = (DOCKER / mounts(services["lb"])["/usr/local/etc/haproxy/haproxy.cfg"]).read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+):(\d+)", balancer, flags=re.MULTILINE)

    assert len(nodes) == 2
    assert {s.node.name for s in nodes.values()} == set(nodes)
    assert {s.node.dicomweb_url for s in nodes.values()} == {
        f"http://{key}:{s.monitor.port}/dicomweb" for key, s in nodes.items()
    }
    # Both ports of every node, and nothing else.
    assert sorted((host, int(port)) for _, host, port in servers) == sorted(
        (key, port) for key, s in nodes.items() for port in (s.node.port, s.monitor.port)
    )
    published = {_OPTIONAL.sub(r"\g<default>", port) for port in services["lb"]["ports"]}
    assert {"11112:11112", "8090:8090"} <= published


def test_the_example_configuration_loads() -> None:
    for config in sorted(DOCKER.glob("config*.yaml")):
        load_settings(config, env={})


@pytest.mark.parametrize("dockerfile", ["node.Dockerfile", "worker.Dockerfile"])
def test_the_images_copy_every_package_that_pyproject_installs(dockerfile: str) -> None:
    pyproject = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (DOCKER / dockerfile).read_text(), re.M))

    assert packages <= copied

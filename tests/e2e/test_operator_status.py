"""`pacs-ai status` against real `pacs-ai serve` and `pacs-ai worker` processes: it says
whether the node is up (its heartbeat), and exits non-zero when it is not; a worker that
stopped cleanly is shown stopped, not silent; a node killed outright is shown as gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.pacs_ai import PacsAiDeployment
from tests.support.peers import RedisServer, wait_for

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def deployment(tmp_path: Path, redis_server: RedisServer) -> Iterator[PacsAiDeployment]:
    config: dict[str, Any] = {
        "broker_url": redis_server.url,
        "routes": [{"name": "chest-ct", "match": {"Modality": "CT"}, "models": ["ct-lungs"]}],
        "worker": {"heartbeat_seconds": 0.5, "lost_after_seconds": 3, "device": "cpu"},
        "monitor": {"enabled": False},
    }
    running = PacsAiDeployment(tmp_path / "pacs-ai", config)
    yield running
    running.stop()


def status(deployment: PacsAiDeployment) -> tuple[int, dict[str, Any], str]:
    """Exit status, JSON and text of `pacs-ai status`, run as an operator would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_AI_")}
    env["PACS_AI_CONFIG"] = str(deployment.config_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pacs_ai", "status", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    as_json, as_text = run("--json"), run()
    assert as_json.returncode == as_text.returncode, as_text.stderr
    return as_json.returncode, json.loads(as_json.stdout), as_text.stdout


def test_status_tells_a_running_node_and_worker_from_stopped_and_dead_ones(
    deployment: PacsAiDeployment,
) -> None:
    before, data, text = status(deployment)
    assert before == 1 and data["ready"] is False
    assert "node  not running (no heartbeat in the last day" in text

    deployment.start()
    wait_for(lambda: status(deployment)[0] == 0, 30, "status to say ready")
    ready, data, text = status(deployment)
    assert ready == 0
    assert data["node_status"]["up"] is True
    assert "node  running (PACSAI@" in text
    [worker] = data["workers"]
    assert worker["state"] == "alive"

    deployment.worker.stop(timeout=60)  # SIGTERM: a clean stop
    stopped_worker, data, text = status(deployment)
    assert stopped_worker == 1
    [worker] = data["workers"]
    assert worker["state"] == "stopped" and worker["stopped_at"] is not None
    assert " stopped at " in text and "SILENT" not in text

    deployment.node.stop(timeout=60)
    after, data, text = status(deployment)
    assert after == 1 and data["node_status"]["up"] is False
    assert "node  not running (stopped cleanly at" in text

    deployment.start_node()
    wait_for(lambda: status(deployment)[1]["node_status"]["up"], 30, "the node's heartbeat")
    deployment.kill(deployment.node)
    wait_for(lambda: not status(deployment)[1]["node_status"]["up"], 30, "the heartbeat to age")
    _code, data, text = status(deployment)
    assert "it stopped without saying so" in data["node_status"]["detail"]

"""Send a series to a running node with DCMTK's storescu and wait for its job to be DONE
(the turnaround benchmarks: benchmarks/turnaround.py, benchmarks/remote.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._support.peers import LOCALHOST, PeerProcess, dcmtk_env, wait_for
from core.jobs import JobRecord, JobState
from core.ledger import Ledger


def send_until_done(
    storescu: Path,
    files: Sequence[Path],
    *,
    called_ae: str,
    port: int,
    ledger: Ledger,
    worker: PeerProcess,
) -> tuple[JobRecord, float]:
    """Send ``files`` to the node at ``port``; return the newest job once it is DONE after
    the last image, and when the last image was acknowledged (``time.time()``).

    Raises:
        SystemExit: storescu failed (its output is in the message).
    """
    sent = subprocess.run(
        [str(storescu), "-aec", called_ae, LOCALHOST, str(port), *map(str, files)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    last_image = time.time()
    if sent.returncode:
        raise SystemExit(f"sending to the node failed:\n{sent.stderr}")

    def done() -> bool:
        jobs = ledger.jobs(limit=1)
        return bool(jobs) and jobs[0].state == JobState.DONE and jobs[0].updated_at > last_image

    wait_for(done, 600, "the job DONE", process=worker)
    return ledger.jobs(limit=1)[0], last_image

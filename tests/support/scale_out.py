"""What the scale-out tests need besides pacs-ai itself: another Unix user for the remote
worker, and a TCP proxy that can hold a transfer half-way (to kill a worker mid-fetch or
mid-upload at a moment the test chooses, not by chance)."""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from tests.support.peers import LOCALHOST

WORKER_USER = "pacs-ai-test-worker"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Account:
    """A Unix user that is not the one running the tests (nor the node)."""

    name: str
    uid: int
    gid: int

    def argv(self, *command: str | os.PathLike[str]) -> list[str]:
        """``command`` run as this user (setpriv execs it: the pid is the command's own)."""
        setpriv = shutil.which("setpriv")
        assert setpriv is not None
        return [
            setpriv,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--",
            *(os.fspath(part) for part in command),
        ]

    def can_read(self, path: Path) -> bool:
        probe = subprocess.run(self.argv("test", "-r", path), check=False)
        return probe.returncode == 0

    def can_run(self, program: str | os.PathLike[str]) -> bool:
        probe = subprocess.run(self.argv("test", "-x", program), check=False)
        return probe.returncode == 0

    @contextlib.contextmanager
    def own_folder(self) -> Iterator[Path]:
        """A folder of this user's own (outside the tests' private tmp folders, which
        other users cannot enter), removed afterwards."""
        folder = Path(tempfile.mkdtemp(prefix="pacs-ai-worker-"))
        os.chown(folder, self.uid, self.gid)
        folder.chmod(0o700)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def other_account() -> Account:
    """The test worker's account, created with useradd when missing (as root). Skips
    where that is impossible (not root, no setpriv), and fails in CI."""
    problem = None
    if os.geteuid() != 0:
        problem = "running a worker as another Unix user needs root (useradd, setpriv)"
    elif shutil.which("setpriv") is None or shutil.which("useradd") is None:
        problem = "setpriv and useradd (util-linux, passwd) are needed"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    try:
        entry = pwd.getpwnam(WORKER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             WORKER_USER],
            check=True,
        )  # fmt: skip
        entry = pwd.getpwnam(WORKER_USER)
    return Account(WORKER_USER, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class Python:
    """How another user runs this test run's Python with its packages."""

    executable: str
    env: dict[str, str]


@contextlib.contextmanager
def python_for(account: Account) -> Iterator[Python]:
    """This interpreter, with this environment's packages and the repository, as
    ``account`` may run it.

    Where the user cannot reach the interpreter (a pyenv build in root's private home,
    say), a copy of it and its standard library (not its site-packages) is made in a
    folder everyone may read, for the time of the tests, and removed afterwards.
    """
    packages = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *packages])}
    if account.can_run(sys.executable):
        yield Python(sys.executable, env)
        return
    base = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    copy = Path(tempfile.mkdtemp(prefix="pacs-ai-test-python-"))
    try:
        copy.chmod(0o755)
        (copy / "bin").mkdir()
        shutil.copy2(base / "bin" / version, copy / "bin" / version)
        (copy / "lib").mkdir()
        for library in base.glob("lib/libpython*"):
            shutil.copy2(library, copy / "lib" / library.name, follow_symlinks=False)
        shutil.copytree(
            base / "lib" / version,
            copy / "lib" / version,
            ignore=shutil.ignore_patterns("site-packages", "test", "idlelib", "tkinter"),
        )
        executable = copy / "bin" / version
        if not account.can_run(executable):
            message = f"no Python that {account.name} may run (copied to {copy})"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        yield Python(str(executable), {**env, "LD_LIBRARY_PATH": str(copy / "lib")})
    finally:
        shutil.rmtree(copy, ignore_errors=True)


class HoldingProxy:
    """Forwards TCP connections to ``127.0.0.1:target_port``. :meth:`hold_download_after`
    (server to client) and :meth:`hold_upload_after` (client to server) stop forwarding a
    connection's bytes once that many have passed in that direction, and set
    :attr:`holding`; :meth:`let_go` forwards everything again. Connections are never cut
    by the proxy: a killed client closes its own."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server = socket.create_server((LOCALHOST, 0))
        self.port = int(self._server.getsockname()[1])
        self.holding = threading.Event()
        self._lock = threading.Lock()
        self._limits: dict[str, int | None] = {"down": None, "up": None}
        self._released = threading.Event()
        self._released.set()
        self._thread = threading.Thread(target=self._accept, name="holding-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def hold_download_after(self, count: int) -> None:
        self._arm("down", count)

    def hold_upload_after(self, count: int) -> None:
        self._arm("up", count)

    def _arm(self, direction: str, count: int) -> None:
        with self._lock:
            self._limits[direction] = count
            self.holding.clear()
            self._released.clear()

    def let_go(self) -> None:
        with self._lock:
            self._limits = {"down": None, "up": None}
            self._released.set()

    def __enter__(self) -> HoldingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.let_go()
        self._server.close()
        self._thread.join(timeout=10)

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        passed = {"down": 0, "up": 0}
        with client, socket.create_connection((LOCALHOST, self._target_port)) as upstream:
            selector = selectors.DefaultSelector()
            selector.register(client, selectors.EVENT_READ, ("up", upstream))
            selector.register(upstream, selectors.EVENT_READ, ("down", client))
            try:
                while True:
                    for key, _events in selector.select(timeout=1):
                        direction, target = key.data
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        try:
                            data = source.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            return
                        self._wait_if_held(direction, passed, len(data))
                        passed[direction] += len(data)
                        with contextlib.suppress(OSError):
                            target.sendall(data)
            finally:
                selector.close()

    def _wait_if_held(self, direction: str, passed: dict[str, int], size: int) -> None:
        with self._lock:
            limit = self._limits[direction]
        if limit is not None and passed[direction] + size > limit:
            self.holding.set()
            self._released.wait()

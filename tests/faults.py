"""Real processes for the serving and fault tests (issue 15): ``portal serve``, ``portal worker``, and
throwaway Redis and PostgreSQL servers a test may stop and start again.

Everything listens on 127.0.0.1 on a free port and is stopped by the context manager that started it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import POLICY_DIR, ROOT, free_port

SECRET = "fault-tests-secret-key-" + "x" * 32


def wait_for(
    condition: Callable[[], bool], what: str, timeout: float = 15.0, log: Path | None = None
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` (and showing ``log``) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = f"\n--- {log}:\n{log.read_text()[-4000:]}" if log and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}{detail}")
        time.sleep(0.05)


def portal_env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a portal process: this test's database, a data dir of its own, no other PORTAL_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "WEB_CONCURRENCY"))}
    env.update(
        {
            "PORTAL_DATABASE_URL": database_url,
            "PORTAL_POLICY_DIR": str(POLICY_DIR),
            "PORTAL_DATA_DIR": str(tmp_path / "var"),
            "PORTAL_SECRET_KEY": SECRET,
            "PORTAL_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


def portal_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "portal.cli", *args]


class Process:
    """A child process whose output goes to a log file."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class Portal(Process):
    """``portal serve`` on a free port."""

    def __init__(self, env: dict[str, str], log: Path, *options: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            portal_command("serve", "--host", "127.0.0.1", "--port", str(self.port), *options), env, log
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> Portal:
        def up() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"portal serve exited {self.popen.returncode}:\n{self.output()}")
            return self.healthy()

        wait_for(up, "portal serve to answer /healthz", timeout, self.log)
        return self

    def children(self) -> list[int]:
        """Process ids whose parent is this portal (its worker processes)."""
        found = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid:
                found.append(int(stat.split("/")[2]))
        return found


@contextmanager
def portal(env: dict[str, str], log: Path, *options: str) -> Iterator[Portal]:
    server = Portal(env, log, *options)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@contextmanager
def worker(env: dict[str, str], log: Path) -> Iterator[Process]:
    """``portal worker``, yielded once it has started (its log says ``worker ready``)."""
    with workers(env, [log]) as (process,):
        yield process


@contextmanager
def workers(env: dict[str, str], logs: Sequence[Path]) -> Iterator[tuple[Process, ...]]:
    """One ``portal worker`` per log, started at once (start-up is mostly imports), yielded when all are ready."""
    processes = tuple(Process(portal_command("worker"), env, log) for log in logs)
    try:
        for process in processes:
            wait_for(
                lambda p=process: "worker ready" in p.output(), "portal worker to start", 30, process.log
            )
        yield processes
    finally:
        for process in processes:
            process.stop()


@contextmanager
def portal_and_worker(
    env: dict[str, str], serve_log: Path, worker_log: Path
) -> Iterator[tuple[Portal, Process]]:
    """``portal serve`` and ``portal worker`` started side by side, yielded when both are ready."""
    server = Portal(env, serve_log)
    try:
        with worker(env, worker_log) as process:
            yield server.wait_ready(), process
    finally:
        server.stop()


class RedisServer:
    """A throwaway ``redis-server`` (no persistence) that a test can stop and start again on its port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (make test installs it)"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _accepts(self.port), "redis-server to listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    binary = shutil.which(name)
    assert binary, f"{name} (PostgreSQL server binaries) is not installed (make test installs them)"
    return binary


class PostgresCluster:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free port, trust authentication.

    As root it runs as the ``postgres`` user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="portal-faults-pg-"))
        self.data = self.directory / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, timeout=60)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(
            _postgres_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += " -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            _postgres_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def migrate(env: dict[str, str]) -> None:
    """``portal migrate`` with ``env`` (a fresh database for a portal process)."""
    result = subprocess.run(portal_command("migrate"), env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

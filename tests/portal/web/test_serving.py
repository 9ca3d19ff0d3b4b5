"""``portal serve`` as production runs it (issue 15 item 1, issue 16 item 1), against real processes:
worker processes on uvloop + httptools, crons in one process, graceful SIGTERM, proxy headers, a port
already in use, and a public URL that follows the port."""

from __future__ import annotations

import re
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from portal.core.settings import load_settings
from portal.web import serving
from tests.conftest import ROOT, free_port
from tests.faults import Portal, migrate, portal, portal_command, portal_env, wait_for

_CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated SQLite file for the module's portal processes (tests use distinct emails)."""
    directory = tmp_path_factory.mktemp("serving")
    url = f"sqlite:///{directory / 'portal.sqlite3'}"
    migrate(portal_env(directory, url))
    return url


@pytest.fixture
def env(tmp_path: Path, sqlite_url: str) -> dict[str, str]:
    return portal_env(tmp_path, sqlite_url)


def worker_pids(server: Portal) -> list[int]:
    """The uvicorn worker processes (multiprocessing's resource tracker is a child too)."""
    return [pid for pid in server.children() if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_web_concurrency_workers_run_uvloop_httptools_and_the_crons_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    with portal({**env, "WEB_CONCURRENCY": "2"}, log) as server:
        assert "Portal serving on http://127.0.0.1:" in server.output()
        assert "2 processes" in server.output()
        wait_for(lambda: len(worker_pids(server)) == 2, "two worker processes", log=log)
        for pid in worker_pids(server):
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "uvloop" in maps and "httptools" in maps, f"worker {pid} lacks uvloop/httptools"
        # Without Redis, exactly one process runs the in-process cron jobs...
        wait_for(lambda: "runs the cron jobs" in server.output(), "a cron runner", log=log)
        time.sleep(1)
        runners = re.findall(r"this process \(pid (\d+)\) runs the cron jobs", server.output())
        assert len(runners) == 1, server.output()
        # ...and when it dies another takes over (uvicorn also starts a replacement worker).
        first = int(runners[0])
        assert first in worker_pids(server)
        subprocess.run(["kill", "-KILL", str(first)], check=True)

        def new_runner() -> bool:
            found = re.findall(r"this process \(pid (\d+)\) runs the cron jobs", server.output())
            return len(found) == 2 and int(found[1]) != first

        wait_for(new_runner, "another process to take over the cron jobs", timeout=20, log=log)
        assert server.healthy()
        # SIGHUP to the supervisor re-reads the policy in each worker (no restart).
        wait_for(lambda: len(worker_pids(server)) == 2, "two worker processes again", log=log)
        before = set(worker_pids(server))
        server.signal(signal.SIGHUP)
        wait_for(lambda: server.output().count("policy reloaded from") == 2, "two policy reloads", log=log)
        assert set(worker_pids(server)) == before
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0


def test_workers_option_wins_over_web_concurrency() -> None:
    assert serving.workers_from(3, {"WEB_CONCURRENCY": "2"}) == 3
    assert serving.workers_from(None, {"WEB_CONCURRENCY": "2"}) == 2
    assert serving.workers_from(None, {}) == 1
    with pytest.raises(ValueError, match="WEB_CONCURRENCY: 'lots'"):
        serving.workers_from(None, {"WEB_CONCURRENCY": "lots"})


def _partial_request(port: int, body: bytes) -> socket.socket:
    """A POST whose headers and the first half of its body are sent; the rest is up to the test."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[: len(body) // 2])
    return sock


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    assert len(body) == length, f"response cut: {len(body)} of {length} bytes"
    return status, body


def _refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(
    env: dict[str, str], tmp_path: Path, workers: str
) -> None:
    log = tmp_path / "serve.log"
    server = Portal({**env, "PORTAL_SHUTDOWN_TIMEOUT": "10"}, log, "--workers", workers)
    try:
        server.wait_ready()
        if workers == "2":
            wait_for(lambda: len(worker_pids(server)) == 2, "two worker processes", log=log)
            time.sleep(1)  # both answering
        body = b"email=in-flight%40example.test&return_to=%2Fui%2F&_csrf_token=x" + b"&pad=" + b"y" * 200
        sock = _partial_request(server.port, body)
        time.sleep(0.3)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        wait_for(lambda: _refused(server.port), "new connections to be refused", timeout=5, log=log)
        sock.sendall(body[len(body) // 2 :])
        status, response = _read_response(sock)
        sock.close()
        # The request ran to its end: CSRF refuses it (no cookie), with a whole JSON body.
        assert status == 403, response
        assert b'"status":403' in response
        assert server.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        server.stop()


def test_the_shutdown_timeout_bounds_a_request_that_never_ends(env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    server = Portal({**env, "PORTAL_SHUTDOWN_TIMEOUT": "2"}, log)
    try:
        server.wait_ready()
        sock = _partial_request(server.port, b"email=x%40example.test&" + b"y" * 100)
        time.sleep(0.3)
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0
        elapsed = time.monotonic() - started
        assert 1.5 < elapsed < 6, elapsed
        sock.close()
    finally:
        server.stop()


def _ask_for_code(client: httpx.Client, email: str, forwarded_for: str) -> int:
    page = client.get("/login", headers={"accept": "text/html"})
    token = _CSRF.search(page.text)
    assert token, page.text
    response = client.post(
        "/login",
        data={"email": email, "return_to": "/ui/", "_csrf_token": token.group(1)},
        headers={"accept": "text/html", "x-forwarded-for": forwarded_for},
    )
    return response.status_code


def _audit_ip(database_url: str, email: str) -> str:
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT ip FROM audit_event WHERE action = 'login.failed' AND target = ?", (email,)
        ).fetchall()
    assert len(rows) == 1, rows
    return str(rows[0][0])


def test_proxy_headers_are_believed_from_trusted_proxies_only(
    env: dict[str, str], tmp_path: Path, sqlite_url: str
) -> None:
    # Loopback is trusted by default: the client is the right-most address the proxy did not add.
    with (
        portal(env, tmp_path / "trusted.log", "--proxy-headers") as server,
        httpx.Client(base_url=server.url) as client,
    ):
        assert _ask_for_code(client, "behind-lb@example.test", "198.51.100.1, 203.0.113.9") == 303
    assert _audit_ip(sqlite_url, "behind-lb@example.test") == "203.0.113.9"

    # A peer that is not a trusted proxy: its X-Forwarded-For changes nothing, the rate limit counts
    # the real peer (20 codes per address per 15 minutes) however many addresses it makes up.
    spoofing = {**env, "PORTAL_TRUSTED_PROXIES": "10.9.8.7,192.0.2.0/24"}
    with (
        portal(spoofing, tmp_path / "untrusted.log", "--proxy-headers") as server,
        httpx.Client(base_url=server.url) as client,
    ):
        statuses = [_ask_for_code(client, f"spoof-{i}@example.test", f"203.0.113.{i}") for i in range(21)]
    assert statuses[:20] == [303] * 20
    assert statuses[20] == 429
    assert _audit_ip(sqlite_url, "spoof-0@example.test") == "127.0.0.1"

    # Without --proxy-headers nobody's header is believed (the limit above is spent: start afresh).
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as connection:
        connection.execute("DELETE FROM rate_event")
    with portal(env, tmp_path / "plain.log") as server, httpx.Client(base_url=server.url) as client:
        assert _ask_for_code(client, "no-proxy@example.test", "203.0.113.50") == 303
    assert _audit_ip(sqlite_url, "no-proxy@example.test") == "127.0.0.1"


@pytest.fixture
def taken_port() -> Iterator[int]:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        yield port


def test_a_port_in_use_is_a_plain_message_and_exit_1(env: dict[str, str], taken_port: int) -> None:
    result = subprocess.run(
        portal_command("serve", "--port", str(taken_port)), env=env, cwd=ROOT, capture_output=True, timeout=60
    )
    err = result.stderr.decode()
    assert result.returncode == 1
    assert f"port {taken_port} on 127.0.0.1 is already in use" in err
    assert "--port" in err and "PORTAL_PORT" in err
    assert "Traceback" not in err and "Errno" not in err
    assert "serving on" not in result.stdout.decode()
    # The same through PORTAL_PORT.
    result = subprocess.run(
        portal_command("serve"),
        env={**env, "PORTAL_PORT": str(taken_port)},
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1 and "already in use" in result.stderr.decode()


def test_an_unset_public_url_follows_the_port(env: dict[str, str], tmp_path: Path) -> None:
    assert load_settings({"PORTAL_PORT": "8765"}).public_url == "http://localhost:8765"
    explicit = {"PORTAL_PORT": "8765", "PORTAL_PUBLIC_URL": "http://id.example.com"}
    assert load_settings(explicit).origin == "http://id.example.com"
    assert load_settings({}).public_url == "http://localhost:8000"

    demo = subprocess.run(
        portal_command("demo"), env={**env, "PORTAL_PORT": "8765"}, cwd=ROOT, capture_output=True, timeout=60
    )
    assert demo.returncode == 0, demo.stderr
    assert "Sign in at http://localhost:8765/login" in demo.stdout.decode()

    with portal(env, tmp_path / "serve.log") as server:
        # `portal serve --port P` with no public URL: P is where mails, the demo and passkeys point.
        assert f"(public URL http://localhost:{server.port};" in server.output()

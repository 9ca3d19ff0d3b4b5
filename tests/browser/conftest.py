"""Browser tests: a real `portal serve` process on loopback, driven by Playwright in Debian's Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from tests.conftest import POLICY_DIR, ROOT

#: `make screenshots` writes them into the docs; an ordinary test run keeps them out of the work tree.
SCREENSHOTS = Path(
    os.environ.get("PORTAL_TEST_SCREENSHOTS") or Path(tempfile.gettempdir()) / "portal-screenshots"
)
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def chromium_path() -> str:
    path = (
        os.environ.get("PORTAL_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not path:
        raise RuntimeError(
            "Chromium is needed for browser tests: apt-get install chromium (make test does this)"
        )
    return path


@dataclass(frozen=True)
class LiveServer:
    url: str
    data_dir: Path


@pytest.fixture
def live_server_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Settings for the server process; tests add to it (e.g. PORTAL_SMTP_URL) before starting it."""
    return {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
        "PORTAL_SECRET_KEY": "browser-test-secret-" + "x" * 32,
        "PORTAL_LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def live_server(live_server_env: dict[str, str], db: object, tmp_path: Path) -> Iterator[LiveServer]:
    """`portal serve` in its own process (its own event loop and connection pool), on a free port."""
    port = free_port()
    url = f"http://localhost:{port}"  # localhost, not 127.0.0.1: WebAuthn needs a domain as RP id.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")},
        **live_server_env,
        "PORTAL_PUBLIC_URL": url,
    }
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "portal.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the portal did not start:\n" + (tmp_path / "server.log").read_text())
            time.sleep(0.1)
        yield LiveServer(url=url, data_dir=Path(live_server_env["PORTAL_DATA_DIR"]))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()

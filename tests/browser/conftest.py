"""Browser tests: a real `portal serve` process on loopback, driven by Playwright in Debian's Chromium."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.conftest import POLICY_DIR, free_port, portal_serve

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
    env = {**live_server_env, "PORTAL_PUBLIC_URL": url}
    with portal_serve(env, port, tmp_path / "server.log"):
        yield LiveServer(url=url, data_dir=Path(live_server_env["PORTAL_DATA_DIR"]))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()

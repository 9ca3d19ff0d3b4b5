"""Shared fixtures. The engine comes from PORTAL_TEST_ENGINE (sqlite | postgres), set by `make test`."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core import db as portal_db
from portal.core.migrate import migrate
from portal.core.settings import Settings
from portal.core.tables import TABLES
from portal.web.app import create_app
from portal.web.registry import WidgetRegistry, discover
from tests.mailserver import Mailbox, MailServer

ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = ROOT / "policies"
ENGINE_KIND = os.environ.get("PORTAL_TEST_ENGINE", "sqlite")
PG_URL = os.environ.get("PORTAL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/portal_test")
REDIS_URL = os.environ.get("PORTAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


async def empty_redis() -> str:
    """Empty the test Redis database and return its URL. Fails within seconds, not at the test timeout,
    when Redis does not answer."""
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return REDIS_URL


async def run_burst_worker(worker: Any, engine: Engine) -> Any:
    """Run an arq burst worker to the end (at most 30 seconds), close it, and bind ``engine`` again (the
    worker's start-up bound its own engine for its jobs)."""
    try:
        async with asyncio.timeout(30):
            await worker.async_run()
    finally:
        async with asyncio.timeout(30):
            await worker.close()
        portal_db.bind(engine)
    return worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def portal_serve(env: dict[str, str], port: int, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``portal serve`` in its own process with ``PORTAL_*`` from ``env`` only, output to ``log_path``; yields
    once /healthz answers, stops it afterwards."""
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}, **env}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "portal.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the portal did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every test that touches the database runs again on PostgreSQL (`pytest -m db`).
    for item in items:
        if "db" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)
    # Tests of PostgreSQL itself (restarts, connection pools) belong to the PostgreSQL run only: deselected,
    # not skipped, in the SQLite run (`make test` runs both).
    if ENGINE_KIND != "postgres":
        postgres_only = [item for item in items if item.get_closest_marker("postgres")]
        if postgres_only:
            config.hook.pytest_deselected(items=postgres_only)
            items[:] = [item for item in items if not item.get_closest_marker("postgres")]


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?")[0]


def with_database_name(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead."""
    base, _, rest = url.rpartition("/")
    _, question, query = rest.partition("?")
    return f"{base}/{name}{question}{query}"


async def recreate_postgres_database(url: str, *, drop_only: bool = False) -> None:
    """Drop and create the database named in ``url`` (connecting to the ``postgres`` database)."""
    name = database_name(url)
    admin = await asyncpg.connect(with_database_name(url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def drop_abandoned_run_databases(url: str) -> None:
    """Drop ``<name>_<pid>...`` databases left by test runs whose process is gone (killed runs)."""
    prefix = database_name(url) + "_"
    admin = await asyncpg.connect(with_database_name(url, "postgres"))
    try:
        names = [r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")]
    finally:
        await admin.close()
    for name in names:
        pid = name.removeprefix(prefix).split("_", 1)[0]
        if name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            await recreate_postgres_database(with_database_name(url, name), drop_only=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    if ENGINE_KIND == "postgres":
        # A database of this run's own, so that two runs on one machine (or a run and CI) do not drop or
        # empty each other's tables.
        return with_database_name(PG_URL, f"{database_name(PG_URL)}_{os.getpid()}")
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'portal.sqlite3'}"


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[Engine]:
    """One migrated engine for the session."""
    if ENGINE_KIND == "postgres":
        await drop_abandoned_run_databases(PG_URL)
        await recreate_postgres_database(database_url)
    built = portal_db.bind(portal_db.make_engine(database_url))
    await portal_db.start(built)
    await migrate()
    yield built
    await portal_db.stop(built)
    if ENGINE_KIND == "postgres":
        await recreate_postgres_database(database_url, drop_only=True)


@pytest.fixture
async def db(engine: Engine) -> AsyncIterator[Engine]:
    """The bound engine; every table is emptied after the test."""
    portal_db.bind(engine)
    yield engine
    for table in reversed(TABLES):
        await table.delete(force=True)


@pytest.fixture(scope="session")
def policy() -> PolicyEngine:
    return PolicyEngine.from_dir(POLICY_DIR)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=str(tmp_path / "var"),
        policy_dir=str(POLICY_DIR),
        secret_key="test-secret-key-" + "x" * 32,
        gc_freeze=False,  # every test builds an app: frozen objects would never be collected
    )


@pytest.fixture
def registry() -> WidgetRegistry:
    return discover()


@pytest.fixture
def app(settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry) -> Litestar:
    return create_app(settings, engine=db, policy=policy, registry=registry)


@asynccontextmanager
async def serve(app: Litestar, base_url: str = "http://127.0.0.1:8000") -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for ``app`` in the test's own event loop (so the database pool is shared), lifespan run."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def run_lifespan() -> None:
        # The lifespan's task group must be entered and left by one task; fixtures may switch tasks.
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(run_lifespan())
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiting.cancel()
        task.result()  # start-up failed: raise its error here
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client
    finally:
        stop.set()
        await task


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as test_client:
        yield test_client


@pytest.fixture
def html() -> dict[str, Any]:
    return {"accept": "text/html"}


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on loopback for the whole run."""
    server = MailServer()
    box = server.start()
    yield box
    server.stop()


@pytest.fixture
def mail(smtp_server: Mailbox) -> Mailbox:
    """The loopback SMTP server's mailbox, emptied for this test. Point an app at it with ``mail.url``."""
    smtp_server.clear()
    return smtp_server


# --- session policy: a controllable clock -----------------------------------------------------------------


class FrozenClock:
    """Stands in for ``portal.clock.utcnow``: time moves only when a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    """``portal.clock.utcnow`` frozen at 2026-11-22 12:00:00.123456 UTC (code must call it via the module)."""
    from portal.core import clock

    fake = FrozenClock(datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC))
    monkeypatch.setattr(clock, "utcnow", fake)
    return fake


# --- end session policy

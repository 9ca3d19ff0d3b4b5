"""Faults survived with nothing lost (issue 15 item 4), each against real processes: ``portal serve``,
``portal worker``, real Redis and PostgreSQL (throwaway servers where the fault needs one).

They need PostgreSQL, so they run in the PostgreSQL phase of ``make test`` (``-m db`` with
``PORTAL_TEST_ENGINE=postgres``); the SQLite phase leaves them to it.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from piccolo.engine.base import Engine

from portal.auth import sessions
from portal.core import clock
from portal.core import db as portal_db
from portal.core.migrate import migrate
from portal.core.tables import Domain, JobOutbox, Session, SessionEnd
from tests.dnsserver import LoopbackDNS
from tests.factories import make_member, make_org, make_user
from tests.faults import (
    Portal,
    portal,
    portal_and_worker,
    portal_env,
    postgres_cluster,
    redis_server,
    wait_for,
    workers,
)

pytestmark = [
    pytest.mark.db,
    pytest.mark.postgres,  # the PostgreSQL phase of `make test` runs it; the SQLite phase deselects it
    # Each starts real servers; on a loaded CI machine that can take longer than the suite's 60 s default.
    pytest.mark.timeout(120),
]

_CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


@pytest.fixture
def dns() -> Iterator[LoopbackDNS]:
    server = LoopbackDNS().start()
    yield server
    server.stop()


async def _admin_session(features: tuple[str, ...] = ("domain_verification",)) -> tuple[dict[str, Any], str]:
    org = await make_org(features=features)
    user = await make_user()
    await make_member(org, user, roles=["admin"])
    token, _ = await sessions.create_session(user["id"], auth_method="test", organization_id=org["id"])
    return org, token


async def _wait(condition: Any, what: str, seconds: float = 20.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}{_tail(log)}")
        await asyncio.sleep(0.1)


def _tail(log: Path | None) -> str:
    return f"\n--- {log}:\n{log.read_text()[-4000:]}" if log else ""


async def test_redis_stopped_pages_serve_jobs_wait_in_the_database_and_the_worker_reconnects(
    db: Engine, database_url: str, tmp_path: Path, dns: LoopbackDNS
) -> None:
    org, token = await _admin_session()
    domain = Domain(
        organization=org["id"],
        domain="fault-redis.example.com",
        verification_token="tok-redis",
        pending_since=clock.utcnow(),
    )
    await domain.save()
    dns.zone.publish("_portal-verification.fault-redis.example.com", "portal-verification=tok-redis")

    with redis_server(tmp_path) as redis:
        env = portal_env(
            tmp_path,
            database_url,
            PORTAL_REDIS_URL=redis.url,
            PORTAL_DNS_NAMESERVERS="127.0.0.1",
            PORTAL_DNS_PORT=str(dns.port),
            PORTAL_DNS_TIMEOUT="2",
        )
        worker_log = tmp_path / "worker.log"
        with portal_and_worker(env, tmp_path / "serve.log", worker_log) as (server, jobs):
            async with httpx.AsyncClient(base_url=server.url, cookies={"portal_session": token}) as client:
                assert (await client.get("/readyz")).json()["checks"] == {"database": "ok", "redis": "ok"}

                redis.stop()
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"]["database"] == "ok"
                assert ready.json()["checks"]["redis"].startswith("error")

                # Pages keep serving, and "Verify now" is accepted: the job waits in the database.
                page = await client.get("/ui/organization/domains", headers={"accept": "text/html"})
                assert page.status_code == 200 and "fault-redis.example.com" in page.text
                csrf = _CSRF.search(page.text)
                assert csrf
                response = await client.post(
                    f"/ui/organization/domains/{domain.id}/verify",
                    data={"_csrf_token": csrf.group(1)},
                    headers={"accept": "text/html"},
                    follow_redirects=True,
                )
                assert response.status_code == 200
                assert "Checking the TXT record of fault-redis.example.com" in response.text
                assert "job queue is unavailable" not in response.text
                kept = await JobOutbox.select(JobOutbox.name, JobOutbox.args)
                assert [(k["name"], portal_db.json_value(k["args"])) for k in kept] == [
                    ("verify_domain", [domain.id])
                ]
                wait_for(lambda: "Redis unreachable" in jobs.output(), "the worker to notice", log=worker_log)
                pending = await Domain.select(Domain.status).where(Domain.id == domain.id).first()
                assert pending == {"status": "pending"}

                # Redis is back (empty: it kept nothing): the same worker process reconnects, queues the
                # kept job and runs it.
                redis.start()

                async def verified() -> bool:
                    row = await Domain.select(Domain.status).where(Domain.id == domain.id).first()
                    return row is not None and row["status"] == "verified"

                await _wait(verified, "the kept job to run", log=worker_log)
                assert await JobOutbox.count() == 0
                assert jobs.popen.poll() is None  # no restart of the worker process
                assert jobs.output().count("worker ready") == 2
                assert (await client.get("/readyz")).status_code == 200


async def _expired_sessions(user_id: str, count: int) -> None:
    """``count`` sessions idle for two days (expired under the default 1-day idle timeout), in one statement."""
    old = clock.utcnow() - timedelta(days=2)
    await Session.raw(
        """
        INSERT INTO portal_session (id, token_hash, "user", auth_method, ip, user_agent,
                                    created_at, authenticated_at, last_seen_at)
        SELECT 'ses_fault_' || lpad(g::text, 6, '0'), md5('fault-' || g), {}, 'test', '', '', {}, {}, {}
        FROM generate_series(1, {}) AS g
        """,
        user_id,
        old,
        old,
        old,
        count,
    )


async def test_a_worker_killed_mid_sweep_leaves_nothing_half_done_and_the_next_run_finishes(
    db: Engine, database_url: str, tmp_path: Path
) -> None:
    user = await make_user()
    total = 25_000  # two batches of the sweep (20,000 + 5,000)
    await _expired_sessions(user["id"], total)

    # Hold a lock on one session, so that the sweep is caught mid-way: blocked inside a batch's UPDATE.
    engine: Any = Session._meta.db
    holder = await engine.pool.acquire()
    blocker = holder.transaction()
    await blocker.start()
    await holder.execute("SELECT id FROM portal_session WHERE id = 'ses_fault_025000' FOR UPDATE")
    try:
        with redis_server(tmp_path) as redis:
            env = portal_env(
                tmp_path, database_url, PORTAL_REDIS_URL=redis.url, PORTAL_SESSION_SWEEP_INTERVAL="1"
            )
            log, log_2 = tmp_path / "worker-1.log", tmp_path / "worker-2.log"
            # Two workers, started together (start-up is mostly imports): the first is killed mid-sweep, the
            # second's next run finishes the work.
            with workers(env, [log, log_2]) as (first, second):

                async def blocked() -> bool:
                    # Not on the holder's connection: in a transaction, pg_stat_activity is a snapshot.
                    waiting = await Session.raw(
                        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%UPDATE portal_session%'"
                    )
                    return bool(waiting[0]["n"])

                async def first_mid_sweep() -> bool:
                    # A sweep the first worker started cannot end while the lock is held: it is mid-way.
                    return "→ cron:sweep_sessions()" in first.output() and await blocked()

                await _wait(first_mid_sweep, "the first worker's sweep to reach the locked session", log=log)
                first.signal(signal.SIGKILL)
                first.wait(timeout=10)

                # What the killed sweep left: every revoked session has its session_end (back-channel
                # logout), a batch is all or nothing (one statement: one snapshot).
                counts = await Session.raw(
                    "SELECT (SELECT count(*) FROM portal_session WHERE revoked_at IS NOT NULL) AS revoked, "
                    "(SELECT count(*) FROM session_end) AS ended"
                )
                assert counts[0]["revoked"] in (0, 20_000)
                assert counts[0]["ended"] == counts[0]["revoked"]

                await blocker.rollback()
                await engine.pool.release(holder)
                holder = None

                async def swept() -> bool:
                    return await Session.count().where(Session.revoked_at.is_null()) == 0

                await _wait(swept, "the next sweep to finish", log=log_2)
                await asyncio.sleep(1.2)  # another run: nothing more may happen
                assert second.popen.poll() is None
            ends = await SessionEnd.raw(
                "SELECT count(*) AS n, count(DISTINCT session_id) AS d FROM session_end"
            )
            assert ends == [{"n": total, "d": total}]  # none skipped, none twice
            reasons = await Session.raw("SELECT DISTINCT revoke_reason FROM portal_session")
            assert reasons == [{"revoke_reason": "idle"}]
    finally:
        if holder is not None:
            await blocker.rollback()
            await engine.pool.release(holder)


async def _load(client: httpx.AsyncClient, path: str, stop: asyncio.Event, results: list[Any]) -> None:
    """Request ``path`` until ``stop``; record (time, status, body) or (time, error kind, detail). An error after
    the response's status line arrived is recorded as ``cut`` (a response broken off half-way)."""
    while not stop.is_set():
        started = False
        try:
            async with client.stream("GET", path, headers={"accept": "text/html"}) as response:
                started = True
                body = (await response.aread()).decode()
            results.append((time.monotonic(), response.status_code, body))
        except httpx.HTTPError as exc:
            kind = "cut" if started else type(exc).__name__
            results.append((time.monotonic(), kind, f"{type(exc).__name__}: {exc}"))
        await asyncio.sleep(0.01)


@pytest.mark.filterwarnings("ignore:.*Unable to fetch server version")
async def test_postgres_restarted_under_load_503_while_down_then_success_without_a_portal_restart(
    db: Engine, tmp_path: Path
) -> None:
    with postgres_cluster() as cluster:
        env = portal_env(tmp_path, cluster.url)
        # Migrate and seed the throwaway cluster in this process (no extra start-up of a `portal migrate`):
        # bind it for a moment, then give the tests their engine back.
        other = portal_db.bind(portal_db.make_engine(cluster.url))
        await portal_db.start(other)
        try:
            await migrate()
            _org, token = await _admin_session()
        finally:
            await portal_db.stop(other)
            portal_db.bind(db)

        log = tmp_path / "serve.log"
        with portal(env, log, "--workers", "2") as server:
            stop, results = asyncio.Event(), []
            async with httpx.AsyncClient(
                base_url=server.url, cookies={"portal_session": token}, timeout=15
            ) as client:
                assert (
                    await client.get("/ui/organization/members", headers={"accept": "text/html"})
                ).status_code == 200
                loaders = [
                    asyncio.create_task(_load(client, "/ui/organization/members", stop, results))
                    for _ in range(6)
                ]
                await asyncio.sleep(1)
                down_at = time.monotonic()
                await asyncio.to_thread(cluster.stop, "fast")
                await asyncio.sleep(1.5)
                ready = await client.get("/readyz")
                assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("error")
                await asyncio.to_thread(cluster.start)
                up_at = time.monotonic()
                await asyncio.sleep(2.5)
                stop.set()
                await asyncio.gather(*loaders)
                assert (await client.get("/readyz")).status_code == 200
            assert server.popen.poll() is None

        statuses = [status for _, status, _ in results]
        assert set(statuses) <= {200, 503}, [r[:2] for r in results if r[1] not in (200, 503)]
        assert 503 in statuses
        for _, status, text in results:
            if status == 503:
                assert "Temporarily unavailable" in text and "Traceback" not in text
        before = [s for at, s, _ in results if at < down_at]
        after = [s for at, s, _ in results if at > up_at + 1.0]
        assert before and set(before) == {200}
        assert after and set(after) == {200}, after


async def test_sigterm_under_load_cuts_no_response(db: Engine, database_url: str, tmp_path: Path) -> None:
    org, token = await _admin_session()
    for _ in range(20):
        await make_member(org)
    log = tmp_path / "serve.log"
    server = Portal(portal_env(tmp_path, database_url), log, "--workers", "2")
    try:
        server.wait_ready()
        wait_for(lambda: len(server.children()) >= 2, "the worker processes", log=log)
        stop, results = asyncio.Event(), []
        limits = httpx.Limits(max_keepalive_connections=8)
        async with httpx.AsyncClient(
            base_url=server.url, cookies={"portal_session": token}, timeout=15, limits=limits
        ) as client:
            assert (
                await client.get("/ui/organization/members", headers={"accept": "text/html"})
            ).status_code == 200
            loaders = [
                asyncio.create_task(_load(client, "/ui/organization/members", stop, results))
                for _ in range(8)
            ]
            await asyncio.sleep(1)
            sent_at = time.monotonic()
            server.signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.wait, 20)
            stop.set()
            await asyncio.gather(*loaders)
        assert code == 0
        assert time.monotonic() - sent_at < 15
    finally:
        server.stop()

    completed = [r for r in results if r[1] == 200]
    assert len(completed) > 20
    for _, _, text in completed:
        assert text.rstrip().endswith("</html>")
    failures = [r for r in results if r[1] != 200]
    # After the signal, new requests are refused, or find their idle keep-alive connection closed (or reset)
    # before any response started; a response broken off after its status line would be "cut".
    for at, kind, detail in failures:
        assert at >= sent_at, (kind, detail)
        assert kind in {"ConnectError", "RemoteProtocolError", "ReadError", "WriteError"}, (kind, detail)
        assert "incomplete" not in detail and "complete message body" not in detail, detail

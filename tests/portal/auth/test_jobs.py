"""The session sweep cron job: registered on its interval, run in-process, and by arq workers on real Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from arq import create_pool
from arq.connections import RedisSettings
from piccolo.engine.base import Engine

from portal.auth import jobs as session_jobs
from portal.auth import sessions
from portal.core.settings import Settings
from portal.core.tables import Organization, Session
from portal.jobs import (
    ArqQueue,
    CronJob,
    InlineQueue,
    JobContext,
    load_job_modules,
    make_worker,
    registered_crons,
    schedule,
)
from tests.conftest import REDIS_URL, FrozenClock, empty_redis, run_burst_worker
from tests.factories import make_org, make_user


@pytest.fixture
async def redis_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, redis_url=await empty_redis())


@pytest.fixture
async def expired(db: Engine, frozen_clock: FrozenClock) -> dict[str, str]:
    """Three sessions at the frozen time: one past its org's absolute timeout, one idle, one fresh."""
    now = frozen_clock.now
    org = await make_org()
    await Organization.update(
        {
            Organization.session_policy_source: "custom",
            Organization.session_absolute_timeout: 3600,
            Organization.session_idle_timeout: 600,
        }
    ).where(Organization.id == org["id"])
    user = await make_user()
    ids = {}
    for name, age, idle in (("absolute", 7200, 0), ("idle", 1800, 900), ("fresh", 1800, 300)):
        _, session_id = await sessions.create_session(
            user["id"], auth_method="test", organization_id=org["id"]
        )
        await Session.update(
            {
                Session.created_at: now - timedelta(seconds=age),
                Session.last_seen_at: now - timedelta(seconds=idle),
            }
        ).where(Session.id == session_id)
        ids[name] = session_id
    return ids


async def reasons(ids: dict[str, str]) -> dict[str, str | None]:
    rows = await Session.select(Session.id, Session.revoke_reason).where(Session.id.is_in(list(ids.values())))
    by_id = {row["id"]: row["revoke_reason"] for row in rows}
    return {name: by_id[session_id] for name, session_id in ids.items()}


EXPECTED = {"absolute": "absolute", "idle": "idle", "fresh": None}


def sweep_cron() -> CronJob:
    load_job_modules()
    return next(c for c in registered_crons() if c.name == "sweep_sessions")


def test_the_sweep_is_a_cron_job_on_its_setting(settings: Settings) -> None:
    cron = sweep_cron()
    assert cron.function is session_jobs.sweep_sessions
    assert cron.interval(settings) == 60
    assert schedule(cron.interval(settings)) == {"minute": set(range(60)), "second": 0}
    slower = msgspec.structs.replace(settings, session_sweep_interval=300)
    assert cron.interval(slower) == 300


async def test_the_job_revokes_expired_sessions_and_is_idempotent(
    settings: Settings, expired: dict[str, str]
) -> None:
    context = JobContext(settings, InlineQueue(settings, run_crons=False))
    assert await session_jobs.sweep_sessions(context) == {"absolute": 1, "idle": 1, "batches": 1}
    assert await reasons(expired) == EXPECTED
    assert await session_jobs.sweep_sessions(context) == {"absolute": 0, "idle": 0, "batches": 1}


async def test_inline_cron_loop_sweeps_without_redis(settings: Settings, expired: dict[str, str]) -> None:
    fast = msgspec.structs.replace(settings, session_sweep_interval=1)
    queue = InlineQueue(fast)
    await queue.start()
    try:
        for _ in range(300):
            if (await reasons(expired))["idle"]:
                break
            await asyncio.sleep(0.01)
    finally:
        await queue.stop()
    assert await reasons(expired) == EXPECTED


async def test_with_redis_an_arq_worker_runs_the_cron_job_once_per_tick(
    redis_settings: Settings, db: Engine, expired: dict[str, str]
) -> None:
    cron = sweep_cron()
    tick = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    job_id = f"cron:sweep_sessions:{int(tick.timestamp() * 1000)}"
    # Another worker's scheduler reached this tick first and queued it under the tick's id.
    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    try:
        assert await pool.enqueue_job("cron:sweep_sessions", _job_id=job_id) is not None
    finally:
        await pool.aclose()

    worker = make_worker(
        redis_settings, jobs={}, crons=[cron], burst=True, poll_delay=0, handle_signals=False
    )
    assert [c.name for c in worker.cron_jobs] == ["cron:sweep_sessions"]
    assert worker.cron_jobs[0].unique
    worker.cron_jobs[0].next_run = tick  # due now: this worker schedules it too, under the same id
    # Its next tick half an hour away, so that a minute boundary passing during the run adds no second job.
    worker.cron_jobs[0].minute = {(tick.minute + 30) % 60}
    await run_burst_worker(worker, db)
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)  # one run for the tick, not two
    assert await reasons(expired) == EXPECTED


async def test_with_redis_the_job_can_be_enqueued_by_name(
    redis_settings: Settings, db: Engine, expired: dict[str, str]
) -> None:
    queue = ArqQueue(redis_settings.redis_url)
    await queue.start()
    assert await queue.enqueue("sweep_sessions", job_id="sweep_sessions:now")
    assert not await queue.enqueue("sweep_sessions", job_id="sweep_sessions:now")  # already queued
    await queue.stop()
    worker = make_worker(
        redis_settings,
        jobs={"sweep_sessions": session_jobs.sweep_sessions},
        crons=[],
        burst=True,
        poll_delay=0,
        handle_signals=False,
    )
    await run_burst_worker(worker, db)
    assert worker.jobs_complete == 1
    assert await reasons(expired) == EXPECTED

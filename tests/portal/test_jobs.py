"""Background jobs: in-process without Redis, arq workers with real Redis, and the cron schedule."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from piccolo.engine.base import Engine

from portal.auth import maintenance, sessions
from portal.auth.maintenance import purge_login_records, purge_revoked_sessions
from portal.cli import main
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import JobOutbox, LoginChallenge, RateEvent, Session
from portal.jobs import (
    ENQUEUE_TIMEOUT,
    ArqQueue,
    CronJob,
    InlineQueue,
    JobContext,
    job,
    make_worker,
    registered_crons,
    schedule,
)
from tests.conftest import empty_redis, free_port, run_burst_worker
from tests.factories import make_user

CALLS: list[tuple[str, Any]] = []


@job("test_record")
async def record(ctx: JobContext, value: Any) -> None:
    assert isinstance(ctx.settings, Settings)
    await asyncio.sleep(0.01)
    CALLS.append(("record", value))


@job("test_fail")
async def fail(ctx: JobContext) -> None:
    raise RuntimeError("job failed on purpose")


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


async def test_inline_queue_runs_jobs_and_deduplicates_by_id(settings: Settings) -> None:
    queue = InlineQueue(settings, run_crons=False)
    await queue.start()
    assert await queue.enqueue("test_record", 1, job_id="verify:dom_1")
    assert not await queue.enqueue("test_record", 2, job_id="verify:dom_1")  # still running
    assert await queue.enqueue("test_record", 3)
    await queue.drain()
    assert sorted(v for _, v in CALLS) == [1, 3]
    assert await queue.enqueue("test_record", 4, job_id="verify:dom_1")  # finished: may run again
    await queue.stop()
    assert sorted(v for _, v in CALLS) == [1, 3, 4]


async def test_inline_queue_logs_a_failing_job_and_goes_on(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    queue = InlineQueue(settings, run_crons=False)
    await queue.enqueue("test_fail")
    await queue.enqueue("test_record", "after")
    await queue.drain()
    assert CALLS == [("record", "after")]
    assert any("job test_fail() failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(KeyError):
        await queue.enqueue("no_such_job")


async def test_inline_cron_loop_runs_on_its_interval(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import portal.jobs as jobs_module

    monkeypatch.setattr(
        jobs_module, "_CRONS", {"test_record": CronJob("test_record_cron", _cron_body, lambda s: 0)}
    )
    monkeypatch.setitem(jobs_module._JOBS, "test_record_cron", _cron_body)
    queue = InlineQueue(settings)
    await queue.start()
    for _ in range(100):
        if len(CALLS) >= 2:
            break
        await asyncio.sleep(0.01)
    await queue.stop()
    assert len(CALLS) >= 2


async def _cron_body(ctx: JobContext) -> None:
    CALLS.append(("cron", None))


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (15, {"second": {0, 15, 30, 45}}),
        (60, {"minute": set(range(60)), "second": 0}),
        (900, {"minute": {0, 15, 30, 45}, "second": 0}),
        (7 * 60, {"minute": set(range(0, 60, 6)), "second": 0}),
        (3600, {"hour": set(range(24)), "minute": 0, "second": 0}),
        (6 * 3600, {"hour": {0, 6, 12, 18}, "minute": 0, "second": 0}),
        (3 * 86400, {"hour": 0, "minute": 0, "second": 0}),
    ],
)
def test_cron_interval_becomes_an_arq_schedule(interval: int, expected: dict[str, Any]) -> None:
    assert schedule(interval) == expected


@pytest.fixture
async def redis_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, redis_url=await empty_redis())


async def test_arq_worker_runs_enqueued_jobs_once_per_id(redis_settings: Settings, db: Engine) -> None:
    queue = ArqQueue(redis_settings.redis_url)
    await queue.start()
    assert await queue.enqueue("test_record", "a", job_id="verify:dom_a")
    assert not await queue.enqueue("test_record", "again", job_id="verify:dom_a")  # same id: deduplicated
    assert await queue.enqueue("test_record", "b")
    await queue.stop()
    worker = make_worker(
        redis_settings,
        jobs={"test_record": record},
        crons=[],
        burst=True,
        poll_delay=0,
        handle_signals=False,
    )
    await run_burst_worker(worker, db)
    assert sorted(v for _, v in CALLS) == ["a", "b"]
    assert worker.jobs_complete == 2


async def test_jobs_enqueued_while_redis_is_down_wait_in_the_database_for_a_worker(
    redis_settings: Settings, db: Engine
) -> None:
    """Issue 15: an enqueue that cannot reach Redis keeps the job in ``job_outbox`` (deduplicated by id);
    a worker connected to Redis queues and runs it."""
    down = ArqQueue(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    assert await down.enqueue("test_record", "kept", job_id="verify:dom_kept")
    assert not await down.enqueue("test_record", "twice", job_id="verify:dom_kept")  # already kept
    assert await down.enqueue("test_record", "no id")
    kept = await JobOutbox.select(JobOutbox.name, JobOutbox.job_id).order_by(JobOutbox.id)
    assert kept == [
        {"name": "test_record", "job_id": "verify:dom_kept"},
        {"name": "test_record", "job_id": ""},
    ]
    worker = make_worker(
        redis_settings, jobs={"test_record": record}, crons=[], burst=True, poll_delay=0, handle_signals=False
    )
    await run_burst_worker(worker, db)
    assert sorted(v for _, v in CALLS) == ["kept", "no id"]
    assert await JobOutbox.count() == 0


async def test_a_redis_that_does_not_answer_does_not_hold_the_enqueue(db: Engine) -> None:
    """A listener that accepts connections and never replies (a stopped or partitioned Redis)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        queue = ArqQueue(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        started = time.monotonic()
        assert await queue.enqueue("test_record", "kept")
        assert time.monotonic() - started < ENQUEUE_TIMEOUT + 2
    assert await JobOutbox.count() == 1


async def test_maintenance_purges_old_login_records(settings: Settings, db: Engine) -> None:
    now = clock.utcnow()
    old, fresh = now - timedelta(days=2), now - timedelta(minutes=5)
    for at, email in ((old, "old@x.test"), (fresh, "new@x.test")):
        await LoginChallenge(
            email=email, purpose="login", code_hash="h" * 64, expires_at=at, created_at=at
        ).save()
        await RateEvent(key=f"k:{email}", at=at).save()
    await purge_login_records(JobContext(settings, InlineQueue(settings)))
    assert [r["email"] for r in await LoginChallenge.select(LoginChallenge.email)] == ["new@x.test"]
    assert [r["key"] for r in await RateEvent.select(RateEvent.key)] == ["k:new@x.test"]
    assert "purge_login_records" in {c.name for c in registered_crons()}


def test_worker_command_needs_redis() -> None:
    result = CliRunner().invoke(main, ["worker", "--burst"], env={"PORTAL_REDIS_URL": ""})
    assert result.exit_code != 0
    assert "PORTAL_REDIS_URL is not set" in result.output


async def test_maintenance_purges_sessions_revoked_over_30_days_ago_in_batches(
    settings: Settings, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "PURGE_BATCH", 2)
    user = await make_user()
    now = clock.utcnow()
    ages = {"old1": 31, "old2": 40, "old3": 90, "recent": 29, "live": None}
    ids = {}
    for name, days in ages.items():
        _, ids[name] = await sessions.create_session(user["id"], auth_method="test")
        if days is not None:
            await Session.update(
                {Session.revoked_at: now - timedelta(days=days), Session.revoke_reason: "logout"}
            ).where(Session.id == ids[name])
    context = JobContext(settings, InlineQueue(settings))

    assert await purge_revoked_sessions(context) == 3
    left = {r["id"] for r in await Session.select(Session.id)}
    assert left == {ids["recent"], ids["live"]}
    assert await purge_revoked_sessions(context) == 0
    assert "purge_revoked_sessions" in {c.name for c in registered_crons()}

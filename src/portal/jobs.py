"""Background jobs (DESIGN §7): one registry of job functions, run by arq workers over Redis or, when no
``PORTAL_REDIS_URL`` is set, inside the web process (enqueue = an asyncio task, cron = a timer loop).

A job is ``async def fn(ctx: JobContext, *args)``. Jobs take ids, re-read rows and are idempotent, so that
running one twice, or late, does no harm.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from arq import cron as arq_cron
from arq.connections import RedisSettings
from arq.worker import Function, Worker
from arq.worker import func as arq_func

from portal.core import db
from portal.core.settings import Settings

log = logging.getLogger("portal.jobs")

JobFunction = Callable[..., Awaitable[Any]]

#: Modules whose import registers jobs (widget packages register theirs when the registry discovers them).
JOB_MODULES: tuple[str, ...] = (
    "portal.auth.maintenance",
    "portal.auth.jobs",
    "portal.oidc.logout",  # issue 10: back-channel logout
    "portal.webhooks.delivery",  # issue 11: webhook deliveries
    "widgets.sso.jobs",  # issue 12: metadata refresh, certificate warnings
    "portal.links.jobs",  # issue 14: purge dead setup links
)


class JobQueue(Protocol):
    async def enqueue(self, name: str, *args: Any, job_id: str | None = None) -> bool:
        """Queue job ``name``; False when a job with the same ``job_id`` is already queued or running."""
        ...


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a job gets: the settings and a queue for follow-up jobs."""

    settings: Settings
    jobs: JobQueue


@dataclass(frozen=True, slots=True)
class CronJob:
    """A job run every ``interval(settings)`` seconds; never twice at once, even with several workers."""

    name: str
    function: JobFunction
    interval: Callable[[Settings], int]


_JOBS: dict[str, JobFunction] = {}
_CRONS: dict[str, CronJob] = {}


def job(name: str) -> Callable[[JobFunction], JobFunction]:
    """Register ``async def fn(ctx, *args)`` as the job ``name``."""

    def register(function: JobFunction) -> JobFunction:
        if _JOBS.get(name, function) is not function:
            raise ValueError(f"job {name!r} is registered twice")
        _JOBS[name] = function
        return function

    return register


def cron(name: str, interval: Callable[[Settings], int]) -> Callable[[JobFunction], JobFunction]:
    """Register ``async def fn(ctx)`` to run every ``interval(settings)`` seconds."""

    def register(function: JobFunction) -> JobFunction:
        job(name)(function)
        _CRONS[name] = CronJob(name, function, interval)
        return function

    return register


def load_job_modules() -> None:
    """Import every module that registers jobs: the portal's own and each widget package's."""
    from portal.web.registry import discover

    for module in JOB_MODULES:
        importlib.import_module(module)
    discover()


def registered_jobs() -> dict[str, JobFunction]:
    """Every registered job by name."""
    return dict(_JOBS)


def registered_crons() -> list[CronJob]:
    """Every registered cron job."""
    return list(_CRONS.values())


class CronLock:
    """An exclusive ``flock`` on a file: held by at most one process of the machine at a time, and released by
    the kernel when that process ends, even by SIGKILL (issue 15: ``portal serve --workers N`` without Redis
    runs the in-process cron jobs in one process only)."""

    #: How often a process without the lock tries to take it.
    RETRY_SECONDS = 5.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True while this process holds it."""
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class InlineQueue:
    """Runs jobs in this process: for one machine with nothing but Python.

    With ``cron_lock``, the cron jobs run only while this process holds that lock (several serving
    processes on one machine: one of them runs them; another takes over if it dies).
    """

    def __init__(self, settings: Settings, *, run_crons: bool = True, cron_lock: Path | None = None) -> None:
        self.settings = settings
        self.run_crons = run_crons
        self.cron_lock = CronLock(cron_lock) if cron_lock is not None else None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    @property
    def context(self) -> JobContext:
        return JobContext(self.settings, self)

    async def start(self) -> None:
        log.info("no PORTAL_REDIS_URL: running background jobs inside the web process")
        if not self.run_crons:
            return
        if self.cron_lock is None:
            self._start_crons()
        else:
            self._loops = [asyncio.create_task(self._wait_for_cron_lock(), name="cron-lock")]

    def _start_crons(self) -> None:
        self._loops.extend(
            asyncio.create_task(self._cron_loop(c), name=f"cron:{c.name}") for c in _CRONS.values()
        )

    async def _wait_for_cron_lock(self) -> None:
        assert self.cron_lock is not None
        while not self.cron_lock.try_acquire():  # noqa: ASYNC110 - flock has no event to wait on
            await asyncio.sleep(CronLock.RETRY_SECONDS)
        log.info("this process (pid %d) runs the cron jobs (lock %s)", os.getpid(), self.cron_lock.path)
        self._start_crons()

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        if self.cron_lock is not None:
            self.cron_lock.release()
        await self.drain()

    async def enqueue(self, name: str, *args: Any, job_id: str | None = None) -> bool:
        if name not in _JOBS:
            raise KeyError(f"no job named {name!r}")
        if job_id is not None and job_id in self._running:
            return False
        task = asyncio.create_task(self._run(name, args), name=f"job:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if job_id is not None:
            self._running[job_id] = task
            task.add_done_callback(lambda _: self._running.pop(job_id, None))
        return True

    async def drain(self) -> None:
        """Wait until every queued job has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(self, name: str, args: tuple[Any, ...]) -> None:
        try:
            await _JOBS[name](self.context, *args)
        except Exception:
            log.exception("job %s%r failed", name, args)

    async def _cron_loop(self, cron_job: CronJob) -> None:
        interval = cron_job.interval(self.settings)
        while True:
            await asyncio.sleep(interval)
            # Awaited in the loop: one run at a time, like arq's unique cron jobs.
            await self._run(cron_job.name, ())


def redis_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis cannot be reached (refused, dropped, timed out), not a bug."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError)


#: Seconds an enqueue may wait for Redis before the job goes to the outbox instead.
ENQUEUE_TIMEOUT = 3.0


class ArqQueue:
    """Enqueues into Redis for ``portal worker`` processes (arq).

    While Redis cannot be reached, a job is written to the ``job_outbox`` table instead (issue 15) and
    ``enqueue`` still answers True: the worker hands the outbox to Redis once it is back
    (:func:`relay_outbox`), so nothing enqueued during an outage is lost.
    """

    def __init__(self, redis_url: str | None = None, *, pool: Any = None) -> None:
        self.redis_url = redis_url
        self.pool = pool

    async def start(self) -> None:
        """Connect lazily, on the first enqueue: Redis being down must not keep the web process from
        starting (``/readyz`` reports it; jobs go to the outbox)."""

    async def _connect(self) -> Any:
        if self.pool is None:
            from arq import create_pool
            from arq.connections import RedisSettings

            assert self.redis_url is not None
            redis_settings = RedisSettings.from_dsn(self.redis_url)
            # Fail fast: a request must not wait for Redis; the job goes to the outbox instead.
            redis_settings.conn_retries = 0
            redis_settings.conn_timeout = 2
            self.pool = await create_pool(redis_settings)
        return self.pool

    async def stop(self) -> None:
        if self.pool is not None and self.redis_url is not None:
            await self.pool.aclose()
            self.pool = None

    async def enqueue(self, name: str, *args: Any, job_id: str | None = None) -> bool:
        try:
            # A Redis that accepts connections but does not answer (stopped with SIGSTOP, a network
            # partition) must not hold the request either.
            async with asyncio.timeout(ENQUEUE_TIMEOUT):
                pool = await self._connect()
                queued = await pool.enqueue_job(name, *args, _job_id=job_id)
        except Exception as exc:
            if not redis_unreachable(exc):
                raise
            return await _to_outbox(name, args, job_id, exc)
        return queued is not None


async def _to_outbox(name: str, args: tuple[Any, ...], job_id: str | None, exc: BaseException) -> bool:
    """Keep a job Redis did not take; False if one with the same ``job_id`` is already waiting there."""
    from portal.core.tables import JobOutbox

    if job_id and await JobOutbox.exists().where(JobOutbox.job_id == job_id):
        return False
    await JobOutbox.insert(JobOutbox(name=name, args=list(args), job_id=job_id or ""))
    log.warning(
        "Redis unreachable (%s: %s): job %s%r kept in the database until a worker can queue it",
        type(exc).__name__,
        exc,
        name,
        args,
    )
    return True


#: How often ``portal worker`` looks for jobs kept in the database while Redis was down.
OUTBOX_INTERVAL = 2.0
#: Outbox rows handed to Redis per transaction.
OUTBOX_BATCH = 100


async def relay_outbox(pool: Any) -> int:
    """Queue the jobs kept in ``job_outbox`` into Redis and delete them; the number queued.

    A batch is deleted in the transaction that read it, after Redis took every job of it: if Redis fails
    half-way the rows stay (and a job queued twice is harmless: jobs are idempotent, ids deduplicate).
    Several workers may run this at once: PostgreSQL rows are locked ``SKIP LOCKED``; SQLite's write lock
    serializes them.
    """
    from piccolo.engine.sqlite import SQLiteEngine

    from portal.core.tables import JobOutbox

    relayed = 0
    while True:
        async with db.write_transaction():
            query = JobOutbox.select().order_by(JobOutbox.id).limit(OUTBOX_BATCH)
            if not isinstance(JobOutbox._meta.db, SQLiteEngine):
                query = query.lock_rows(skip_locked=True)
            rows = await query
            for row in rows:
                await pool.enqueue_job(
                    row["name"], *db.json_value(row["args"]), _job_id=row["job_id"] or None
                )
            if rows:
                await JobOutbox.delete().where(JobOutbox.id.is_in([row["id"] for row in rows]))
        relayed += len(rows)
        if len(rows) < OUTBOX_BATCH:
            if relayed:
                worker_log.info("queued %d job(s) kept in the database while Redis was down", relayed)
            return relayed


def make_queue(settings: Settings, *, cron_lock: Path | None = None) -> InlineQueue | ArqQueue:
    """Redis when configured, else in-process (cron jobs only while holding ``cron_lock``, if given)."""
    if settings.redis_url:
        return ArqQueue(settings.redis_url)
    return InlineQueue(settings, cron_lock=cron_lock)


# --- the arq worker (``portal worker``; ``workers/settings.py`` for arq's own command) ------------------

worker_log = logging.getLogger("portal.worker")


def schedule(interval: int) -> dict[str, Any]:
    """arq cron fields for "every ``interval`` seconds", rounded to a divisor of a minute, hour or day."""
    for unit, field, span in ((1, "second", 60), (60, "minute", 60), (3600, "hour", 24)):
        if interval < unit * span:
            step = max(1, interval // unit)
            while span % step:
                step -= 1
            times: dict[str, Any] = {field: set(range(0, span, step))}
            if field != "second":
                times["second"] = 0
            if field == "hour":
                times["minute"] = 0
            return times
    return {"hour": 0, "minute": 0, "second": 0}


def _adapt(name: str, function: JobFunction) -> Any:
    """arq calls ``fn(ctx_dict, *args)``; our jobs take a JobContext."""

    async def run(ctx: dict[str, Any], *args: Any) -> Any:
        return await function(ctx["job_context"], *args)

    run.__qualname__ = run.__name__ = name
    return run


def worker_options(
    settings: Settings,
    *,
    jobs: Mapping[str, JobFunction] | None = None,
    crons: list[CronJob] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for :class:`arq.worker.Worker` (tests pass their own jobs)."""
    assert settings.redis_url, "the worker needs PORTAL_REDIS_URL"
    if jobs is None:
        load_job_modules()
        jobs = registered_jobs()
        crons = registered_crons() if crons is None else crons
    # Enqueued jobs keep no result: a job id then deduplicates while the job is queued or running only, as
    # in the embedded queue. (arq keeps results an hour by default, and refuses an id whose result it
    # keeps: "Verify now" pressed twice within the hour would quietly not check again.) Cron jobs keep
    # theirs; their ids name the scheduled time.
    functions: list[Function] = [
        arq_func(_adapt(name, fn), name=name, keep_result=0) for name, fn in jobs.items()
    ]
    cron_jobs = [
        arq_cron(
            _adapt(c.name, c.function), name=f"cron:{c.name}", unique=True, **schedule(c.interval(settings))
        )
        for c in crons or ()
    ]

    async def startup(ctx: dict[str, Any]) -> None:
        engine = db.bind(db.make_engine(settings.database_url))
        await db.start(engine)
        ctx["engine"] = engine
        ctx["job_context"] = JobContext(settings, ArqQueue(pool=ctx["redis"]))
        # Jobs kept in the database while Redis was down: queued before the first poll, then every
        # OUTBOX_INTERVAL (a web process may still be writing some while its own Redis client reconnects).
        await relay_outbox(ctx["redis"])
        ctx["outbox_relay"] = asyncio.create_task(_relay_loop(ctx["redis"]), name="outbox-relay")
        worker_log.info("worker ready: %d jobs, %d cron jobs", len(functions), len(cron_jobs))

    async def shutdown(ctx: dict[str, Any]) -> None:
        relay = ctx.pop("outbox_relay", None)
        if relay is not None:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        if "engine" in ctx:
            await db.stop(ctx["engine"])

    return {
        "functions": functions,
        "cron_jobs": cron_jobs,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "handle_signals": True,
        "max_jobs": 20,
    }


def make_worker(settings: Settings, **overrides: Any) -> Worker:
    """An arq Worker for ``settings``; ``overrides`` go to Worker (e.g. burst=True, poll_delay=0)."""
    jobs = overrides.pop("jobs", None)
    crons = overrides.pop("crons", None)
    return Worker(**{**worker_options(settings, jobs=jobs, crons=crons), **overrides})


async def _relay_loop(pool: Any) -> None:
    while True:
        await asyncio.sleep(OUTBOX_INTERVAL)
        try:
            await relay_outbox(pool)
        except Exception as exc:  # noqa: BLE001 - Redis or the database is down: the next round tries again
            worker_log.warning(
                "could not queue the jobs kept in the database: %s: %s", type(exc).__name__, exc
            )


#: Longest wait between two attempts to reach Redis again.
RECONNECT_MAX_DELAY = 2.0


def run_worker(settings: Settings, *, burst: bool = False) -> None:
    """``portal worker``: an arq worker that outlives Redis outages. When Redis goes away the worker is
    closed and a new one connects as soon as Redis answers again (SIGTERM/SIGINT stop it as arq does:
    running jobs are cancelled and retried by the next worker)."""
    asyncio.run(_supervise(settings, burst))


async def _supervise(settings: Settings, burst: bool) -> None:
    delay = 0.5
    while True:
        worker = make_worker(settings, burst=burst)
        stopped: list[Any] = []
        worker.on_stop = stopped.append
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            if not stopped:
                raise
        except Exception as exc:
            if not redis_unreachable(exc):
                await _close_quietly(worker)
                raise
            worker_log.warning(
                "Redis unreachable (%s: %s): reconnecting in %.1f s", type(exc).__name__, exc, delay
            )
            await _close_quietly(worker)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
            continue
        await _close_quietly(worker)
        return


async def _close_quietly(worker: Worker) -> None:
    try:
        await worker.close()
    except Exception as exc:  # noqa: BLE001 - Redis is gone: still release the database
        worker_log.debug("closing the worker: %s: %s", type(exc).__name__, exc)
        shutdown = worker.on_shutdown
        if shutdown is not None:
            await shutdown(worker.ctx)

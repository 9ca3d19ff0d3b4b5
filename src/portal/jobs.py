"""Background jobs (DESIGN §7): one registry of job functions, run by arq workers over Redis or, when no
``PORTAL_REDIS_URL`` is set, inside the web process (enqueue = an asyncio task, cron = a timer loop).

A job is ``async def fn(ctx: JobContext, *args)``. Jobs take ids, re-read rows and are idempotent, so that
running one twice, or late, does no harm.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

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


class InlineQueue:
    """Runs jobs in this process: for one machine with nothing but Python."""

    def __init__(self, settings: Settings, *, run_crons: bool = True) -> None:
        self.settings = settings
        self.run_crons = run_crons
        self._running: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    @property
    def context(self) -> JobContext:
        return JobContext(self.settings, self)

    async def start(self) -> None:
        log.info("no PORTAL_REDIS_URL: running background jobs inside the web process")
        if self.run_crons:
            self._loops = [
                asyncio.create_task(self._cron_loop(c), name=f"cron:{c.name}") for c in _CRONS.values()
            ]

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
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


class ArqQueue:
    """Enqueues into Redis for ``portal worker`` processes (arq)."""

    def __init__(self, redis_url: str | None = None, *, pool: Any = None) -> None:
        self.redis_url = redis_url
        self.pool = pool

    async def start(self) -> None:
        """Connect lazily, on the first enqueue: Redis being down must not keep the web process from
        starting (``/readyz`` reports it; an enqueue raises)."""

    async def _connect(self) -> Any:
        if self.pool is None:
            from arq import create_pool
            from arq.connections import RedisSettings

            assert self.redis_url is not None
            redis_settings = RedisSettings.from_dsn(self.redis_url)
            redis_settings.conn_retries = 1
            self.pool = await create_pool(redis_settings)
        return self.pool

    async def stop(self) -> None:
        if self.pool is not None and self.redis_url is not None:
            await self.pool.aclose()
            self.pool = None

    async def enqueue(self, name: str, *args: Any, job_id: str | None = None) -> bool:
        pool = await self._connect()
        queued = await pool.enqueue_job(name, *args, _job_id=job_id)
        return queued is not None


def make_queue(settings: Settings) -> InlineQueue | ArqQueue:
    """Redis when configured, else in-process."""
    if settings.redis_url:
        return ArqQueue(settings.redis_url)
    return InlineQueue(settings)


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
        worker_log.info("worker ready: %d jobs, %d cron jobs", len(functions), len(cron_jobs))

    async def shutdown(ctx: dict[str, Any]) -> None:
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

"""The arq worker: every registered job and cron job, with the portal's settings and database.

Run it with ``portal worker`` (the Procfile's ``worker`` line), or with arq's own command,
``arq workers.settings.WorkerSettings``. Settings come from ``PORTAL_*`` variables when the worker starts,
never at import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from arq import cron as arq_cron
from arq.connections import RedisSettings
from arq.worker import Function, Worker
from arq.worker import func as arq_func

from portal import db
from portal.jobs import (
    ArqQueue,
    CronJob,
    JobContext,
    JobFunction,
    load_job_modules,
    registered_crons,
    registered_jobs,
)
from portal.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from _collections_abc import dict_items

log = logging.getLogger("portal.worker")


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
        log.info("worker ready: %d jobs, %d cron jobs", len(functions), len(cron_jobs))

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


class _SettingsFromEnvironment(dict[str, Any]):
    """arq's settings for ``arq workers.settings.WorkerSettings``, read from ``PORTAL_*`` when arq asks.

    arq accepts a dict as worker settings and reads it (``items()``) when it builds the worker; the
    environment is read then, not when this module is imported. ``portal worker`` is the supported entry
    (same jobs, plus a clear message when ``PORTAL_REDIS_URL`` is missing); this exists for deployments that
    run arq directly.
    """

    def _load(self) -> None:
        if not self:
            try:
                settings = load_settings(os.environ)
            except SettingsError as exc:
                raise SystemExit(str(exc)) from None
            if not settings.redis_url:
                raise SystemExit("PORTAL_REDIS_URL is not set: the arq worker needs Redis")
            self.update(worker_options(settings))

    def items(self) -> dict_items[str, Any]:
        self._load()
        return super().items()

    def __getitem__(self, key: str) -> Any:
        self._load()
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._load()
        return super().get(key, default)


#: For ``arq workers.settings.WorkerSettings`` (the environment is read when arq starts the worker).
WorkerSettings = _SettingsFromEnvironment()

"""Sending deliveries: a job per delivery right after the request that wrote it, and a cron that claims
whatever is due (retries, and deliveries a killed process left behind) by lease.

A delivery is claimed by setting ``lease_until``; only a row that is due and not leased (or whose lease ran
out: the process holding it died) can be claimed, so two workers never send it at once. Every attempt is
logged (``webhook_attempt``); a failure is retried on :data:`RETRY_SCHEDULE`; an endpoint whose attempts
have all failed for :data:`DISABLE_AFTER` is disabled, its pending deliveries fail, and that is audited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from piccolo.engine.sqlite import SQLiteEngine

from portal.auth import accounts
from portal.core import clock, crypto, db, outbound
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from portal.jobs import JobContext, JobQueue, cron, job
from portal.webhooks import signing

log = logging.getLogger("portal.webhooks")

#: Seconds to wait after the 1st, 2nd… failed attempt: seconds at first, then up to a day; about 6.5 days in
#: all, so a delivery outlives :data:`DISABLE_AFTER`. After the last one the delivery has failed.
RETRY_SCHEDULE: tuple[int, ...] = (
    5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 57600, 86400, 86400, 86400, 86400, 86400, 86400,
)  # fmt: skip
#: An endpoint failing (no success since its first failure) this long is disabled.
DISABLE_AFTER = timedelta(days=5)
#: Deliveries claimed at once by the cron, and sent concurrently at most.
BATCH = 500
CONCURRENCY = 50
#: Response bodies are read up to this size (and otherwise ignored).
MAX_RESPONSE_BYTES = 64 * 1024
SECRET_PURPOSE = "webhook.secret"  # noqa: S105 (a purpose label, not a secret)


def backoff(attempts: int) -> timedelta | None:
    """The wait after ``attempts`` failed attempts, or None when the delivery is given up."""
    if attempts > len(RETRY_SCHEDULE):
        return None
    return timedelta(seconds=RETRY_SCHEDULE[attempts - 1])


def lease_time(settings: Settings) -> timedelta:
    """Long enough for a whole claimed batch to be sent, even at the timeout."""
    return timedelta(seconds=settings.webhook_timeout * (BATCH // CONCURRENCY + 1) + 60)


async def enqueue(queue: JobQueue, delivery_ids: list[str]) -> None:
    """Queue a send job per delivery (after the commit). A failure to queue loses nothing: the cron sends."""
    for delivery_id in delivery_ids:
        try:
            await queue.enqueue("webhook_deliver", delivery_id, job_id=f"webhook_deliver:{delivery_id}")
        except Exception:  # noqa: BLE001 (Redis down or anything else: the cron is the safety net)
            log.warning("could not queue webhook delivery %s; the dispatch cron will send it", delivery_id)
            return


async def claim(
    settings: Settings, *, ids: list[str] | None = None, limit: int = BATCH, due_by: datetime | None = None
) -> list[dict[str, Any]]:
    """Lease due deliveries (``ids`` only, if given; due by ``due_by``, default now) and return them with
    their event and endpoint."""
    now = clock.utcnow()
    due = (WebhookDelivery.next_attempt_at <= (due_by or now)) & (
        WebhookDelivery.lease_until.is_null() | (WebhookDelivery.lease_until < now)
    )
    if ids is not None:
        due &= WebhookDelivery.id.is_in(ids)
    async with db.write_transaction():
        query = (
            WebhookDelivery.select(WebhookDelivery.id).where(due).order_by(WebhookDelivery.next_attempt_at)
        )
        query = query.limit(limit)
        if not isinstance(WebhookDelivery._meta.db, SQLiteEngine):
            # PostgreSQL: concurrent claimers skip each other's rows (SQLite serializes writers anyway).
            query = query.lock_rows(skip_locked=True)
        found = [row["id"] for row in await query]
        if not found:
            return []
        claimed = (
            await WebhookDelivery.update({WebhookDelivery.lease_until: now + lease_time(settings)})
            .where(WebhookDelivery.id.is_in(found) & due)
            .returning(WebhookDelivery.id)
        )
    if not claimed:
        return []
    rows: list[dict[str, Any]] = await WebhookDelivery.select(
        WebhookDelivery.id,
        WebhookDelivery.attempts,
        WebhookDelivery.endpoint,
        WebhookDelivery.event.id.as_alias("event_id"),
        WebhookDelivery.event.type.as_alias("event_type"),
        WebhookDelivery.event.data.as_alias("event_data"),
        WebhookDelivery.event.created_at.as_alias("event_at"),
        WebhookDelivery.endpoint.url.as_alias("url"),
        WebhookDelivery.endpoint.secret.as_alias("secret"),
        WebhookDelivery.endpoint.enabled.as_alias("enabled"),
    ).where(WebhookDelivery.id.is_in([row["id"] for row in claimed]))
    return rows


def payload(event_type: str, at: datetime, data: Any) -> bytes:
    """The request body: ``{"type", "timestamp", "data"}`` as compact JSON."""
    return json.dumps(
        {"type": event_type, "timestamp": at.isoformat().replace("+00:00", "Z"), "data": db.json_value(data)},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


@dataclass(slots=True)
class Outcome:
    """One attempt's result."""

    delivery_id: str
    endpoint_id: str
    attempts: int
    ok: bool
    status_code: int | None
    duration_ms: int
    error: str


async def attempt(
    settings: Settings, http: httpx.AsyncClient, row: dict[str, Any], secrets: dict[str, str] | None = None
) -> Outcome:
    """Send one claimed delivery once (no database writes); ``secrets`` caches unsealed endpoint secrets."""
    attempts = int(row["attempts"]) + 1
    if not row["enabled"]:
        return Outcome(row["id"], row["endpoint"], attempts, False, None, 0, "the endpoint is disabled")
    cache = {} if secrets is None else secrets
    secret = cache.get(row["secret"])
    if secret is None:
        secret = cache[row["secret"]] = crypto.unseal(settings, SECRET_PURPOSE, row["secret"]).decode()
    body = payload(row["event_type"], row["event_at"], row["event_data"])
    headers = signing.headers(secret, row["event_id"], int(time.time()), body)
    started = time.perf_counter()
    status_code: int | None = None
    error = ""
    try:
        response = await outbound.request(
            "POST",
            row["url"],
            allow_private=settings.webhook_allow_private_addresses,
            allow_http=settings.webhook_allow_private_addresses,
            headers=headers,
            content=body,
            timeout=float(settings.webhook_timeout),
            max_bytes=MAX_RESPONSE_BYTES,
            client=http,
        )
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except InvalidInput as exc:
        error = f"refused: {exc.message}"
    except outbound.ResponseTooLarge as exc:
        error = str(exc)
    except httpx.TimeoutException:
        error = f"no answer within {settings.webhook_timeout} s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    duration = int((time.perf_counter() - started) * 1000)
    return Outcome(row["id"], row["endpoint"], attempts, not error, status_code, duration, error[:500])


async def record(outcomes: list[Outcome]) -> None:
    """Write the attempts, the deliveries' new state and the endpoints' health, in one transaction."""
    if not outcomes:
        return
    now = clock.utcnow()
    async with db.write_transaction():
        await WebhookAttempt.insert(
            *(
                WebhookAttempt(
                    delivery=o.delivery_id,
                    at=now,
                    status="delivered" if o.ok else "failed",
                    status_code=o.status_code,
                    duration_ms=o.duration_ms,
                    error=o.error,
                )
                for o in outcomes
            )
        )
        for o in outcomes:
            values: dict[Any, Any] = {
                WebhookDelivery.attempts: o.attempts,
                WebhookDelivery.lease_until: None,
                WebhookDelivery.last_status_code: o.status_code,
                WebhookDelivery.last_duration_ms: o.duration_ms,
                WebhookDelivery.last_error: o.error,
            }
            wait = None if o.ok else backoff(o.attempts)
            if o.ok:
                values |= {
                    WebhookDelivery.status: "delivered",
                    WebhookDelivery.delivered_at: now,
                    WebhookDelivery.next_attempt_at: None,
                }
            elif wait is None:
                values |= {WebhookDelivery.status: "failed", WebhookDelivery.next_attempt_at: None}
            else:
                values[WebhookDelivery.next_attempt_at] = now + wait
            await WebhookDelivery.update(values).where(
                (WebhookDelivery.id == o.delivery_id) & (WebhookDelivery.status == "pending")
            )
        succeeded = {o.endpoint_id for o in outcomes if o.ok}
        failed = {o.endpoint_id for o in outcomes if not o.ok} - succeeded
        if succeeded:
            await WebhookEndpoint.update({WebhookEndpoint.failing_since: None}).where(
                WebhookEndpoint.id.is_in(sorted(succeeded)) & WebhookEndpoint.failing_since.is_not_null()
            )
        if failed:
            await WebhookEndpoint.update({WebhookEndpoint.failing_since: now}).where(
                WebhookEndpoint.id.is_in(sorted(failed)) & WebhookEndpoint.failing_since.is_null()
            )
            await _disable_failing(sorted(failed), now)


async def _disable_failing(endpoint_ids: list[str], now: datetime) -> None:
    """Disable the endpoints among ``endpoint_ids`` that have failed for :data:`DISABLE_AFTER`; audit it."""
    gone = (
        await WebhookEndpoint.update(
            {
                WebhookEndpoint.enabled: False,
                WebhookEndpoint.disabled_reason: "failing",
                WebhookEndpoint.disabled_at: now,
                WebhookEndpoint.updated_at: now,
            }
        )
        .where(
            WebhookEndpoint.id.is_in(endpoint_ids)
            & WebhookEndpoint.enabled.eq(True)
            & (WebhookEndpoint.failing_since <= now - DISABLE_AFTER)
        )
        .returning(
            WebhookEndpoint.id,
            WebhookEndpoint.url,
            WebhookEndpoint.organization_id,
            WebhookEndpoint.failing_since,
        )
    )
    for endpoint in gone:
        abandoned = await fail_pending(endpoint["id"], "the endpoint was disabled after failing for 5 days")
        log.warning(
            "webhook endpoint %s (%s) disabled: failing since %s",
            endpoint["id"],
            endpoint["url"],
            endpoint["failing_since"],
        )
        await accounts.audit(
            "webhook.endpoint_disabled",
            organization_id=endpoint["organization_id"],
            target=endpoint["id"],
            details={
                "url": endpoint["url"],
                "reason": "failing",
                "failing_since": endpoint["failing_since"].isoformat(),
                "deliveries_abandoned": abandoned,
            },
        )


async def fail_pending(endpoint_id: str, reason: str) -> int:
    """Give up every pending delivery of an endpoint (disabled); returns how many."""
    rows = (
        await WebhookDelivery.update(
            {
                WebhookDelivery.status: "failed",
                WebhookDelivery.next_attempt_at: None,
                WebhookDelivery.lease_until: None,
                WebhookDelivery.last_error: reason,
            }
        )
        .where((WebhookDelivery.endpoint == endpoint_id) & (WebhookDelivery.status == "pending"))
        .returning(WebhookDelivery.id)
    )
    return len(rows)


async def send(
    settings: Settings, rows: list[dict[str, Any]], http: httpx.AsyncClient | None = None
) -> list[Outcome]:
    """Attempt each claimed row (:data:`CONCURRENCY` at a time) and record the outcomes."""
    if not rows:
        return []
    own = http is None
    client = http or httpx.AsyncClient(
        follow_redirects=False, limits=httpx.Limits(max_connections=CONCURRENCY)
    )
    gate = asyncio.Semaphore(CONCURRENCY)
    secrets: dict[str, str] = {}

    async def one(row: dict[str, Any]) -> Outcome:
        async with gate:
            return await attempt(settings, client, row, secrets)

    try:
        outcomes = list(await asyncio.gather(*(one(row) for row in rows)))
    finally:
        if own:
            await client.aclose()
    await record(outcomes)
    return outcomes


@job("webhook_deliver")
async def deliver(ctx: JobContext, delivery_id: str) -> bool | None:
    """Send one delivery now if it is due and nobody holds it; True if delivered, None if not claimed."""
    rows = await claim(ctx.settings, ids=[delivery_id], limit=1)
    if not rows:
        return None
    outcomes = await send(ctx.settings, rows)
    return outcomes[0].ok


async def dispatch_due(settings: Settings, http: httpx.AsyncClient | None = None) -> dict[str, int]:
    """Claim and send the deliveries due when it starts, a batch at a time; counts by outcome. (Retries that
    come due meanwhile wait for the next run, so a run ends even while an endpoint keeps failing.)"""
    counts = {"delivered": 0, "failed": 0}
    started = clock.utcnow()
    while True:
        rows = await claim(settings, due_by=started)
        outcomes = await send(settings, rows, http)
        for outcome in outcomes:
            counts["delivered" if outcome.ok else "failed"] += 1
        if len(rows) < BATCH:
            return counts


@cron("webhook_dispatch", interval=lambda settings: settings.webhook_dispatch_interval)
async def dispatch(ctx: JobContext) -> dict[str, int]:
    """Send what is due: retries, and deliveries whose job was lost (a web process killed after its commit)."""
    return await dispatch_due(ctx.settings)


#: Events (with their deliveries and attempt log) are kept this long once nothing more is owed for them.
RETENTION = timedelta(days=30)
PURGE_BATCH = 1000


@cron("webhook_purge", interval=lambda settings: 3600)
async def purge(ctx: JobContext) -> dict[str, int]:
    """Delete events older than :data:`RETENTION` that owe nothing (no pending delivery), with their
    deliveries and attempts, a batch per transaction."""
    cutoff = clock.utcnow() - RETENTION
    deleted = 0
    while True:
        async with db.write_transaction():
            old = [
                row["id"]
                for row in await WebhookEvent.select(WebhookEvent.id)
                .where(WebhookEvent.created_at < cutoff)
                .order_by(WebhookEvent.created_at)
                .limit(PURGE_BATCH)
            ]
            owed = {
                row["event"]
                for row in await WebhookDelivery.select(WebhookDelivery.event).where(
                    WebhookDelivery.event.is_in(old or ["-"]) & (WebhookDelivery.status == "pending")
                )
            }
            done = [event_id for event_id in old if event_id not in owed]
            if done:
                await WebhookEvent.delete().where(WebhookEvent.id.is_in(done))
        deleted += len(done)
        if len(old) < PURGE_BATCH or not done:
            return {"events": deleted}

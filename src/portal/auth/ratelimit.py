"""Rate limits kept in the database, so they hold across processes on both engines: a sliding window for the
hosted login's low-volume limits (:func:`hit`), a fixed window for the per-request limits of SCIM and the
management API (:func:`count`: one statement per request)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from portal.core import clock
from portal.core.tables import RateCounter, RateEvent

#: (limit, window seconds) for the hosted login (DESIGN §4, §8).
LOGIN_CODE_PER_EMAIL = (5, 15 * 60)
LOGIN_CODE_PER_IP = (20, 15 * 60)
LOGIN_VERIFY_PER_IP = (30, 15 * 60)


@dataclass(frozen=True, slots=True)
class RateResult:
    """Whether the request may go ahead; if not, how many seconds until it may (at least 1)."""

    allowed: bool
    retry_after_seconds: int = 0
    #: Requests still allowed in the current window (for ``RateLimit`` headers).
    remaining: int = 0
    #: Seconds until the oldest counted request leaves the window.
    reset_seconds: int = 0


async def hit(key: str, limit: int, window_seconds: int) -> RateResult:
    """Count one request for ``key``; refuse it if ``limit`` requests were already counted in the window.

    The event is written before counting, so concurrent requests can only over-refuse, never over-allow;
    a refused request is not counted, so hammering does not extend the wait.
    """
    now = clock.utcnow()
    window = timedelta(seconds=window_seconds)
    key = key[:400]
    await RateEvent.delete().where((RateEvent.key == key) & (RateEvent.at <= now - window))
    mine = await RateEvent.insert(RateEvent(key=key, at=now)).returning(RateEvent.id)
    in_window = (RateEvent.key == key) & (RateEvent.at > now - window)
    # Count first: a key with a large limit (the management API's) must not read every event of its window.
    counted = await RateEvent.count().where(in_window)
    if counted <= limit:
        oldest = await RateEvent.select(RateEvent.at).where(in_window).order_by(RateEvent.at).first()
        reset = (oldest["at"] + window - now).total_seconds() if oldest else window_seconds
        return RateResult(True, remaining=limit - counted, reset_seconds=max(0, math.ceil(reset)))
    rows = (
        await RateEvent.select(RateEvent.id, RateEvent.at)
        .where(in_window)
        .order_by(RateEvent.at)
        .order_by(RateEvent.id)
    )
    my_id = mine[0]["id"]
    await RateEvent.delete().where(RateEvent.id == my_id)
    others = [row for row in rows if row["id"] != my_id]
    # The request fits once enough of the oldest counted events have left the window.
    freeing = others[len(others) - limit]
    wait = (freeing["at"] + window - now).total_seconds()
    retry = max(1, math.ceil(wait))
    return RateResult(False, retry, remaining=0, reset_seconds=retry)


_COUNT = (
    "INSERT INTO rate_counter (slot, expires_at, hits) VALUES ({}, {}, 1)"
    " ON CONFLICT (slot) DO UPDATE SET hits = rate_counter.hits + 1 RETURNING hits"
)
#: Share of :func:`count` calls that also delete the windows that have ended.
PRUNE_SHARE = 0.01


async def count(key: str, limit: int, window_seconds: int) -> RateResult:
    """Count one request for ``key`` in the current fixed window of ``window_seconds``; refuse it past ``limit``.

    One upsert, atomic on both engines, so concurrent requests never over-allow. A refused request is counted
    too, but a window ends at a fixed time, so hammering cannot extend the wait. At a window's edge a client
    may get up to twice ``limit`` through within ``window_seconds`` (the usual fixed-window trade; the login
    limits, where that matters, use :func:`hit`).
    """
    now = clock.utcnow()
    start = int(now.timestamp()) // window_seconds * window_seconds
    ends = datetime.fromtimestamp(start + window_seconds, UTC)
    rows = await RateCounter.raw(_COUNT, f"{key[:400]}@{start}", ends)
    hits = int(rows[0]["hits"])
    if random.random() < PRUNE_SHARE:  # noqa: S311 - pruning cadence, not security
        await RateCounter.delete().where(RateCounter.expires_at < now)
    reset = max(1, math.ceil((ends - now).total_seconds()))
    if hits > limit:
        return RateResult(False, reset, remaining=0, reset_seconds=reset)
    return RateResult(True, remaining=limit - hits, reset_seconds=reset)


def describe_wait(seconds: int) -> str:
    """``"12 minutes"``, ``"1 minute"``, ``"40 seconds"``: how long the 429 page says to wait."""
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"

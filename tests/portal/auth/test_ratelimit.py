"""The fixed-window rate limit of SCIM and the management API (portal.auth.ratelimit.count), on both engines."""

from __future__ import annotations

import asyncio

import pytest
from piccolo.engine.base import Engine

from portal.auth import ratelimit
from portal.core import db as portal_db
from portal.core.tables import RateCounter
from tests.conftest import FrozenClock

pytestmark = pytest.mark.db


async def hit(key: str, limit: int = 3, window: int = 60) -> ratelimit.RateResult:
    async with portal_db.bookkeeping():
        return await ratelimit.count(key, limit, window)


async def test_counts_to_the_limit_then_refuses_until_the_window_ends(
    db: Engine, frozen_clock: FrozenClock
) -> None:
    # The clock stands at 12:00:00.12: the window 12:00:00-12:01:00 has 60 s left.
    results = [await hit("scim:dir_a") for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results] == [2, 1, 0, 0]
    assert results[0].reset_seconds == 60
    assert results[3].retry_after_seconds == 60
    frozen_clock.advance(seconds=45)
    late = await hit("scim:dir_a")
    assert not late.allowed and late.retry_after_seconds == 15  # hammering does not extend the wait
    frozen_clock.advance(seconds=15)
    fresh = await hit("scim:dir_a")
    assert fresh.allowed and fresh.remaining == 2


async def test_keys_are_counted_apart(db: Engine, frozen_clock: FrozenClock) -> None:
    for _ in range(3):
        await hit("api:key_one")
    assert not (await hit("api:key_one")).allowed
    assert (await hit("api:key_two")).allowed


async def test_concurrent_requests_never_get_more_than_the_limit_through(
    db: Engine, frozen_clock: FrozenClock
) -> None:
    results = await asyncio.gather(*(hit("scim:busy", limit=10) for _ in range(25)))
    assert sum(r.allowed for r in results) == 10
    rows = await RateCounter.select().where(RateCounter.slot.like("scim:busy@%"))
    assert [row["hits"] for row in rows] == [25]


async def test_ended_windows_are_pruned(
    db: Engine, frozen_clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await hit("scim:old")
    frozen_clock.advance(seconds=120)
    monkeypatch.setattr(ratelimit, "PRUNE_SHARE", 1.0)
    await hit("scim:new")
    slots = [row["slot"] for row in await RateCounter.select(RateCounter.slot)]
    assert [slot.split("@")[0] for slot in slots if slot.startswith("scim:")] == ["scim:new"]

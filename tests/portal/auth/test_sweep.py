"""Session timeouts with a controllable clock: the request path, the bulk sweep and the preview rule agree.

Each case is checked three ways: ``sessions.expiry_reason`` (the rule), a request through the app (which
revokes on the spot), and ``sweep.sweep_expired`` (set-based SQL, on SQLite's text timestamps and on
PostgreSQL's timestamptz).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from piccolo.engine.base import Engine

from policy import Feature
from portal.auth import sessions, sweep
from portal.auth.sessions import Timeouts
from portal.core.settings import Settings
from portal.core.tables import Organization, Session
from tests.conftest import FrozenClock
from tests.factories import make_member, make_org, make_user

HTML = {"accept": "text/html"}
MINUTE, HOUR, DAY = 60, 3600, 86400


async def set_policy(org: dict[str, Any], source: str, absolute: int | None, idle: int | None) -> None:
    await Organization.update(
        {
            Organization.session_policy_source: source,
            Organization.session_absolute_timeout: absolute,
            Organization.session_idle_timeout: idle,
        }
    ).where(Organization.id == org["id"])


async def session_aged(
    user: dict[str, Any], org: dict[str, Any] | None, now: datetime, age: float, idle: float
) -> tuple[str, str]:
    """A session created ``age`` seconds before ``now`` and last seen ``idle`` seconds before it."""
    token, session_id = await sessions.create_session(
        user["id"], auth_method="test", organization_id=org["id"] if org else None
    )
    await Session.update(
        {
            Session.created_at: now - timedelta(seconds=age),
            Session.authenticated_at: now - timedelta(seconds=age),
            Session.last_seen_at: now - timedelta(seconds=idle),
        }
    ).where(Session.id == session_id)
    return token, session_id


async def reason_of(session_id: str) -> str | None:
    row = await Session.select(Session.revoke_reason).where(Session.id == session_id).first()
    assert row is not None
    reason: str | None = row["revoke_reason"]
    return reason


# App defaults in every case: absolute 7 days, idle 1 day.
CASES = [
    # id, organization policy (source, absolute, idle) or None for no active organization, age, idle, reason
    ("app-defaults-fresh", ("application", None, None), 6 * DAY, 23 * HOUR, None),
    ("app-defaults-absolute", ("application", None, None), 7 * DAY + 1, 0, "absolute"),
    ("app-defaults-idle", ("application", None, None), 2 * DAY, DAY + 1, "idle"),
    ("no-organization-uses-app-defaults", None, 7 * DAY, 0, "absolute"),
    ("org-stricter-absolute", ("custom", 8 * HOUR, DAY), 8 * HOUR + 1, 0, "absolute"),
    ("org-stricter-idle", ("custom", 7 * DAY, 30 * MINUTE), 2 * HOUR, 31 * MINUTE, "idle"),
    ("org-stricter-not-yet", ("custom", 8 * HOUR, 30 * MINUTE), 8 * HOUR - 1, 29 * MINUTE, None),
    ("app-stricter-than-org-absolute", ("custom", 30 * DAY, 7 * DAY), 8 * DAY, 0, "absolute"),
    ("app-stricter-than-org-idle", ("custom", 30 * DAY, 7 * DAY), 3 * DAY, 2 * DAY, "idle"),
    ("mixed-org-absolute-app-idle", ("custom", 2 * DAY, 3 * DAY), 2 * DAY - 10, DAY + 5, "idle"),
    ("both-run-out-absolute-wins", ("custom", HOUR, 30 * MINUTE), 2 * HOUR, 2 * HOUR, "absolute"),
    ("exactly-at-absolute", ("custom", HOUR, 30 * MINUTE), HOUR, 0, "absolute"),
    ("exactly-at-idle", ("custom", HOUR, 30 * MINUTE), 40 * MINUTE, 30 * MINUTE, "idle"),
    ("a-microsecond-before", ("custom", HOUR, 30 * MINUTE), HOUR - 1e-6, 30 * MINUTE - 1e-6, None),
    ("custom-values-ignored-without-custom", ("application", 10 * MINUTE, 5 * MINUTE), HOUR, HOUR, None),
    ("custom-zero-means-app-default", ("custom", 0, 0), 6 * DAY, 20 * HOUR, None),
    ("custom-null-idle-means-app-default", ("custom", HOUR, None), 50 * MINUTE, 20 * HOUR, None),
]


@pytest.fixture(params=[123456, 0], ids=["now-with-microseconds", "now-on-the-second"])
def clock_now(frozen_clock: FrozenClock, request: pytest.FixtureRequest) -> FrozenClock:
    # SQLite stores "…:00+00:00" without a fraction when it is zero: both shapes must compare correctly.
    frozen_clock.now = frozen_clock.now.replace(microsecond=request.param)
    return frozen_clock


@pytest.mark.parametrize(
    ("org_policy", "age", "idle", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_timeout_rules_agree_on_request_sweep_and_preview(
    client: httpx.AsyncClient,
    settings: Settings,
    clock_now: FrozenClock,
    org_policy: tuple[str, int | None, int | None] | None,
    age: float,
    idle: float,
    expected: str | None,
) -> None:
    now = clock_now.now
    org = await make_org(features=[Feature.SESSION_POLICY])
    if org_policy is not None:
        await set_policy(org, *org_policy)
    user = await make_user()
    await make_member(org, user, ["admin"])
    active_org = org if org_policy is not None else None
    organization = await Organization.select().where(Organization.id == org["id"]).first()
    timeouts = sessions.effective_timeouts(settings, organization if active_org else None)

    # The rule itself.
    probe = {"created_at": now - timedelta(seconds=age), "last_seen_at": now - timedelta(seconds=idle)}
    assert sessions.expiry_reason(probe, timeouts, now) == expected

    # The bulk sweep (with a session that must survive next to it).
    _, swept = await session_aged(user, active_org, now, age, idle)
    _, fresh = await session_aged(user, active_org, now, 60, 60)
    if active_org is not None:
        # The preview's count uses the same filter, per organization.
        before = Timeouts(absolute=10 * 365 * DAY, idle=10 * 365 * DAY)
        ending = await _count_ending(org["id"], before, timeouts, now)
        assert ending == (1 if expected else 0)
    result = await sweep.sweep_expired(settings, now)
    assert await reason_of(swept) == expected
    assert await reason_of(fresh) is None
    assert result.revoked == (1 if expected else 0)
    assert (result.absolute, result.idle) == ((expected == "absolute") * 1, (expected == "idle") * 1)

    # A request with a session in the same state.
    token, by_request = await session_aged(user, active_org, now, age, idle)
    client.cookies.set(sessions.cookie_name(settings), token)
    response = await client.get("/ui/", headers=HTML)
    assert await reason_of(by_request) == expected
    if expected:
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
    else:
        assert response.status_code in {200, 303}
        assert not response.headers.get("location", "").startswith("/login")


async def _count_ending(org_id: str, before: Timeouts, after: Timeouts, now: datetime) -> int:
    from widgets.session_policy import service

    return await service.count_ending(org_id, before, after, now)


async def test_sweep_is_batched_idempotent_and_leaves_revoked_sessions_alone(
    settings: Settings, db: Engine, frozen_clock: FrozenClock
) -> None:
    now = frozen_clock.now
    org = await make_org()
    await set_policy(org, "custom", 2 * HOUR, HOUR)
    user = await make_user()
    absolute = [await session_aged(user, org, now, 3 * HOUR, 0) for _ in range(13)]
    idle = [await session_aged(user, org, now, 90 * MINUTE, 70 * MINUTE) for _ in range(12)]
    fresh = [await session_aged(user, org, now, 30 * MINUTE, 5 * MINUTE) for _ in range(3)]
    _, logged_out = await session_aged(user, org, now, 3 * HOUR, 3 * HOUR)
    await sessions.revoke(logged_out, "logout")
    revoked_before = await Session.select(Session.revoked_at).where(Session.id == logged_out).first()

    result = await sweep.sweep_expired(settings, now, batch_size=10)
    assert (result.absolute, result.idle) == (13, 12)
    assert result.batches == 3  # 10 + 10 + 5
    assert {await reason_of(s) for _, s in absolute} == {"absolute"}
    assert {await reason_of(s) for _, s in idle} == {"idle"}
    assert {await reason_of(s) for _, s in fresh} == {None}
    assert await reason_of(logged_out) == "logout"
    assert await Session.select(Session.revoked_at).where(Session.id == logged_out).first() == revoked_before
    revoked_at = await Session.select(Session.revoked_at).where(Session.revoke_reason == "idle")
    assert {row["revoked_at"] for row in revoked_at} == {now}

    again = await sweep.sweep_expired(settings, now, batch_size=10)
    assert (again.revoked, again.batches) == (0, 1)
    with pytest.raises(ValueError, match="batch_size"):
        await sweep.sweep_expired(settings, now, batch_size=0)


async def test_sweep_for_one_organization_leaves_the_others(
    settings: Settings, db: Engine, frozen_clock: FrozenClock
) -> None:
    now = frozen_clock.now
    acme, globex = await make_org(), await make_org()
    user = await make_user()
    _, in_acme = await session_aged(user, acme, now, 8 * DAY, 0)
    _, in_globex = await session_aged(user, globex, now, 8 * DAY, 0)
    _, no_org = await session_aged(user, None, now, 8 * DAY, 0)
    result = await sweep.sweep_expired(settings, now, organization_id=acme["id"])
    assert result.revoked == 1
    assert [await reason_of(s) for s in (in_acme, in_globex, no_org)] == ["absolute", None, None]


async def test_app_defaults_from_settings_apply(
    settings: Settings, db: Engine, frozen_clock: FrozenClock
) -> None:
    now = frozen_clock.now
    strict = msgspec.structs.replace(
        settings, session_absolute_timeout=HOUR, session_idle_timeout=10 * MINUTE
    )
    org = await make_org()
    await set_policy(org, "custom", 2 * HOUR, 30 * MINUTE)  # looser than these defaults: ignored
    user = await make_user()
    _, absolute = await session_aged(user, org, now, HOUR, 0)
    _, idle = await session_aged(user, None, now, 30 * MINUTE, 10 * MINUTE)
    _, fresh = await session_aged(user, org, now, 59 * MINUTE, 9 * MINUTE)
    await sweep.sweep_expired(strict, now)
    assert [await reason_of(s) for s in (absolute, idle, fresh)] == ["absolute", "idle", None]


async def test_random_sessions_match_the_rule_one_by_one(
    settings: Settings, db: Engine, frozen_clock: FrozenClock
) -> None:
    """200 sessions with random ages across random policies: the SQL decides each exactly as Python does."""
    rng = random.Random(20261122)
    now = frozen_clock.now
    user = await make_user()
    orgs: list[dict[str, Any] | None] = [None]
    for _ in range(5):
        org = await make_org()
        absolute = rng.choice([None, 0, 10 * MINUTE, 3 * HOUR, 2 * DAY, 30 * DAY])
        idle = rng.choice([None, 0, 5 * MINUTE, HOUR, 36 * HOUR, 9 * DAY])
        await set_policy(org, rng.choice(["custom", "custom", "application"]), absolute, idle)
        orgs.append(await Organization.select().where(Organization.id == org["id"]).first())
    expected: dict[str, str | None] = {}
    for _ in range(200):
        org = rng.choice(orgs)
        age = rng.uniform(0, 9 * DAY)
        idle_for = rng.uniform(0, age)
        # Some sessions sit exactly on a boundary, to the microsecond.
        if rng.random() < 0.2:
            age = float(rng.choice([10 * MINUTE, 3 * HOUR, 2 * DAY, 7 * DAY]))
        _, session_id = await session_aged(user, org, now, age, idle_for)
        row = await Session.select().where(Session.id == session_id).first()
        assert row is not None
        expected[session_id] = sessions.expiry_reason(row, sessions.effective_timeouts(settings, org), now)
    result = await sweep.sweep_expired(settings, now, batch_size=7)
    actual = {
        row["id"]: row["revoke_reason"] for row in await Session.select(Session.id, Session.revoke_reason)
    }
    assert actual == expected
    assert result.revoked == sum(1 for reason in expected.values() if reason)
    assert 0 < result.revoked < 200


def test_sweep_result_counts() -> None:
    assert sweep.SweepResult(absolute=2, idle=3, batches=1).revoked == 5
    assert sweep.expired(Timeouts(absolute=60, idle=60), datetime(2026, 1, 1, tzinfo=UTC)) is not None

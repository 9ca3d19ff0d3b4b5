"""Delivery: Standard Webhooks requests verified by the independent ``standardwebhooks`` package, retries on
the schedule, the delivery log, leases, replay, disabling a failing endpoint, the SSRF rule."""

from __future__ import annotations

import base64
from collections import Counter
from datetime import timedelta

import msgspec
import pytest
from piccolo.engine.base import Engine

from portal.core import db as portal_db
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from portal.webhooks import delivery, service, signing
from tests.conftest import FrozenClock
from tests.factories import make_member, make_org, make_user
from tests.portal.webhooks.conftest import deliveries, events_of, subscribe
from tests.portal.webhooks.receiver import Receiver, receiver

pytestmark = pytest.mark.db


async def test_every_delivery_verifies_with_standardwebhooks(
    db: Engine, settings: Settings, hook: Receiver
) -> None:
    endpoint = await subscribe(settings, hook)
    org = await make_org("acme")
    await make_member(org, await make_user("alice@acme.test"), ["admin"])
    assert await delivery.dispatch_due(settings) == {"delivered": 3, "failed": 0}
    assert len(hook.requests) == 3
    for received in hook.requests:
        assert received.error == "", received.error
        assert received.answered == 200
        assert received.message_id.startswith("msg_")
        assert received.headers["webhook-signature"].startswith("v1,")
        assert received.headers["content-type"] == "application/json"
        assert set(received.verified) == {"type", "timestamp", "data"}
    assert {r.verified["type"] for r in hook.requests} == {
        "organization.created",
        "user.created",
        "membership.created",
    }
    assert {r.message_id for r in hook.requests} == {e["id"] for e in await events_of()}
    # A secret that is not the endpoint's fails verification: the signature really depends on it.
    from standardwebhooks import Webhook, WebhookVerificationError

    other = signing.new_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(hook.requests[0].body, hook.requests[0].headers)
    rows = await WebhookAttempt.select().order_by(WebhookAttempt.id)
    assert [(r["status"], r["status_code"], r["error"]) for r in rows] == [("delivered", 200, "")] * 3
    assert all(r["duration_ms"] >= 0 for r in rows)
    stored = (
        await WebhookEndpoint.select(WebhookEndpoint.secret).where(WebhookEndpoint.id == endpoint.id).first()
    )
    assert stored["secret"].startswith("v1.") and hook.secret not in stored["secret"]  # sealed, not plain


def test_secrets_are_whsec_base64_of_32_bytes() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32


async def test_a_receiver_failing_three_times_gets_exactly_one_success_per_event(
    db: Engine, settings: Settings, frozen_clock: FrozenClock
) -> None:
    with receiver(fail_first=3) as flaky:
        await subscribe(settings, flaky)
        org = await make_org("acme")
        for _ in range(4):
            await make_member(org, await make_user())
        owed = {e["id"] for e in await events_of()}
        assert len(owed) == 9  # the organization, 4 users, 4 memberships
        outcomes = [await delivery.dispatch_due(settings)]
        for wait in delivery.RETRY_SCHEDULE[:3]:
            assert await delivery.dispatch_due(settings) == {"delivered": 0, "failed": 0}  # not due yet
            frozen_clock.advance(seconds=wait)
            outcomes.append(await delivery.dispatch_due(settings))
        assert outcomes == [{"delivered": 0, "failed": 9}] * 3 + [{"delivered": 9, "failed": 0}]
        assert flaky.successes() == Counter(dict.fromkeys(owed, 1))
        assert Counter(r.message_id for r in flaky.requests) == Counter(dict.fromkeys(owed, 4))
        assert all(r.error == "" for r in flaky.requests)  # every attempt was signed correctly
        frozen_clock.advance(days=2)
        assert await delivery.dispatch_due(settings) == {"delivered": 0, "failed": 0}  # nothing sent twice
    rows = await deliveries()
    assert {(r["status"], r["attempts"], r["next_attempt_at"]) for r in rows} == {("delivered", 4, None)}
    [endpoint] = await service.list_endpoints()
    [first, *_] = await service.list_deliveries(endpoint.id)
    assert [(a.status, a.status_code, a.error) for a in first.log] == [("failed", 500, "HTTP 500")] * 3 + [
        ("delivered", 200, "")
    ]
    assert endpoint.failing_since is None and endpoint.enabled


def test_the_retry_schedule_goes_from_seconds_up_to_a_day_and_outlives_five_days() -> None:
    waits = [delivery.backoff(n) for n in range(1, len(delivery.RETRY_SCHEDULE) + 2)]
    assert waits[0] == timedelta(seconds=5)
    assert max(w for w in waits if w) == timedelta(days=1)
    assert waits[-1] is None  # given up after the last retry
    assert sum((w for w in waits if w), timedelta()) > delivery.DISABLE_AFTER


async def test_an_endpoint_failing_for_five_days_is_disabled_and_audited(
    db: Engine, settings: Settings, frozen_clock: FrozenClock
) -> None:
    with receiver(status=503) as down, receiver() as up:
        broken = await subscribe(settings, down)
        await subscribe(settings, up)
        await make_org("acme")
        start = frozen_clock.now
        attempts = 0
        while (await service.get_endpoint(broken.id)).enabled:
            await delivery.dispatch_due(settings)
            attempts += 1
            assert attempts < 30, "never disabled"
            frozen_clock.advance(
                seconds=delivery.RETRY_SCHEDULE[min(attempts, len(delivery.RETRY_SCHEDULE)) - 1]
            )
        disabled = await service.get_endpoint(broken.id)
        assert disabled.disabled_reason == "failing"
        assert disabled.disabled_at is not None and disabled.disabled_at - start >= timedelta(days=5)
        [audit] = (
            await AuditEvent.select()
            .where(AuditEvent.action == "webhook.endpoint_disabled")
            .output(load_json=True)
        )
        assert audit["target"] == broken.id and audit["details"]["url"] == down.url
        [owed] = await WebhookDelivery.select().where(WebhookDelivery.endpoint == broken.id)
        assert owed["status"] == "failed" and owed["next_attempt_at"] is None
        sent = len(down.requests)
        await make_org("globex")  # a new event: nothing for the disabled endpoint, the other still gets it
        await delivery.dispatch_due(settings)
        assert len(down.requests) == sent
        assert [r.verified["type"] for r in up.requests] == ["organization.created"] * 2
        # Enabled again by its owner: it receives new events.
        async with portal_db.write_transaction():
            again = await service.update_endpoint(settings, broken.id, enabled=True)
        assert again.enabled and again.failing_since is None and again.disabled_reason is None


async def test_replay_sends_the_same_event_again_with_the_same_id(
    db: Engine, settings: Settings, hook: Receiver
) -> None:
    await subscribe(settings, hook)
    await make_org("acme")
    await delivery.dispatch_due(settings)
    [event] = await events_of()
    async with portal_db.write_transaction():
        [delivery_id] = await service.replay_event(event["id"])
    assert await delivery.dispatch_due(settings) == {"delivered": 1, "failed": 0}
    assert hook.successes() == Counter({event["id"]: 2})
    assert hook.requests[0].body == hook.requests[1].body
    [row] = await service.list_event_deliveries(event["id"])
    assert row.id == delivery_id and row.status == "delivered" and len(row.log) == 2
    with pytest.raises(service.NotFound):
        await service.replay_event("msg_nope")


async def test_a_leased_delivery_is_not_claimed_twice_until_its_lease_runs_out(
    db: Engine, settings: Settings, hook: Receiver, frozen_clock: FrozenClock
) -> None:
    await subscribe(settings, hook)
    await make_org("acme")
    first = await delivery.claim(settings)
    assert len(first) == 1
    assert await delivery.claim(settings) == []  # held by the first claimer (a process that may have died)
    frozen_clock.advance(seconds=delivery.lease_time(settings).total_seconds() + 1)
    second = await delivery.claim(settings)
    assert [r["id"] for r in second] == [first[0]["id"]]
    await delivery.send(settings, second)
    assert len(hook.requests) == 1


async def test_a_slow_receiver_times_out_and_is_retried(db: Engine, settings: Settings) -> None:
    quick = msgspec.structs.replace(settings, webhook_timeout=1)
    with receiver(delay=1.5) as slow:
        await subscribe(quick, slow)
        await make_org("acme")
        assert await delivery.dispatch_due(quick) == {"delivered": 0, "failed": 1}
    [row] = await deliveries()
    assert row["status"] == "pending" and row["last_error"] == "no answer within 1 s"
    assert row["last_status_code"] is None and row["next_attempt_at"] is not None


# --- the SSRF rule ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8080/hook", "The URL must start with https://."),
        ("https://127.0.0.1/hook", "127.0.0.1 resolves to 127.0.0.1, a private or local address"),
        ("https://localhost/hook", "a private or local address"),
        ("https://10.1.2.3/hook", "10.1.2.3 resolves to 10.1.2.3, a private or local address"),
        ("https://169.254.169.254/latest/meta-data", "a private or local address"),
        ("https://[::1]/hook", "a private or local address"),
        ("https://user:pw@example.com/hook", "must not contain a user name or password"),
        ("ftp://example.com/hook", "The URL must start with https://."),
        ("not a url", "The URL must start with https://."),
    ],
)
async def test_endpoint_urls_follow_the_ssrf_rule(
    db: Engine, settings: Settings, url: str, message: str
) -> None:
    strict = msgspec.structs.replace(settings, webhook_allow_private_addresses=False)
    with pytest.raises(InvalidInput) as refused:
        await service.create_endpoint(strict, url, event_types=["user.created"])
    assert refused.value.field == "url"
    assert message in refused.value.message
    assert await WebhookEndpoint.count() == 0


async def test_a_url_refused_at_send_time_is_a_logged_failure_and_nothing_is_sent(
    db: Engine, settings: Settings, hook: Receiver
) -> None:
    await subscribe(settings, hook)  # allowed when saved (a lab)...
    await make_org("acme")
    strict = msgspec.structs.replace(settings, webhook_allow_private_addresses=False)
    assert await delivery.dispatch_due(strict) == {"delivered": 0, "failed": 1}  # ...not any more
    assert hook.requests == []
    [row] = await deliveries()
    assert row["last_error"].startswith("refused: The URL must start with https://")


async def test_bad_event_types_descriptions_and_organizations_are_refused_by_field(
    db: Engine, settings: Settings, hook: Receiver
) -> None:
    for kwargs, field in (
        ({"event_types": ["user.exploded"]}, "event_types"),
        ({"description": "x" * 201}, "description"),
        ({"organization_id": "org_nope"}, "organization_id"),
    ):
        with pytest.raises(InvalidInput) as refused:
            await service.create_endpoint(settings, hook.url, **kwargs)  # type: ignore[arg-type]
        assert refused.value.field == field
    assert await WebhookEndpoint.count() == 0
    endpoint, _ = await service.create_endpoint(settings, hook.url, event_types=["*"])
    assert endpoint.event_types == ()  # every type


async def test_organization_scoped_calls_never_see_another_organizations_endpoints(
    db: Engine, settings: Settings, hook: Receiver
) -> None:
    acme, globex = await make_org("acme"), await make_org("globex")
    theirs = await subscribe(settings, hook, organization_id=globex["id"])
    app_wide = await subscribe(settings, hook)
    await make_member(globex, await make_user())
    [event] = await events_of("membership.created")
    assert await service.list_endpoints(organization_id=acme["id"]) == []
    for endpoint_id in (theirs.id, app_wide.id):
        with pytest.raises(service.NotFound):
            await service.get_endpoint(endpoint_id, organization_id=acme["id"])
        with pytest.raises(service.NotFound):
            await service.list_deliveries(endpoint_id, organization_id=acme["id"])
        with pytest.raises(service.NotFound):
            await service.update_endpoint(settings, endpoint_id, organization_id=acme["id"], enabled=False)
        with pytest.raises(service.NotFound):
            await service.delete_endpoint(endpoint_id, organization_id=acme["id"])
    with pytest.raises(service.NotFound):
        await service.replay_event(event["id"], organization_id=acme["id"])
    assert await WebhookEndpoint.count() == 2
    assert [e.id for e in await service.list_endpoints(organization_id=globex["id"])] == [theirs.id]


async def test_purge_keeps_recent_events_and_events_still_owed(
    db: Engine, settings: Settings, frozen_clock: FrozenClock
) -> None:
    from portal.jobs import InlineQueue

    with receiver(status=500) as down, receiver() as up:
        await subscribe(settings, up)
        await make_org("delivered")
        await delivery.dispatch_due(settings)
        broken = await subscribe(settings, down, "organization.created")
        owed = await make_org("owed")  # still pending for the failing endpoint
        await delivery.dispatch_due(settings)
        frozen_clock.advance(days=29)
        recent = await make_org("recent")
        frozen_clock.advance(days=2)
        context = InlineQueue(settings, run_crons=False).context
        assert await delivery.purge(context) == {"events": 1}
    assert {e["organization_id"] for e in await events_of()} == {owed["id"], recent["id"]}
    pending = await WebhookDelivery.select().where(WebhookDelivery.status == "pending")
    assert (broken.id, owed["id"]) in {
        (r["endpoint"], e["organization_id"])
        for r in pending
        for e in await events_of()
        if e["id"] == r["event"]
    }


async def test_disabling_an_endpoint_gives_up_what_it_was_owed(
    db: Engine, settings: Settings, hook: Receiver
) -> None:
    endpoint = await subscribe(settings, hook)
    await make_org("acme")
    async with portal_db.write_transaction():
        await service.update_endpoint(settings, endpoint.id, enabled=False)
    [row] = await deliveries()
    assert (row["status"], row["next_attempt_at"], row["last_error"]) == (
        "failed",
        None,
        "the endpoint was disabled",
    )
    assert await delivery.dispatch_due(settings) == {"delivered": 0, "failed": 0}
    await make_org("globex")  # nothing is kept for it while disabled
    assert len(await deliveries()) == 1
    assert hook.requests == []
    [audit] = (
        await AuditEvent.select()
        .where(AuditEvent.action == "webhook.endpoint_updated")
        .output(load_json=True)
    )
    assert audit["details"]["fields"] == ["disabled_at", "disabled_reason", "enabled", "failing_since"]


async def test_secrets_rotate_reseals_endpoint_secrets_and_deliveries_still_verify(
    db: Engine, settings: Settings, hook: Receiver
) -> None:
    from portal.core import crypto

    await subscribe(settings, hook)
    rotated = msgspec.structs.replace(
        settings, secret_key="a-brand-new-secret-key-" + "y" * 32, previous_secret_keys=[settings.secret_key]
    )
    counts = await crypto.reseal_all(rotated)
    assert counts["webhook_endpoint.secret"] == 1
    only_new = msgspec.structs.replace(rotated, previous_secret_keys=[])  # the old key is gone
    await make_org("acme")
    assert await delivery.dispatch_due(only_new) == {"delivered": 1, "failed": 0}
    assert hook.requests[0].error == ""  # signed with the same whsec_ secret as before the rotation

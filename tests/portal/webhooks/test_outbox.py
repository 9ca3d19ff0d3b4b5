"""The outbox: each change writes its event (and a delivery per subscribed endpoint) in its own
transaction; a rolled-back change writes none; the request's deliveries are sent right after it."""

from __future__ import annotations

import httpx
import pytest
from litestar import Litestar
from piccolo.engine.base import Engine

from portal.auth import accounts, sessions
from portal.core import db as portal_db
from portal.core.settings import Settings
from portal.core.tables import Membership, Organization, WebhookDelivery, WebhookEvent
from portal.webhooks import delivery, events
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in
from tests.portal.webhooks.conftest import deliveries, events_of, subscribe
from tests.portal.webhooks.receiver import Receiver

pytestmark = pytest.mark.db
HTML = {"accept": "text/html"}


async def test_factories_changes_write_their_events_with_the_data_the_app_needs(db: Engine) -> None:
    org = await make_org("acme")
    user = await make_user("alice@acme.test")
    await make_member(org, user, ["admin"])
    found = {e["type"]: e for e in await events_of()}
    assert set(found) == {"organization.created", "user.created", "membership.created"}
    assert found["organization.created"]["organization_id"] == org["id"]
    assert found["user.created"]["data"]["target"] == user["id"]
    assert found["user.created"]["data"]["email"] == "alice@acme.test"
    membership = found["membership.created"]
    assert membership["organization_id"] == org["id"]
    assert membership["data"] | {} == {
        "organization_id": org["id"],
        "actor_id": None,
        "target": user["id"],
        "roles": ["admin"],
        "source": "portal",
        "email": "alice@acme.test",
    }
    assert all(e["id"].startswith("msg_") for e in found.values())


async def test_a_rolled_back_change_emits_nothing(db: Engine, settings: Settings, hook: Receiver) -> None:
    await subscribe(settings, hook)
    org = await make_org("acme")
    before_events, before_deliveries = len(await events_of()), len(await deliveries())

    async def change_that_fails() -> None:
        async with portal_db.write_transaction():
            await accounts.create_user("carol@acme.test")
            await make_member(org, await accounts.find_user("carol@acme.test"), ["member"])
            assert len(await events_of()) == before_events + 2  # visible inside the transaction...
            raise RuntimeError("the change fails after its writes")

    with pytest.raises(RuntimeError):
        await change_that_fails()
    # ...and gone with it: no user, no membership, no event, no delivery, nothing sent.
    assert await accounts.find_user("carol@acme.test") is None
    assert await Membership.count() == 0
    assert len(await events_of()) == before_events
    assert len(await deliveries()) == before_deliveries
    assert await delivery.dispatch_due(settings) == {"delivered": before_deliveries, "failed": 0}
    assert {r.event["type"] for r in hook.requests} == {"organization.created"}


async def test_a_committed_change_writes_one_delivery_per_subscribed_endpoint(
    db: Engine, settings: Settings, hook: Receiver
) -> None:
    acme, globex = await make_org("acme"), await make_org("globex")
    every = await subscribe(settings, hook)
    members_only = await subscribe(settings, hook, "membership.created")
    acme_only = await subscribe(settings, hook, organization_id=acme["id"])
    await make_member(globex, await make_user())
    event = (await events_of("membership.created"))[-1]
    rows = await WebhookDelivery.select().where(WebhookDelivery.event == event["id"])
    assert sorted(r["endpoint"] for r in rows) == sorted([every.id, members_only.id])  # not acme's
    assert all(r["status"] == "pending" and r["key"] == f"{event['id']} {r['endpoint']}" for r in rows)
    await make_member(acme, await make_user())
    event = (await events_of("membership.created"))[-1]
    rows = await WebhookDelivery.select().where(WebhookDelivery.event == event["id"])
    assert sorted(r["endpoint"] for r in rows) == sorted([every.id, members_only.id, acme_only.id])


async def test_session_ends_emit_user_logout_and_a_failed_revoke_emits_none(db: Engine) -> None:
    user = await make_user()
    _token, session_id = await sessions.create_session(user["id"], auth_method="test")

    async def revoke_then_fail() -> None:
        async with portal_db.write_transaction():
            await sessions.revoke(session_id, "logout")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await revoke_then_fail()
    assert await events_of("user.logout") == []
    await sessions.revoke(session_id, "logout")
    await sessions.revoke(session_id, "logout")  # already ended: nothing more
    [logout] = await events_of("user.logout")
    assert logout["data"] == {
        "user_id": user["id"],
        "session_id": session_id,
        "reason": "logout",
        "organization_id": None,
    }


async def test_domain_checks_emit_domain_verified_and_failed_in_bulk(db: Engine, settings: Settings) -> None:
    from portal.core.tables import Domain
    from widgets.domains import service as domains
    from widgets.domains.schemas import CheckReport
    from widgets.domains.verification import Finding, Lookup

    acme, globex = await make_org("acme"), await make_org("globex")
    rows = []
    for org in (acme, globex):
        row = Domain(organization=org["id"], domain="acme.test", status="pending", verification_token="t")
        await row.save()
        rows.append(row)
    checked = await Domain.select(*domains.CHECK_COLUMNS).order_by(Domain.created_at)
    found = Lookup(Finding.FOUND)
    await domains.record_results([(checked[0], found), (checked[1], found)], CheckReport())
    [verified] = await events_of("domain.verified")
    [failed] = await events_of("domain.failed")
    assert verified["organization_id"] == acme["id"] and verified["data"]["domain"] == "acme.test"
    assert failed["organization_id"] == globex["id"] and failed["data"]["target"] == rows[1].id


async def test_every_audited_mapping_names_a_known_event_type() -> None:
    assert set(events.AUDIT_EVENT_TYPES.values()) <= set(events.EVENT_TYPES)
    with pytest.raises(ValueError, match="unknown webhook event type"):
        await events.emit("user.exploded", organization_id=None, data={})


async def test_a_request_sends_its_deliveries_right_after_it_without_the_cron(
    app: Litestar, client: httpx.AsyncClient, settings: Settings, hook: Receiver
) -> None:
    acme = await make_org("acme", "Acme")
    alice = await make_user("alice@acme.test")
    await make_member(acme, alice, ["admin"])
    await subscribe(app.state.settings, hook, "organization.updated")
    await sign_in(client, alice, acme)
    token = await csrf_token(client, "/ui/")
    response = await client.post(
        "/ui/organization/settings",
        data={"_csrf_token": token, "name": "acme", "display_name": "Acme Corp", "allowed_email_domains": ""},
        headers=HTML,
    )
    assert response.status_code == 303
    await app.state.jobs.drain()  # the job queued after the response (inline queue: no Redis here)
    [received] = hook.wait(1)
    assert received.error == ""
    assert received.verified["type"] == "organization.updated"
    assert received.verified["data"]["organization_id"] == acme["id"]
    assert received.verified["data"]["changes"] == {"display_name": {"old": "Acme", "new": "Acme Corp"}}
    [row] = await deliveries()
    assert row["status"] == "delivered" and row["attempts"] == 1 and row["last_status_code"] == 200
    assert (await Organization.select(Organization.display_name).first())["display_name"] == "Acme Corp"


async def test_an_event_without_endpoints_is_kept_but_owes_nothing(db: Engine) -> None:
    await make_org("acme")
    assert await WebhookEvent.count() == 1
    assert await WebhookDelivery.count() == 0

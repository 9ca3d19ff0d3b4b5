"""Every way a portal session ends reaches the apps: sign-out, Security's revoke and revoke-others, the
session-policy sweep, member removal. Each records a session_end (portal.auth.sessions.ended); the job plans one
back-channel delivery per client that got tokens in that session and sends it, retrying failures."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc import jwt

from policy import PolicyEngine
from portal.auth import sweep
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import OidcGrant, OidcLogoutDelivery, Session, SessionEnd
from portal.oidc import clients, logout, tokens
from tests.conftest import FrozenClock
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in
from tests.portal.oidc.peers import Listener, backchannel_listener
from tests.portal.oidc.test_hostile import CALLBACK, basic, get_code
from widgets.members import service as members
from widgets.security import service as security

pytestmark = pytest.mark.db


@pytest.fixture
def listener() -> Iterator[Listener]:
    with backchannel_listener() as found:
        yield found


@pytest.fixture
async def signed_in(client: httpx.AsyncClient, listener: Listener, policy: PolicyEngine) -> dict[str, Any]:
    """Alice (admin of Acme, with a second session elsewhere) signed in; the CRM got tokens in this session."""
    org = await make_org()
    alice = await make_user()
    await make_member(org, alice, roles=["admin"])
    await sign_in(client, alice, org)
    app, secret = await clients.create("CRM", redirect_uris=[CALLBACK], backchannel_logout_uri=listener.url)
    quiet, quiet_secret = await clients.create("No back-channel", redirect_uris=[CALLBACK])
    assert secret and quiet_secret
    for who, key in ((app, secret), (quiet, quiet_secret)):
        code = await get_code(client, who.id)
        response = await client.post(
            "/oauth/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
            headers=basic(who.id, key),
        )
        assert response.status_code == 200
    grant = await OidcGrant.select().where(OidcGrant.client == app.id).first()
    assert grant is not None
    tokens_ = response.json()
    return {"org": org, "alice": alice, "app": app, "sid": grant["session_id"], "tokens": tokens_}


async def deliver(settings: Settings) -> dict[str, int]:
    planned = await logout.plan_deliveries()
    return {"planned": planned, **await logout.deliver_due(settings)}


async def assert_logout_token(
    settings: Settings, listener: Listener, sid: str, user_id: str, client_id: str
) -> None:
    received = listener.wait(1, timeout=5)
    assert len(received) == 1
    claims = jwt.decode(received[0], await tokens.own_keys(settings, received[0])).claims
    assert claims["sid"] == sid and claims["sub"] == user_id and claims["aud"] == client_id
    assert claims["iss"] == tokens.issuer(settings) and claims["jti"] and "nonce" not in claims
    assert claims["events"] == {logout.EVENT: {}}


async def test_portal_sign_out(
    client: httpx.AsyncClient, signed_in: dict[str, Any], listener: Listener, settings: Settings
) -> None:
    token = await csrf_token(client, "/ui/")
    assert (await client.post("/logout", data={"_csrf_token": token})).status_code == 303
    assert await SessionEnd.count() == 1
    # Only the client with a back-channel URI gets a delivery; the grants of the session are all revoked.
    assert await deliver(settings) == {"planned": 1, "delivered": 1, "retry": 0, "failed": 0}
    await assert_logout_token(
        settings, listener, signed_in["sid"], signed_in["alice"]["id"], signed_in["app"].id
    )
    assert await OidcGrant.count().where(OidcGrant.revoked_at.is_null()) == 0
    # Idempotent: a second run sends nothing again.
    assert await deliver(settings) == {"planned": 0, "delivered": 0, "retry": 0, "failed": 0}


async def test_security_revoke_and_revoke_others(
    signed_in: dict[str, Any], listener: Listener, settings: Settings
) -> None:
    alice = signed_in["alice"]
    await security.revoke_other_sessions(alice["id"], "ses_elsewhere", organization_id=None, ip="")
    assert await deliver(settings) == {"planned": 1, "delivered": 1, "retry": 0, "failed": 0}
    await assert_logout_token(settings, listener, signed_in["sid"], alice["id"], signed_in["app"].id)


async def test_security_revoke_one(signed_in: dict[str, Any], listener: Listener, settings: Settings) -> None:
    await security.revoke_session(signed_in["alice"]["id"], signed_in["sid"], organization_id=None, ip="")
    assert (await deliver(settings))["delivered"] == 1
    await assert_logout_token(
        settings, listener, signed_in["sid"], signed_in["alice"]["id"], signed_in["app"].id
    )


async def test_sweep_of_expired_sessions(
    signed_in: dict[str, Any], listener: Listener, settings: Settings
) -> None:
    later = clock.utcnow() + timedelta(seconds=settings.session_idle_timeout + 60)
    result = await sweep.sweep_expired(settings, later)
    assert result.revoked == 1
    assert (await SessionEnd.select(SessionEnd.reason).first()) == {"reason": "idle"}
    assert (await deliver(settings))["delivered"] == 1
    await assert_logout_token(
        settings, listener, signed_in["sid"], signed_in["alice"]["id"], signed_in["app"].id
    )


async def test_member_removal(
    signed_in: dict[str, Any], listener: Listener, settings: Settings, policy: PolicyEngine
) -> None:
    org = signed_in["org"]
    admin = await make_user()
    await make_member(org, admin, roles=["admin"])
    membership_id = await _membership(org["id"], signed_in["alice"]["id"])
    actor = members.Actor(user_id=admin["id"], organization_id=org["id"], roles=("admin",), ip="")
    await members.remove(policy, actor, membership_id)
    assert (await deliver(settings))["delivered"] == 1
    await assert_logout_token(
        settings, listener, signed_in["sid"], signed_in["alice"]["id"], signed_in["app"].id
    )
    # The portal session lives on (they may belong to other organizations); that organization's tokens died.
    assert (await Session.select(Session.revoked_at).where(Session.id == signed_in["sid"]).first()) == {
        "revoked_at": None
    }
    assert await OidcGrant.count().where(OidcGrant.revoked_at.is_null()) == 0


async def _membership(org_id: str, user_id: str) -> str:
    from portal.core.tables import Membership

    row = (
        await Membership.select(Membership.id)
        .where((Membership.organization == org_id) & (Membership.user == user_id))
        .first()
    )
    assert row is not None
    return str(row["id"])


async def test_failed_delivery_is_retried_and_never_blocks(
    client: httpx.AsyncClient,
    signed_in: dict[str, Any],
    listener: Listener,
    settings: Settings,
    frozen_clock: FrozenClock,
) -> None:
    listener.status = 500
    token = await csrf_token(client, "/ui/")
    # The sign-out answers at once although the app's endpoint fails: delivery is the job's business.
    assert (await client.post("/logout", data={"_csrf_token": token})).status_code == 303
    assert await deliver(settings) == {"planned": 1, "delivered": 0, "retry": 1, "failed": 0}
    row = await OidcLogoutDelivery.select().first()
    assert row["attempts"] == 1 and row["last_error"] == "HTTP 500" and row["delivered_at"] is None
    # Not due yet: nothing is sent before the backoff.
    assert await deliver(settings) == {"planned": 0, "delivered": 0, "retry": 0, "failed": 0}
    listener.status = 200
    frozen_clock.advance(seconds=6)
    assert await deliver(settings) == {"planned": 0, "delivered": 1, "retry": 0, "failed": 0}
    assert listener.hits == 2
    await assert_logout_token(
        settings, listener, signed_in["sid"], signed_in["alice"]["id"], signed_in["app"].id
    )


async def test_purge_keeps_recent_records(
    client: httpx.AsyncClient, signed_in: dict[str, Any], settings: Settings, frozen_clock: FrozenClock
) -> None:
    from portal.jobs import InlineQueue

    token = await csrf_token(client, "/ui/")
    await client.post("/logout", data={"_csrf_token": token})
    await deliver(settings)
    context = InlineQueue(settings, run_crons=False).context
    assert await logout.purge(context) == {"session_ends": 0, "deliveries": 0, "grants": 0}
    frozen_clock.advance(days=8)
    assert await logout.purge(context) == {"session_ends": 1, "deliveries": 1, "grants": 2}
    assert await OidcGrant.count() == 0 and await SessionEnd.count() == 0

"""The widgets' own changes, made through HTTP, are announced: each request's event reaches the receiver,
signed, right after it (no cron), with the data the app needs."""

from __future__ import annotations

import httpx
import pytest
from litestar import Litestar

from portal.auth import sessions
from portal.core.tables import Invitation, Membership
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in
from tests.portal.webhooks.conftest import subscribe
from tests.portal.webhooks.receiver import Receiver

pytestmark = pytest.mark.db
HTML = {"accept": "text/html"}
MEMBERS = "/ui/organization/members"


async def test_members_profile_and_security_changes_are_announced(
    app: Litestar, client: httpx.AsyncClient, hook: Receiver
) -> None:
    acme = await make_org("acme", "Acme")
    alice = await make_user("alice@acme.test")
    bob = await make_user("bob@acme.test")
    await make_member(acme, alice, ["admin"])
    await make_member(acme, bob, ["member"])
    await subscribe(app.state.settings, hook)  # every type
    await sign_in(client, alice, acme)
    _other, other_session = await sessions.create_session(
        alice["id"], auth_method="test", organization_id=acme["id"]
    )

    async def post(path: str, data: dict[str, str]) -> None:
        token = await csrf_token(client, "/ui/")
        response = await client.post(path, data={"_csrf_token": token, **data}, headers=HTML)
        assert response.status_code == 303, (path, response.status_code, response.text[:500])
        await app.state.jobs.drain()

    await post(f"{MEMBERS}/invitations", {"emails": "dan@acme.test", "roles": "member"})
    [invitation] = await Invitation.select(Invitation.id)
    await post(f"{MEMBERS}/invitations/{invitation['id']}/revoke", {})
    [bob_member] = await Membership.select(Membership.id).where(Membership.user == bob["id"])
    await post(f"{MEMBERS}/{bob_member['id']}/roles", {"roles": "admin"})
    await post(f"{MEMBERS}/{bob_member['id']}/remove", {"confirm": "yes"})
    await post(
        "/ui/account/profile", {"given_name": "Alice", "family_name": "Admin", "display_name": "Alice A."}
    )
    await post(f"/ui/account/security/sessions/{other_session}/revoke", {})

    assert all(r.error == "" for r in hook.requests)
    got = [(r.verified["type"], r.verified["data"]) for r in hook.requests]
    types = [t for t, _ in got]
    # One job per delivery: a request's two events (revoke: user.logout, session.revoked) may arrive either way.
    assert sorted(types) == sorted(
        [
            "invitation.created",
            "invitation.revoked",
            "membership.updated",
            "membership.deleted",  # bob had no session in acme, so no user.logout for him
            "user.updated",
            "user.logout",
            "session.revoked",
        ]
    )
    data = dict(got)
    assert data["invitation.created"]["target"] == "dan@acme.test"
    assert (
        data["membership.updated"]["new"] == ["admin"] and data["membership.updated"]["target"] == bob["id"]
    )
    assert data["membership.deleted"]["email"] == "bob@acme.test"
    assert data["membership.deleted"]["organization_id"] == acme["id"]
    assert data["user.updated"]["target"] == alice["id"]
    assert data["session.revoked"]["target"] == other_session
    logout = [d for t, d in got if t == "user.logout" and d["session_id"] == other_session]
    assert logout == [
        {"user_id": alice["id"], "session_id": other_session, "reason": "user", "organization_id": None}
    ]

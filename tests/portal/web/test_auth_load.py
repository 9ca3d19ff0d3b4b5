"""The per-request load (``auth.load_auth``): two hand-written queries that must read what piccolo reads."""

from __future__ import annotations

from typing import Any

from piccolo.engine.base import Engine

from policy import Feature
from portal.auth import sessions
from portal.core.settings import Settings
from portal.core.tables import Membership, Organization, Session, User
from portal.web.guard import load_auth
from tests.factories import make_member, make_org, make_user


async def _row(table: Any, row_id: str) -> dict[str, Any]:
    row = await table.select().where(table.id == row_id).first().output(load_json=True)
    assert row is not None
    return dict(row)


async def test_the_joined_read_equals_piccolo_reads_of_each_table(settings: Settings, db: Engine) -> None:
    acme = await make_org("acme", "Acme", features=[Feature.SSO, Feature.SCIM])
    await Organization.update(
        {Organization.allowed_email_domains: ["acme.test"], Organization.metadata: {"tier": "gold"}}
    ).where(Organization.id == acme["id"])
    user = await make_user("ada@acme.test", given_name="Ada", family_name="Lovelace")
    await make_member(acme, user, ["admin", "member"])
    token, session_id = await sessions.create_session(
        user["id"], auth_method="test", organization_id=acme["id"], ip="10.0.0.1", user_agent="UA"
    )

    resolved = await sessions.resolve(settings, token)

    assert resolved.session == await _row(Session, session_id)
    assert resolved.user == await _row(User, user["id"])
    assert resolved.organization == await _row(Organization, acme["id"])
    assert resolved.organization is not None
    assert sorted(resolved.organization["features"]) == ["scim", "sso"]
    assert resolved.organization["metadata"] == {"tier": "gold"}
    assert resolved.user is not None and resolved.user["email_verified"] is True


async def test_auth_lists_active_memberships_in_name_order_with_roles_of_the_active_one(
    settings: Settings, db: Engine
) -> None:
    user = await make_user("bo@x.test")
    zeta, alpha, pending = await make_org("zeta", "Zeta"), await make_org("alpha", "Alpha"), await make_org()
    await make_member(zeta, user, ["admin"])
    await make_member(alpha, user, ["member"])
    invited = await make_member(pending, user, ["admin"])
    await Membership.update({Membership.status: "invited"}).where(Membership.id == invited["id"])
    token, _ = await sessions.create_session(user["id"], auth_method="test", organization_id=zeta["id"])

    auth, expired = await load_auth(settings, token)

    assert expired is None and auth is not None
    assert [o["name"] for o in auth.organizations] == ["alpha", "zeta"]
    assert auth.organizations[0] == {"id": alpha["id"], "name": "alpha", "display_name": "Alpha"}
    assert auth.roles == ("admin",)
    assert auth.organization_id == zeta["id"]


async def test_no_session_no_organization_and_not_a_member(settings: Settings, db: Engine) -> None:
    user = await make_user()
    other = await make_org()
    assert await load_auth(settings, None) == (None, None)
    assert await load_auth(settings, "ses_nothing") == (None, None)
    token, _ = await sessions.create_session(user["id"], auth_method="test")
    auth, _ = await load_auth(settings, token)
    assert auth is not None and auth.organization is None and auth.roles is None
    token, _ = await sessions.create_session(user["id"], auth_method="test", organization_id=other["id"])
    auth, _ = await load_auth(settings, token)
    # Active organization set, but no membership there: the guard's not_member.
    assert auth is not None and auth.organization_id == other["id"] and auth.roles is None
    assert auth.features == frozenset()


async def test_a_revoked_session_loads_nothing(settings: Settings, db: Engine) -> None:
    user = await make_user()
    token, session_id = await sessions.create_session(user["id"], auth_method="test")
    await sessions.revoke(session_id, "logout")
    # Nothing loads; the reason it ended comes back for the login page.
    assert await load_auth(settings, token) == (None, "logout")

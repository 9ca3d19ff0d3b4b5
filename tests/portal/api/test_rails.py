"""The widgets' safety rails hold through the API (it calls the same services), and keys are what the CLI
says: shown once, hashed at rest, scoped, revocable."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from piccolo.engine.base import Engine

from portal.api import keys
from portal.cli import main
from portal.core import ids
from portal.core.tables import ApiKey, AuditEvent, Domain, Invitation, Membership, Organization, Session
from tests.conftest import POLICY_DIR
from tests.factories import make_member, make_org, make_user
from tests.portal.api.support import call, make_key

pytestmark = pytest.mark.db


async def test_the_last_administrator_keeps_their_roles(client: httpx.AsyncClient, db: Engine) -> None:
    key_id, key = await make_key()
    org = await make_org()
    admin = await make_member(org, roles=["admin"])
    base = f"/organizations/{org['id']}/memberships/{admin['id']}"
    demote = await call(client, "PATCH", base, key, json={"roles": ["member"]})
    assert demote.status_code == 409
    assert "last active member who can change roles" in demote.json()["errors"][0]["message"]
    remove = await call(client, "DELETE", base, key)
    assert remove.status_code == 409
    row = (
        await Membership.select(Membership.roles)
        .where(Membership.id == admin["id"])
        .first()
        .output(load_json=True)
    )
    assert row["roles"] == ["admin"]
    # With a second administrator the change goes through, audited with the key as actor.
    await make_member(org, roles=["admin"])
    assert (await call(client, "PATCH", base, key, json={"roles": ["member"]})).status_code == 200
    event = (
        await AuditEvent.select()
        .where(AuditEvent.action == "member.roles_changed")
        .first()
        .output(load_json=True)
    )
    assert event["actor_id"] == key_id and event["details"]["new"] == ["member"]


async def test_roles_must_be_defined_in_the_policy(client: httpx.AsyncClient, db: Engine) -> None:
    _id, key = await make_key()
    org = await make_org()
    member = await make_member(org, roles=["member"])
    url = f"/organizations/{org['id']}"
    response = await call(
        client, "PATCH", f"{url}/memberships/{member['id']}", key, json={"roles": ["owner"]}
    )
    assert response.status_code == 422
    assert (
        response.json()["errors"][0]["field"] == "roles"
        and "'owner'" in response.json()["errors"][0]["message"]
    )
    user = await make_user()
    response = await call(
        client, "POST", f"{url}/memberships", key, json={"user_id": user["id"], "roles": ["root"]}
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "roles"
    response = await call(
        client, "POST", f"{url}/invitations", key, json={"emails": ["a@b.test"], "roles": ["root"]}
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "roles"
    assert not await Invitation.exists().where(Invitation.email == "a@b.test")
    response = await call(
        client, "POST", f"{url}/memberships", key, json={"user_id": "usr_nobody", "roles": ["member"]}
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "user_id"
    response = await call(
        client, "POST", f"{url}/memberships", key, json={"user_id": member["user"], "roles": ["member"]}
    )
    assert response.status_code == 422 and "already a member" in response.json()["detail"]


async def test_one_owner_per_verified_domain(client: httpx.AsyncClient, db: Engine) -> None:
    _id, key = await make_key()
    owner = await make_org(features=["domain_verification"])
    other = await make_org(features=["domain_verification"])
    await Domain(
        organization=owner["id"], domain="claimed.example.com", status="verified",
        verification_token="t", verified_domain="claimed.example.com",
    ).save()  # fmt: skip
    response = await call(
        client, "POST", f"/organizations/{other['id']}/domains", key, json={"domain": "Claimed.Example.com."}
    )
    assert response.status_code == 409
    assert "verified by another organization" in response.json()["errors"][0]["message"]
    assert not await Domain.exists().where(Domain.organization == other["id"])
    response = await call(
        client, "POST", f"/organizations/{other['id']}/domains", key, json={"domain": "gmail.com"}
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "domain"


async def test_invitations_are_mailed_and_stored_hashed(
    client: httpx.AsyncClient, db: Engine, settings: object
) -> None:
    key_id, key = await make_key()
    org = await make_org("acme-mail", "Acme Mail")
    response = await call(
        client, "POST", f"/organizations/{org['id']}/invitations", key,
        json={"emails": ["New.Person@Example.test"], "roles": ["member"]},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.json()["undelivered"] == []
    row = await Invitation.select().where(Invitation.email == "new.person@example.test").first()
    assert row["invited_by"] is None and len(row["token_hash"]) == 64
    outbox = Path(settings.data_dir) / "outbox"  # type: ignore[attr-defined]
    mails = [
        email.message_from_string(p.read_text(), policy=email.policy.default).get_body().get_content()  # type: ignore[union-attr]
        for p in outbox.glob("*.eml")
    ]
    assert (
        len(mails) == 1
        and "Acme Mail invited you to join Acme Mail on Portal with the role member" in mails[0]
    )
    assert "/invitations/accept?token=portal_inv_" in mails[0]
    event = await AuditEvent.select().where(AuditEvent.action == "member.invited").first()
    assert event["actor_id"] == key_id
    again = await call(
        client, "POST", f"/organizations/{org['id']}/invitations", key,
        json={"emails": ["new.person@example.test"], "roles": ["member"]},
    )  # fmt: skip
    assert again.status_code == 422 and "Already invited" in again.json()["errors"][0]["message"]


async def test_organization_fields_and_session_policy(client: httpx.AsyncClient, db: Engine) -> None:
    key_id, key = await make_key()
    response = await call(
        client, "POST", "/organizations", key,
        json={
            "name": "full", "display_name": "Full Org", "external_id": "crm-42", "features": ["sso", "scim"],
            "allowed_email_domains": ["Full.Example.com"], "metadata": {"plan": "pro"},
            "session_policy": {"source": "custom", "absolute_timeout": 7200, "idle_timeout": 1800},
        },
    )  # fmt: skip
    assert response.status_code == 201, response.text
    org = response.json()
    assert org["allowed_email_domains"] == ["full.example.com"] and org["features"] == ["scim", "sso"]
    assert org["session_policy"] == {"source": "custom", "absolute_timeout": 7200, "idle_timeout": 1800}
    assert org["external_id"] == "crm-42" and org["metadata"] == {"plan": "pro"}
    stored = await Organization.select().where(Organization.id == org["id"]).first().output(load_json=True)
    assert stored["session_absolute_timeout"] == 7200 and stored["metadata"] == {"plan": "pro"}
    actions = {
        e["action"] for e in await AuditEvent.select(AuditEvent.action).where(AuditEvent.actor_id == key_id)
    }
    assert {
        "organization.created",
        "settings.updated",
        "session_policy.updated",
        "organization.updated",
    } <= actions
    found = (await call(client, "GET", "/organizations?external_id=crm-42", key)).json()["data"]
    assert [o["id"] for o in found] == [org["id"]]
    # Bad session policy values name the API's field; nothing changes.
    bad = await call(
        client, "PATCH", f"/organizations/{org['id']}", key,
        json={"session_policy": {"source": "custom", "absolute_timeout": 3600, "idle_timeout": 7200}},
    )  # fmt: skip
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "session_policy.idle_timeout"
    odd = await call(
        client, "PATCH", f"/organizations/{org['id']}", key,
        json={"session_policy": {"source": "custom", "absolute_timeout": 3601}},
    )  # fmt: skip
    assert odd.status_code == 422 and odd.json()["errors"][0]["field"] == "session_policy.absolute_timeout"
    taken = await call(client, "POST", "/organizations", key, json={"name": "other", "external_id": "crm-42"})
    assert taken.status_code == 422 and taken.json()["errors"][0]["field"] == "external_id"
    cleared = await call(
        client, "PATCH", f"/organizations/{org['id']}", key, json={"external_id": "", "features": []}
    )
    assert cleared.json()["external_id"] is None and cleared.json()["features"] == []


async def test_sessions_revoke_and_switch(client: httpx.AsyncClient, db: Engine) -> None:
    from portal.auth import sessions

    key_id, key = await make_key()
    first, second = await make_org(), await make_org()
    user = await make_user()
    await make_member(first, user)
    await make_member(second, user)
    stranger_org = await make_org()
    _token, session_id = await sessions.create_session(
        user["id"], auth_method="test", organization_id=first["id"]
    )
    url = f"/sessions/{session_id}/active-organization"
    switched = await call(client, "PUT", url, key, json={"organization_id": second["id"]})
    assert switched.status_code == 200 and switched.json()["active_organization_id"] == second["id"]
    refused = await call(client, "PUT", url, key, json={"organization_id": stranger_org["id"]})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "organization_id"
    row = await Session.select(Session.active_organization).where(Session.id == session_id).first()
    assert row["active_organization"] == second["id"]
    assert (await call(client, "DELETE", f"/sessions/{session_id}", key)).status_code == 204
    assert (await call(client, "DELETE", f"/sessions/{session_id}", key)).status_code == 404
    listed = (await call(client, "GET", f"/sessions?user_id={user['id']}", key)).json()
    assert listed["data"] == []
    event = await AuditEvent.select().where(AuditEvent.action == "session.revoked").first()
    assert event["actor_id"] == key_id


# --- keys and the CLI --------------------------------------------------------------------------------


def test_api_key_commands(database_url: str, tmp_path: Path, db: Engine) -> None:
    env = {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
    }

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.output

    code, out = run(
        "api-key", "create", "CRM backend", "--scope", "organizations:read", "--scope", "memberships:write"
    )
    assert code == 0, out
    key_id = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("id: "))
    clear = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("key: "))
    assert clear.startswith("portal_sk_") and len(clear) > 50 and "not shown again" in out
    code, out = run("api-key", "list")
    assert code == 0 and key_id in out and clear[: keys.SHOWN] in out and clear not in out and "active" in out
    code, out = run("api-key", "create", "Bad", "--scope", "organizations:admin")
    assert code == 1 and "unknown scope 'organizations:admin'" in out
    code, out = run("api-key", "create", "Nowhere", "--scope", "users:read", "--org", "no-such-org")
    assert code == 1 and "no organization" in out
    code, out = run("api-key", "revoke", key_id)
    assert code == 0 and f"revoked {key_id}" in out
    code, out = run("api-key", "revoke", key_id)
    assert code == 1 and "no live API key" in out
    code, out = run("api-key", "list")
    assert "revoked" in out


async def test_keys_are_hashed_at_rest_and_bound_keys_record_their_organization(db: Engine) -> None:
    org = await make_org()
    row, clear = await keys.create("bound", ["users:read"], org["name"])
    stored = await ApiKey.select().where(ApiKey.id == row["id"]).first()
    assert stored["token_hash"] == ids.hash_secret(clear) and clear not in str(stored)
    assert stored["organization_id"] == org["id"] and stored["prefix"] == clear[: keys.SHOWN]
    assert (await keys.authenticate(clear))["id"] == row["id"]  # type: ignore[index]
    assert await keys.authenticate(clear[:-1] + ("A" if clear[-1] != "A" else "B")) is None
    assert await keys.authenticate("portal_sk_") is None
    await keys.revoke(row["id"])
    assert await keys.authenticate(clear) is None


async def test_member_list_filters(client: httpx.AsyncClient, db: Engine) -> None:
    _id, key = await make_key()
    org = await make_org()
    admin = await make_member(org, await make_user("ada@example.test", given_name="Ada"), roles=["admin"])
    await make_member(org, await make_user("bob@example.test", given_name="Bob"), roles=["member"])
    url = f"/organizations/{org['id']}/memberships"
    admins = (await call(client, "GET", f"{url}?role=admin", key)).json()["data"]
    assert [m["id"] for m in admins] == [admin["id"]]
    found = (await call(client, "GET", f"{url}?q=bo", key)).json()["data"]
    assert [m["email"] for m in found] == ["bob@example.test"]
    unknown = await call(client, "GET", f"{url}?role=owner", key)
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "role"


async def test_a_unique_violation_from_a_race_is_409_not_500(
    client: httpx.AsyncClient, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _id, key = await make_key()
    await make_org("taken")
    real = Organization.exists

    class Racing:
        # The check before the insert sees no organization "taken" (another request's is not committed yet).
        def where(self, *args: object) -> Racing:
            return self

        def __await__(self):  # type: ignore[no-untyped-def]
            async def no() -> bool:
                return False

            return no().__await__()

    monkeypatch.setattr(Organization, "exists", classmethod(lambda cls: Racing()))
    response = await call(client, "POST", "/organizations", key, json={"name": "taken"})
    monkeypatch.setattr(Organization, "exists", real)
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await Organization.count().where(Organization.name == "taken") == 1

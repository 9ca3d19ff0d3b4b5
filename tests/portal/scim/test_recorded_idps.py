"""Recorded provisioning sequences of Okta and Microsoft Entra ID (``fixtures/*.json``), replayed against the
SCIM server; the test checks what each step stored: the account, the membership, its roles and sessions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from portal.auth import sessions
from portal.core.tables import (
    AuditEvent,
    Domain,
    Membership,
    ScimGroupMember,
    ScimUser,
    Session,
    SessionEnd,
    User,
)
from portal.scim import service
from tests.factories import make_user
from tests.portal.scim.conftest import Scim

FIXTURES = Path(__file__).parent / "fixtures"


class Replay:
    """Sends a recording's steps in order, substituting ids captured from earlier responses."""

    def __init__(self, scim: Scim, name: str) -> None:
        self.scim = scim
        self.steps: list[dict[str, Any]] = json.loads((FIXTURES / f"{name}.json").read_text())["steps"]
        self.position = 0
        self.ids: dict[str, str] = {}
        self.responses: dict[str, Any] = {}

    def _fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"\{(\w+)\}", lambda m: self.ids.get(m.group(1), m.group(0)), value)
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        return value

    async def until(self, name: str) -> Any:
        """Run the steps up to and including ``name``; return that step's JSON (or None)."""
        while True:
            step = self.steps[self.position]
            self.position += 1
            path = self.scim.base + self._fill(step["path"])
            kwargs: dict[str, Any] = {"headers": self.scim.headers()}
            if "body" in step:
                kwargs["content"] = json.dumps(self._fill(step["body"]))
            response = await self.scim.http.request(step["method"], path, **kwargs)
            assert response.status_code == step["status"], (
                f"{step['name']}: {response.status_code} {response.text}"
            )
            if response.content:
                assert response.headers["content-type"].startswith("application/scim+json")
            body = response.json() if response.content else None
            for key, field in step.get("capture", {}).items():
                self.ids[key] = body[field]
            self.responses[step["name"]] = body
            if step["name"] == name:
                return body


async def _verify_domain(org: dict[str, Any], domain: str) -> None:
    await Domain(
        organization=org["id"],
        domain=domain,
        status="verified",
        verification_token="t",
        verified_domain=domain,
    ).save()


async def _membership(org: dict[str, Any], email: str) -> dict[str, Any] | None:
    user = await User.select().where(User.email == email).first()
    if user is None:
        return None
    return await (
        Membership.select()
        .where((Membership.organization == org["id"]) & (Membership.user == user["id"]))
        .first()
        .output(load_json=True)
    )


async def _actions(org: dict[str, Any]) -> list[str]:
    rows = (
        await AuditEvent.select(AuditEvent.action)
        .where(AuditEvent.organization_id == org["id"])
        .order_by(AuditEvent.at)
    )
    return [r["action"] for r in rows if r["action"].split(".")[1] in {"user", "group"}]


async def test_okta_provisioning(scim: Scim) -> None:
    await _verify_domain(scim.org, "example.com")
    replay = Replay(scim, "okta")
    looked_up = await replay.until("lookup")
    assert looked_up["totalResults"] == 0 and looked_up["Resources"] == []

    created = await replay.until("create")
    assert created["userName"] == "dade.murphy@example.com" and "password" not in created
    user = await User.select().where(User.email == "dade.murphy@example.com").first()
    assert (user["given_name"], user["family_name"], user["display_name"]) == (
        "Dade",
        "Murphy",
        "Dade Murphy",
    )
    member = await _membership(scim.org, "dade.murphy@example.com")
    assert member is not None
    assert (member["source"], member["status"], member["roles"]) == ("scim", "active", ["member"])
    stored = await ScimUser.select().where(ScimUser.id == created["id"]).first().output(load_json=True)
    assert "password" not in stored["resource"] and stored["membership_id"] == member["id"]

    await replay.until("update")
    user = await User.select().where(User.email == "dade.murphy@example.com").first()
    assert (user["given_name"], user["family_name"]) == ("Crash", "Override")  # example.com is verified

    group = await replay.until("group_create")
    directory = await service.get_directory(scim.directory.id)
    assert directory is not None
    await service.set_group_roles(directory, group["id"], ["admin"], ["admin", "member"], actor_id=None)

    added = await replay.until("group_add")
    assert [m["value"] for m in added["members"]] == [created["id"]]
    assert (await _membership(scim.org, "dade.murphy@example.com"))["roles"] == ["admin", "member"]  # type: ignore[index]

    renamed = await replay.until("group_rename")
    assert renamed["displayName"] == "Hackers" and len(renamed["members"]) == 1

    removed = await replay.until("group_remove")
    assert "members" not in removed
    assert await ScimGroupMember.count().where(ScimGroupMember.group == group["id"]) == 0
    assert (await _membership(scim.org, "dade.murphy@example.com"))["roles"] == ["member"]  # type: ignore[index]

    # A session in the organization, and one in another: deactivation ends the first at once.
    _, here = await sessions.create_session(user["id"], auth_method="test", organization_id=scim.org["id"])
    _, elsewhere = await sessions.create_session(user["id"], auth_method="test", organization_id=None)
    deactivated = await replay.until("deactivate")
    assert deactivated["active"] is False
    assert (await _membership(scim.org, "dade.murphy@example.com"))["status"] == "suspended"  # type: ignore[index]
    session = await Session.select().where(Session.id == here).first()
    assert session["active_organization"] is None
    ends = await SessionEnd.select().where(SessionEnd.session_id == here)
    assert [(e["reason"], e["organization_id"]) for e in ends] == [("suspended", scim.org["id"])]
    assert not await SessionEnd.exists().where(SessionEnd.session_id == elsewhere)

    await replay.until("reactivate")
    assert (await _membership(scim.org, "dade.murphy@example.com"))["status"] == "active"  # type: ignore[index]
    await replay.until("group_delete")
    assert await _actions(scim.org) == [
        "scim.user.created",
        "scim.user.updated",
        "scim.group.created",
        "scim.group.updated",
        "scim.group.updated",
        "scim.group.updated",
        "scim.user.deactivated",
        "scim.user.updated",
        "scim.group.deleted",
    ]


async def test_entra_provisioning(scim: Scim) -> None:
    await _verify_domain(scim.org, "example.com")
    replay = Replay(scim, "entra")
    await replay.until("lookup")
    created = await replay.until("create")
    primary = "test_user_fd0ea19b-0777-472c-9f96-4f70d2226f2e@example.com"
    ext = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    assert created["schemas"] == ["urn:ietf:params:scim:schemas:core:2.0:User", ext]
    assert created[ext] == {"department": "Engineering"}
    member = await _membership(scim.org, primary)
    assert member is not None and member["source"] == "scim"

    found = await replay.until("lookup_again")
    assert found["totalResults"] == 1 and found["Resources"][0]["id"] == created["id"]

    updated = await replay.until("update")
    assert updated["emails"] == [{"primary": True, "type": "work", "value": "updatedEmail@example.com"}]
    assert updated["name"]["familyName"] == "updatedFamilyName"
    assert updated[ext] == {"department": "Sales", "manager": {"value": created["id"]}}
    # Both addresses are in the verified domain: the account follows the directory.
    account = await User.select().where(User.id == member["user"]).first()
    assert (account["email"], account["family_name"]) == ("updatedemail@example.com", "updatedFamilyName")

    await replay.until("group_lookup")
    group = await replay.until("group_create")
    assert (
        group["displayName"] == "displayName"
        and group["externalId"] == "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159"
    )
    await replay.until("group_add")
    assert await ScimGroupMember.count().where(ScimGroupMember.group == group["id"]) == 1
    await replay.until("group_member_check")
    await replay.until("group_remove")
    assert await ScimGroupMember.count().where(ScimGroupMember.group == group["id"]) == 0

    disabled = await replay.until("disable")
    assert disabled["active"] is False
    assert (await Membership.select().where(Membership.id == member["id"]).first())["status"] == "suspended"

    await replay.until("delete")
    assert not await Membership.exists().where(Membership.id == member["id"])
    assert not await ScimUser.exists().where(ScimUser.id == created["id"])
    assert await User.exists().where(User.id == member["user"])  # the person's account stays
    assert (await _actions(scim.org))[-2:] == ["scim.user.deactivated", "scim.user.deleted"]


async def test_unverified_domain_leaves_the_account_alone(scim: Scim) -> None:
    """Without a verified domain, the directory's names and email stay on its own row and membership."""
    person = await make_user("carol@elsewhere.test", given_name="Carol", family_name="Real")
    replay_body = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "carol@elsewhere.test",
        "name": {"givenName": "Mallory", "familyName": "Fake"},
        "emails": [{"value": "carol@elsewhere.test", "primary": True}],
    }
    created = (await scim.post("/Users", replay_body)).json()
    account = await User.select().where(User.id == person["id"]).first()
    assert (account["given_name"], account["family_name"]) == ("Carol", "Real")
    member = await _membership(scim.org, "carol@elsewhere.test")
    assert member is not None and member["source"] == "scim"
    response = await scim.patch(
        f"/Users/{created['id']}",
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                {"op": "replace", "path": "emails[primary eq true].value", "value": "mallory@evil.test"}
            ],
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["emails"][0]["value"] == "mallory@evil.test"
    account = await User.select().where(User.id == person["id"]).first()
    assert account["email"] == "carol@elsewhere.test"
    stored = await ScimUser.select().where(ScimUser.id == created["id"]).first()
    assert stored["user_id"] == person["id"]


async def test_deactivation_locks_the_member_out_at_once_and_reactivation_restores(scim: Scim) -> None:
    """What the person sees: the organization's pages open before, are refused right after ``active: false``."""
    from tests.factories import sign_in

    created = (await scim.post("/Users", {**_body("frank@acme.test")})).json()
    person = await User.select().where(User.email == "frank@acme.test").first()
    browser = scim.http
    await sign_in(browser, person, scim.org)
    json_accept = {"accept": "application/json"}
    assert (await browser.get("/ui/organization/members", headers=json_accept)).status_code == 200
    deactivate = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
    }
    assert (await scim.patch(f"/Users/{created['id']}", deactivate)).status_code == 200
    refused = await browser.get("/ui/organization/members", headers=json_accept)
    assert refused.status_code == 403
    assert refused.json()["error"]["reason"] == "not_member"
    reactivate = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "value": {"active": True}}],
    }
    assert (await scim.patch(f"/Users/{created['id']}", reactivate)).status_code == 200
    await sign_in(browser, person, scim.org)
    assert (await browser.get("/ui/organization/members", headers=json_accept)).status_code == 200
    assert (await scim.delete(f"/Users/{created['id']}")).status_code == 204
    gone = await browser.get("/ui/organization/members", headers=json_accept)
    assert gone.status_code == 403


def _body(email: str) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": email,
        "emails": [{"value": email, "primary": True}],
    }

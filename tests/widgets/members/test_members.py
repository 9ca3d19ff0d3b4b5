"""The Members widget: the list, inviting, resending and revoking, changing roles, removing, safety rails."""

from __future__ import annotations

import asyncio
import html
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar

from portal.core import clock, ids
from portal.core.tables import Invitation, InvitationReplacedToken, Membership, Session
from tests.factories import csrf_token, make_invitation, make_member, make_user, sign_in
from tests.mailserver import Mailbox
from tests.widgets.members.support import (
    ACCEPT,
    HTML,
    JSON,
    URL,
    accept_link,
    audit_events,
    field_error,
    flash_after,
    invitation_emails,
    invitations,
    member_names,
    memberships,
    path_of,
    post,
    snapshot,
    token_of,
)

#: The confirmation page's button.
CONFIRM = {"confirm": "yes"}


def submission_id(page: str) -> str:
    match = re.search(r'name="submission_id" value="([^"]+)"', page)
    assert match
    return match.group(1)


async def invite(
    client: httpx.AsyncClient,
    emails: str,
    roles: Any = "member",
    headers: dict[str, str] = HTML,
    **extra: str,
) -> httpx.Response:
    return await post(
        client, f"{URL}/invitations", {"emails": emails, "roles": roles, **extra}, headers=headers
    )


# --- the list -----------------------------------------------------------------------------------------------


async def test_list_shows_members_and_pending_invitations(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    assert member_names(page.text) == ["Alice Admin", "Bob Builder", "ghost@acme.test", "Lee Lead"]
    assert invitation_emails(page.text) == ["ivy@acme.test"]
    # Columns: name, email, roles, status, source, joined.
    row = page.text.split(f'id="member-{world["m"]["bob"]["id"]}"', 1)[1].split("</tr>", 1)[0]
    assert "bob@acme.test" in row
    assert '<span class="badge role">member</span>' in row
    assert "Active" in row and "portal" in row
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT', row)
    invited = page.text.split(f'id="invitation-{world["acme_invitation"]}"', 1)[1].split("</tr>", 1)[0]
    assert "Invited" in invited and "Alice Admin" in invited
    # Globex's people never show.
    assert "gus@globex.test" not in page.text and "gil@globex.test" not in page.text
    # The admin's forms.
    assert 'action="/ui/organization/members/invitations"' in page.text
    assert f'action="/ui/organization/members/invitations/{world["acme_invitation"]}/resend"' in page.text


async def test_read_only_member_sees_no_forms(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["bob"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    assert "Invite people" not in page.text
    assert "/resend" not in page.text and "/revoke" not in page.text
    detail = await client.get(f"{URL}/{world['m']['alice']['id']}", headers=HTML)
    assert detail.status_code == 200
    assert "alice@acme.test" in detail.text
    assert "/roles" not in detail.text and "/remove" not in detail.text
    assert "Save roles" not in detail.text


async def test_member_page_for_an_admin_has_the_forms(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(f"{URL}/{world['m']['bob']['id']}", headers=HTML)
    assert page.status_code == 200
    assert f'action="/ui/organization/members/{world["m"]["bob"]["id"]}/roles"' in page.text
    assert re.search(
        r'<input type="checkbox" id="role-member" name="roles" value="member" checked>', page.text
    )
    assert re.search(r'<input type="checkbox" id="role-admin" name="roles" value="admin">', page.text)
    assert "Remove Bob Builder" in page.text


async def test_search_by_name_family_name_email_and_accents(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    emile = await make_user("ez@acme.test", given_name="Émile", family_name="Zola")
    await make_member(world["acme"], emile)
    await sign_in(client, world["alice"], world["acme"])

    async def names(**params: str) -> list[str]:
        page = await client.get(URL, params=params, headers=HTML)
        assert page.status_code == 200
        return member_names(page.text)

    assert await names(q="bo") == ["Bob Builder"]
    assert await names(q="BUILD") == ["Bob Builder"]  # family name, any case
    assert await names(q="emile") == ["Émile Zola"]  # accents folded
    assert await names(q="Émi") == ["Émile Zola"]
    assert await names(q="ez@") == ["Émile Zola"]  # email prefix
    assert await names(q="ghost@acme") == ["ghost@acme.test"]
    assert await names(q="acme.test") == []  # prefixes only, not the middle
    assert await names(q="%") == [] and await names(q="_") == []
    assert await names(q="a", role="admin") == ["Alice Admin"]
    assert await names(role="lead") == ["Lee Lead"]
    assert await names(role="nonsense") == await names()  # an unknown role is no filter


async def test_status_filter(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    active = await client.get(URL, params={"status": "active"}, headers=HTML)
    assert invitation_emails(active.text) == []
    assert "Bob Builder" in member_names(active.text)
    invited = await client.get(URL, params={"status": "invited"}, headers=HTML)
    assert invitation_emails(invited.text) == ["ivy@acme.test"]
    assert 'id="members-heading"' not in invited.text
    searched = await client.get(URL, params={"status": "invited", "q": "zz"}, headers=HTML)
    assert invitation_emails(searched.text) == []
    assert "No pending invitations match." in searched.text


# --- inviting -----------------------------------------------------------------------------------------------


async def test_invite_sends_a_link_and_stores_only_its_hash(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await invite(client, "  New.Person@Acme.TEST ", ["admin", "member"])
    assert await flash_after(client, response) == "ok: Invitation sent to new.person@acme.test."
    [message] = mail.to("new.person@acme.test")
    assert message["Subject"] == "Acme Cloud: Alice Admin invited you to join Acme"
    link = accept_link(mail, "new.person@acme.test")
    assert link.startswith("http://localhost:8000/invitations/accept?token=portal_inv_")
    token = token_of(link)
    row = next(r for r in await invitations(world["acme"]["id"]) if r["email"] == "new.person@acme.test")
    assert row["token_hash"] == ids.hash_secret(token)
    assert token not in str(row)
    assert row["roles"] == ["admin", "member"]
    assert row["invited_by"] == world["alice"]["id"]
    ttl = row["expires_at"] - clock.utcnow()
    assert timedelta(days=6, hours=23) < ttl <= timedelta(days=7)
    [event] = await audit_events("member.invited")
    assert event["actor_id"] == world["alice"]["id"]
    assert event["target"] == "new.person@acme.test"
    assert event["organization_id"] == world["acme"]["id"]
    assert event["details"]["invitation_id"] == row["id"]
    assert event["details"]["roles"] == ["admin", "member"]
    assert token not in str(await audit_events("member.invited"))


async def test_invite_several_at_once(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await invite(client, "a1@acme.test, a2@acme.test\nA1@acme.test;a3@acme.test")
    assert await flash_after(client, response) == "ok: Invitation sent to 3 people."
    assert sorted(r["email"] for r in await invitations(world["acme"]["id"])) == [
        "a1@acme.test",
        "a2@acme.test",
        "a3@acme.test",
        "ivy@acme.test",
    ]
    assert {to for rcpts, _ in mail.received for to in rcpts} == {
        "a1@acme.test",
        "a2@acme.test",
        "a3@acme.test",
    }
    links = {token_of(accept_link(mail, a)) for a in ("a1@acme.test", "a2@acme.test", "a3@acme.test")}
    assert len(links) == 3


async def test_invite_an_existing_member_is_refused_and_nothing_is_sent(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    before = await snapshot()
    response = await invite(client, "fresh@acme.test\nBOB@acme.test")
    assert response.status_code == 400
    message = field_error(response.text, "emails")
    assert "Already a member: bob@acme.test." in message
    assert "Nobody was invited." in message
    # The form keeps what was typed and the chosen roles.
    assert "fresh@acme.test\nBOB@acme.test</textarea>" in response.text
    assert await snapshot() == before
    assert mail.received == []


async def test_invite_an_address_with_a_pending_invitation_is_refused(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await invite(client, "ivy@acme.test", headers=JSON)
    assert response.status_code == 400
    [field] = response.json()["error"]["fields"]
    assert field["key"] == "emails"
    assert "Already invited: ivy@acme.test. Use Resend" in field["message"]
    assert mail.received == []


async def test_the_same_address_may_be_invited_to_two_organizations(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await invite(client, "gil@globex.test")
    assert response.status_code == 303
    assert len(mail.to("gil@globex.test")) == 1


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        ("superuser", "'superuser' is not a role defined in the policy"),
        (["member", "root"], "'root' is not a role defined in the policy"),
        ([], "Choose at least one role."),
        ("", "Choose at least one role."),
    ],
)
async def test_invite_with_a_role_that_does_not_exist(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox, roles: Any, message: str
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    before = await snapshot()
    response = await invite(client, "x@acme.test", roles)
    assert response.status_code == 400
    assert message in field_error(response.text, "roles")
    assert await snapshot() == before
    assert mail.received == []


@pytest.mark.parametrize(
    ("emails", "message"),
    [
        ("", "Enter at least one email address."),
        ("not-an-address", "These are not email addresses: not-an-address."),
        ("ok@acme.test, bad@", "These are not email addresses: bad@."),
        (", ".join(f"p{i}@acme.test" for i in range(51)), "Invite at most 50 people at once"),
    ],
)
async def test_invite_bad_addresses(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox, emails: str, message: str
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    before = await snapshot()
    response = await invite(client, emails)
    assert response.status_code == 400
    assert message in field_error(response.text, "emails")
    assert await snapshot() == before
    assert mail.received == []


async def test_no_privilege_escalation_by_invitation(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    """`lead` manages members but holds no SSO/SCIM/session-policy permission: it cannot invite an admin."""
    await sign_in(client, world["lee"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert re.search(r'id="invite-role-admin" name="roles" value="admin" disabled', page.text)
    before = await snapshot()
    response = await invite(client, "x@acme.test", "admin")
    assert response.status_code == 403
    message = field_error(response.text, "roles")
    assert "You cannot grant the role Administrator (admin)" in message
    assert "sk_org_sso_manage" in message
    assert await snapshot() == before
    assert mail.received == []
    # Roles within its own permissions are fine.
    assert (await invite(client, "x@acme.test", ["lead", "member"])).status_code == 303


async def test_double_submit_of_the_same_form_sends_once(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    form_id = submission_id((await client.get(URL, headers=HTML)).text)
    first = await invite(client, "dup@acme.test, dup2@acme.test", submission_id=form_id)
    assert await flash_after(client, first) == "ok: Invitation sent to 2 people."
    second = await invite(client, "dup@acme.test, dup2@acme.test", submission_id=form_id)
    assert await flash_after(client, second) == "ok: These invitations were already sent."
    assert len(mail.to("dup@acme.test")) == 1 and len(mail.to("dup2@acme.test")) == 1
    assert [r["email"] for r in await invitations(world["acme"]["id"])].count("dup@acme.test") == 1
    assert len(await audit_events("member.invited")) == 2
    # A new form is a new submission: the address is then already invited.
    again = await invite(
        client, "dup@acme.test", submission_id=submission_id((await client.get(URL, headers=HTML)).text)
    )
    assert again.status_code == 400


async def test_double_submit_at_the_same_moment_sends_once(
    app: Litestar, client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    from tests.factories import csrf_token

    token = await csrf_token(client, URL)
    form_id = submission_id((await client.get(URL, headers=HTML)).text)
    data = {"_csrf_token": token, "emails": "race@acme.test", "roles": "member", "submission_id": form_id}
    responses = await asyncio.gather(
        *(client.post(f"{URL}/invitations", data=data, headers=HTML) for _ in range(3))
    )
    assert [r.status_code for r in responses] == [303, 303, 303], [
        field_error(r.text, "emails") for r in responses if r.status_code == 400
    ]
    assert [r["email"] for r in await invitations(world["acme"]["id"])].count("race@acme.test") == 1
    assert len(mail.to("race@acme.test")) == 1


async def test_mail_failure_keeps_the_invitation_and_says_so(
    app: Litestar, client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    import msgspec

    app.state.settings = msgspec.structs.replace(app.state.settings, smtp_url="smtp://127.0.0.1:9")
    await sign_in(client, world["alice"], world["acme"])
    response = await invite(client, "unlucky@acme.test")
    message = await flash_after(client, response)
    assert message.startswith("error: Invited, but the email to unlucky@acme.test could not be sent.")
    assert "unlucky@acme.test" in [r["email"] for r in await invitations(world["acme"]["id"])]


# --- resending and revoking ---------------------------------------------------------------------------------


async def test_resend_issues_a_new_link_and_the_old_one_dies(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    await invite(client, "re@acme.test")
    old_link = accept_link(mail, "re@acme.test")
    [row] = [r for r in await invitations(world["acme"]["id"]) if r["email"] == "re@acme.test"]
    await Invitation.update({Invitation.expires_at: clock.utcnow() + timedelta(hours=1)}).where(
        Invitation.id == row["id"]
    )
    response = await post(client, f"{URL}/invitations/{row['id']}/resend")
    assert await flash_after(client, response) == "ok: A new invitation link was sent to re@acme.test."
    assert len(mail.to("re@acme.test")) == 2
    new_link = accept_link(mail, "re@acme.test")
    assert new_link != old_link
    [after] = [r for r in await invitations(world["acme"]["id"]) if r["email"] == "re@acme.test"]
    assert after["id"] == row["id"]
    assert after["token_hash"] == ids.hash_secret(token_of(new_link))
    assert after["expires_at"] - clock.utcnow() > timedelta(days=6)
    client.cookies.clear()
    # The old link says that a newer invitation was sent, and accepts nothing.
    old = await client.get(path_of(old_link), headers=HTML)
    assert old.status_code == 410
    assert "<h1>A newer invitation was sent</h1>" in old.text
    assert "open the newest invitation email from Acme" in old.text
    assert "does not work" not in old.text
    token = await csrf_token(client, "/login")
    refused = await client.post(
        ACCEPT, data={"_csrf_token": token, "token": token_of(old_link)}, headers=HTML
    )
    assert refused.status_code == 410 and "A newer invitation was sent" in refused.text
    assert "re@acme.test" not in await memberships(world["acme"]["id"])
    assert (await client.get(path_of(new_link), headers=HTML)).status_code == 200
    # Only the old token's hash is kept.
    [kept] = await InvitationReplacedToken.select()
    assert kept["token_hash"] == ids.hash_secret(token_of(old_link)) and kept["invitation"] == row["id"]
    [event] = await audit_events("invitation.resent")
    assert event["target"] == row["id"] and event["actor_id"] == world["alice"]["id"]


async def test_an_expired_invitation_can_be_resent(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    invitation_id, _ = await make_invitation(world["acme"], "late@acme.test", expires_in_seconds=-60)
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert "Expired" in page.text.split(f'id="invitation-{invitation_id}"', 1)[1].split("</tr>", 1)[0]
    response = await post(client, f"{URL}/invitations/{invitation_id}/resend")
    assert response.status_code == 303
    client.cookies.clear()
    assert (await client.get(path_of(accept_link(mail, "late@acme.test")), headers=HTML)).status_code == 200


async def test_resend_cannot_escalate(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    invitation_id, _ = await make_invitation(
        world["acme"], "boss@acme.test", ["admin"], invited_by=world["alice"]
    )
    await sign_in(client, world["lee"], world["acme"])
    before = await snapshot()
    response = await post(client, f"{URL}/invitations/{invitation_id}/resend", headers=JSON)
    assert response.status_code == 403
    assert await snapshot() == before
    assert mail.received == []


async def test_revoke_kills_the_link(client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post(client, f"{URL}/invitations/{world['acme_invitation']}/revoke")
    assert await flash_after(client, response) == "ok: The invitation to ivy@acme.test was revoked."
    page = await client.get(URL, headers=HTML)
    assert invitation_emails(page.text) == []
    [event] = await audit_events("invitation.revoked")
    assert event["target"] == world["acme_invitation"]
    assert event["details"]["email"] == "ivy@acme.test"
    client.cookies.clear()
    gone = await client.get(f"{ACCEPT}?token={world['acme_token']}", headers=HTML)
    assert gone.status_code == 410
    assert "This invitation was withdrawn" in gone.text
    # The address can be invited again.
    await sign_in(client, world["alice"], world["acme"])
    assert (await invite(client, "ivy@acme.test")).status_code == 303


async def test_revoked_or_accepted_invitations_cannot_be_resent_or_revoked_again(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    path = f"{URL}/invitations/{world['acme_invitation']}"
    await post(client, f"{path}/revoke")
    resend = await post(client, f"{path}/resend", headers=JSON)
    assert resend.status_code == 409
    assert "has been revoked" in resend.json()["error"]["detail"]
    again = await post(client, f"{path}/revoke")
    assert await flash_after(client, again) == "error: The invitation to ivy@acme.test has been revoked."
    assert mail.received == []


# --- changing roles -----------------------------------------------------------------------------------------


async def test_change_roles(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    bob = world["m"]["bob"]["id"]
    response = await post(client, f"{URL}/{bob}/roles", {"roles": ["admin", "member"]})
    assert response.headers["location"] == f"{URL}/{bob}"
    assert await flash_after(client, response) == "ok: Roles of Bob Builder saved."
    assert (await memberships(world["acme"]["id"]))["bob@acme.test"] == ["admin", "member"]
    [event] = await audit_events("member.roles_changed")
    assert event["actor_id"] == world["alice"]["id"]
    assert event["target"] == world["bob"]["id"]
    assert event["details"] == {
        "membership_id": bob,
        "email": "bob@acme.test",
        "old": ["member"],
        "new": ["admin", "member"],
    }
    same = await post(client, f"{URL}/{bob}/roles", {"roles": ["member", "admin"]})
    assert await flash_after(client, same) == "ok: Nothing changed: Bob Builder already has these roles."
    assert len(await audit_events("member.roles_changed")) == 1


async def test_change_roles_takes_effect_on_the_next_request(
    app: Litestar, client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["bob"], world["acme"])
    assert (await client.get("/ui/organization/members", headers=JSON)).status_code == 200
    await Membership.update({Membership.roles: ["ghost"]}).where(Membership.id == world["m"]["bob"]["id"])
    assert (await client.get("/ui/organization/members", headers=JSON)).status_code == 403


@pytest.mark.parametrize("roles", ["superuser", ["member", "owner"], []])
async def test_change_to_a_role_the_policy_does_not_define(
    client: httpx.AsyncClient, world: dict[str, Any], roles: Any
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    before = await snapshot()
    response = await post(client, f"{URL}/{world['m']['bob']['id']}/roles", {"roles": roles})
    assert response.status_code == 400
    assert field_error(response.text, "roles")
    assert await snapshot() == before


async def test_no_privilege_escalation_by_role_change(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["lee"], world["acme"])
    before = await snapshot()
    # Lee cannot give what Lee does not hold...
    response = await post(client, f"{URL}/{world['m']['bob']['id']}/roles", {"roles": "admin"}, headers=JSON)
    assert response.status_code == 403
    assert response.json()["error"]["fields"][0]["key"] == "roles"
    assert "You cannot grant the role Administrator (admin)" in response.json()["error"]["detail"]
    # ...nor himself...
    own = await post(client, f"{URL}/{world['m']['lee']['id']}/roles", {"roles": ["admin", "lead"]})
    assert own.status_code == 403
    # ...nor demote someone who holds more than Lee does.
    demote = await post(client, f"{URL}/{world['m']['alice']['id']}/roles", {"roles": "member"})
    assert demote.status_code == 403
    assert "You cannot change the roles of Alice Admin" in field_error(demote.text, "roles")
    assert await snapshot() == before
    # Within Lee's own permissions: fine.
    ok = await post(client, f"{URL}/{world['m']['bob']['id']}/roles", {"roles": "lead"})
    assert ok.status_code == 303
    assert (await memberships(world["acme"]["id"]))["bob@acme.test"] == ["lead"]


async def test_the_last_member_who_can_change_roles_cannot_be_demoted(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    # Alice (admin) and Lee (lead) both hold sk_org_users_role_change; demote Lee first.
    await sign_in(client, world["alice"], world["acme"])
    assert (
        await post(client, f"{URL}/{world['m']['lee']['id']}/roles", {"roles": "member"})
    ).status_code == 303
    before = await snapshot()
    response = await post(client, f"{URL}/{world['m']['alice']['id']}/roles", {"roles": "member"})
    assert response.status_code == 409
    assert "You are the last active member who can change roles" in field_error(response.text, "roles")
    assert await snapshot() == before
    # Once someone else can, Alice may step down.
    assert (
        await post(client, f"{URL}/{world['m']['bob']['id']}/roles", {"roles": "admin"})
    ).status_code == 303
    assert (
        await post(client, f"{URL}/{world['m']['alice']['id']}/roles", {"roles": "member"})
    ).status_code == 303


async def test_two_admins_demoting_each_other_at_once_leave_one(
    app: Litestar, client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    from tests.factories import csrf_token

    await Membership.update({Membership.roles: ["member"]}).where(Membership.id == world["m"]["lee"]["id"])
    await Membership.update({Membership.roles: ["admin"]}).where(Membership.id == world["m"]["bob"]["id"])
    other = httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url))
    async with other:
        await sign_in(client, world["alice"], world["acme"])
        await sign_in(other, world["bob"], world["acme"])
        t1, t2 = await csrf_token(client, "/ui/"), await csrf_token(other, "/ui/")
        r1, r2 = await asyncio.gather(
            client.post(
                f"{URL}/{world['m']['bob']['id']}/roles",
                data={"_csrf_token": t1, "roles": "member"},
                headers=JSON,
            ),
            other.post(
                f"{URL}/{world['m']['alice']['id']}/roles",
                data={"_csrf_token": t2, "roles": "member"},
                headers=JSON,
            ),
        )
    assert sorted([r1.status_code, r2.status_code]) == [303, 409]
    roles = await memberships(world["acme"]["id"])
    assert [roles["alice@acme.test"], roles["bob@acme.test"]].count(["admin"]) == 1


# --- removing -----------------------------------------------------------------------------------------------


async def test_remove_takes_access_away_at_once(
    app: Litestar, client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    bob_browser = httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url))
    async with bob_browser:
        await sign_in(bob_browser, world["bob"], world["acme"])
        assert (await bob_browser.get(URL, headers=JSON)).status_code == 200

        await sign_in(client, world["alice"], world["acme"])
        response = await post(client, f"{URL}/{world['m']['bob']['id']}/remove", CONFIRM)
        assert response.headers["location"] == URL
        assert await flash_after(client, response) == "ok: Bob Builder was removed from the organization."
        assert "bob@acme.test" not in await memberships(world["acme"]["id"])

        # Bob's session, whose active organization it was, can no longer open its widgets.
        denied = await bob_browser.get(URL, headers=JSON)
        assert denied.status_code == 403
        assert denied.json()["error"]["reason"] == "not_member"
        assert (await bob_browser.get("/ui/organization/settings", headers=JSON)).status_code == 403
        home = await bob_browser.get("/ui/", headers=HTML)
        assert home.status_code == 200
        assert "Acme" not in home.text.split("<main", 1)[1]
        assert 'href="/ui/organization/members"' not in home.text
    sessions = await Session.select(Session.active_organization).where(Session.user == world["bob"]["id"])
    assert [s["active_organization"] for s in sessions] == [None]
    [event] = await audit_events("member.removed")
    assert event["actor_id"] == world["alice"]["id"] and event["target"] == world["bob"]["id"]
    assert event["details"]["roles"] == ["member"] and event["details"]["email"] == "bob@acme.test"


async def test_removing_the_last_member_who_can_change_roles_is_refused(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await Membership.delete().where(Membership.id == world["m"]["lee"]["id"])
    await sign_in(client, world["alice"], world["acme"])
    before = await snapshot()
    response = await post(client, f"{URL}/{world['m']['alice']['id']}/remove", CONFIRM)
    assert response.status_code == 409
    assert "You are the last active member who can change roles" in response.text
    assert await snapshot() == before
    api = await post(client, f"{URL}/{world['m']['alice']['id']}/remove", headers=JSON)
    assert api.status_code == 409
    assert api.json()["error"]["fields"][0]["key"] == "member"


async def test_leaving_when_someone_else_can_change_roles(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post(client, f"{URL}/{world['m']['alice']['id']}/remove", CONFIRM)
    assert response.headers["location"] == "/ui/"
    assert "alice@acme.test" not in await memberships(world["acme"]["id"])


async def test_a_lesser_role_cannot_remove_an_admin(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["lee"], world["acme"])
    before = await snapshot()
    response = await post(client, f"{URL}/{world['m']['alice']['id']}/remove", CONFIRM)
    assert response.status_code == 403
    assert "You cannot remove Alice Admin" in response.text
    assert await snapshot() == before
    assert (await post(client, f"{URL}/{world['m']['bob']['id']}/remove", CONFIRM)).status_code == 303


@pytest.mark.parametrize(
    "params",
    [
        {"q": "\x00"},
        {"q": "a\x00b"},
        {"q": "x" * 5000},
        {"after": "garbage"},
        {"after": "WyJcdTAwMDAiLCAibWVtX3giXQ"},  # ["\u0000", "mem_x"]
        {"before": "W10"},  # []
        {"role": "' OR 1=1 --"},
        {"status": "anything", "q": "'; DROP TABLE membership; --"},
    ],
)
async def test_hostile_query_strings_are_harmless(
    client: httpx.AsyncClient, world: dict[str, Any], params: dict[str, str]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, params=params, headers=HTML)
    assert page.status_code == 200
    assert "bob@acme.test" in (await client.get(URL, headers=HTML)).text


async def test_invitation_emails_are_rate_limited_per_organization(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    from portal.auth import accounts
    from widgets.members import service

    for _ in range(service.INVITES_PER_HOUR - 2):
        await accounts.audit("member.invited", organization_id=world["acme"]["id"], target="x@acme.test")
    await sign_in(client, world["alice"], world["acme"])
    before = await snapshot()
    response = await invite(client, "r1@acme.test, r2@acme.test, r3@acme.test")
    assert response.status_code == 429
    assert "the limit is 200 an hour" in field_error(response.text, "emails")
    assert await snapshot() == before
    assert mail.received == []
    assert (await invite(client, "r1@acme.test, r2@acme.test")).status_code == 303
    resend = await post(client, f"{URL}/invitations/{world['acme_invitation']}/resend", headers=JSON)
    assert resend.status_code == 429
    # Another organization is not affected.
    await sign_in(client, world["gina"], world["globex"])
    assert (await invite(client, "r9@globex.test")).status_code == 303


# --- issue 16 §3: removing asks first; row actions on the table ------------------------------------------


async def test_removing_asks_first_and_nothing_changes_until_confirmed(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    bob = world["m"]["bob"]["id"]
    detail = await client.get(f"{URL}/{bob}", headers=HTML)
    # The member page links to the confirmation; it holds no form that removes in one click.
    assert f'href="{URL}/{bob}/remove"' in detail.text
    assert f'action="{URL}/{bob}/remove"' not in detail.text

    before = await snapshot()
    page = await client.get(f"{URL}/{bob}/remove", headers=HTML)
    assert page.status_code == 200
    assert "<h1>Remove Bob Builder from Acme?</h1>" in page.text
    assert "Nothing changes until you confirm." in page.text
    assert "Bob Builder (bob@acme.test) loses access to Acme at once" in page.text
    assert 'name="confirm" value="yes"' in page.text
    assert await snapshot() == before

    # A form posted without the confirmation (an old page, a crafted form) only shows the question again.
    unconfirmed = await post(client, f"{URL}/{bob}/remove")
    assert unconfirmed.status_code == 200
    assert "<h1>Remove Bob Builder from Acme?</h1>" in unconfirmed.text
    assert await snapshot() == before
    assert "bob@acme.test" in await memberships(world["acme"]["id"])

    done = await post(client, f"{URL}/{bob}/remove", CONFIRM)
    assert done.status_code == 303
    assert "bob@acme.test" not in await memberships(world["acme"]["id"])


async def test_leaving_speaks_to_you(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    mine = world["m"]["alice"]["id"]
    detail = await client.get(f"{URL}/{mine}", headers=HTML)
    assert "to come back you need a new invitation" in detail.text
    assert "invite them again" not in detail.text
    page = await client.get(f"{URL}/{mine}/remove", headers=HTML)
    assert "<h1>Leave Acme?</h1>" in page.text
    assert "You lose access to Acme at once" in page.text
    assert "invite them again" not in page.text


async def test_row_actions_change_roles_and_remove_from_the_table(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, headers=HTML)
    bob = world["m"]["bob"]["id"]
    row = page.text.split(f'<tr id="member-{bob}">', 1)[1].split("</tr>", 1)[0]
    assert 'Change roles<span class="visually-hidden"> of Bob Builder</span>' in row
    assert f'action="{URL}/{bob}/roles"' in row
    assert 'name="back" value="list"' in row
    assert f'id="row-{bob}-member" name="roles" value="member" checked' in row
    assert f'href="{URL}/{bob}/remove">Remove<span class="visually-hidden"> Bob Builder</span>' in row
    # Ids stay unique with a form per row.
    ids = re.findall(r' id="([^"]+)"', page.text)
    assert len(ids) == len(set(ids))

    response = await post(client, f"{URL}/{bob}/roles", {"roles": ["member", "lead"], "back": "list"})
    assert response.status_code == 303 and response.headers["location"] == URL
    assert await flash_after(client, response) == "ok: Roles of Bob Builder saved."
    assert (await memberships(world["acme"]["id"]))["bob@acme.test"] == ["lead", "member"]


async def test_row_actions_only_where_they_would_be_allowed(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    # Lee (lead) manages members but cannot touch Alice (admin holds more than lead).
    await sign_in(client, world["lee"], world["acme"])
    page = await client.get(URL, headers=HTML)
    alice_row = page.text.split(f'<tr id="member-{world["m"]["alice"]["id"]}">', 1)[1].split("</tr>", 1)[0]
    assert "Change roles" not in alice_row and "/remove" not in alice_row
    bob_row = page.text.split(f'<tr id="member-{world["m"]["bob"]["id"]}">', 1)[1].split("</tr>", 1)[0]
    assert "Change roles" in bob_row and "/remove" in bob_row
    # Bob (member) may do neither: no actions column at all.
    await sign_in(client, world["bob"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert "Change roles" not in page.text and "/remove" not in page.text


# --- issue 16 §6: roles in plain language --------------------------------------------------------------------


async def test_role_pickers_show_titles_and_descriptions_with_the_key_secondary(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(f"{URL}/{world['m']['bob']['id']}", headers=HTML)
    label = re.search(r'<label for="role-member">(.*?)</label>', page.text, re.S)
    assert label is not None
    assert label.group(1) == (
        '<strong>Member</strong> <code class="role-key">member</code> '
        '<span class="muted">Sees the organization&#39;s settings and its members.</span>'
    )
    assert "sk_org_settings_read, sk_org_users_read" not in page.text
    # A role with no role row (the test policy's `lead`): its key, and the labels of what it grants.
    lead = re.search(r'<label for="role-lead">(.*?)</label>', page.text, re.S)
    assert lead is not None and "<strong>lead</strong>" in lead.group(1)
    assert "Invite people" in lead.group(1) and "See members and invitations" in lead.group(1)


async def test_the_403_page_names_the_permission_in_words_and_by_key(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["bob"], world["acme"])
    page = await post(client, f"{URL}/{world['m']['lee']['id']}/remove", CONFIRM)
    assert page.status_code == 403
    assert (
        "Your role does not allow this: “Remove members” (permission sk_org_users_delete)."
        in html.unescape(page.text)
    )

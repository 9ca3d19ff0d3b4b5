"""Accepting an invitation at /invitations/accept: the link proves the address; single use; clear pages for
links that no longer work; another account signed in in the same browser."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from litestar import Litestar

from portal.auth import sessions
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import Invitation, Membership, Session, User
from tests.factories import csrf_token, make_invitation, make_member, make_user, sign_in
from tests.mailserver import Mailbox
from tests.widgets.members.support import (
    ACCEPT,
    HTML,
    JSON,
    URL,
    accept_link,
    audit_events,
    memberships,
    path_of,
    post,
    snapshot,
    token_of,
)


async def accept(client: httpx.AsyncClient, token: str, **extra: str) -> httpx.Response:
    """POST the accept form (with the CSRF token of any page that has a form, as a browser would)."""
    page = await client.get(f"{ACCEPT}?token={token}", headers=HTML)
    match = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    signed_in = "portal_session" in client.cookies
    csrf = match.group(1) if match else await csrf_token(client, "/ui/" if signed_in else "/login")
    return await client.post(ACCEPT, data={"_csrf_token": csrf, "token": token, **extra}, headers=HTML)


def session_cookie_set(response: httpx.Response, settings: Settings) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == sessions.cookie_name(settings):
            return rest.split(";", 1)[0]
    return None


async def test_a_new_person_accepts_from_the_emailed_link_and_is_signed_in(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox, settings: Settings
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    await post(client, f"{URL}/invitations", {"emails": "newbie@acme.test", "roles": ["admin", "member"]})
    link = accept_link(mail, "newbie@acme.test")
    client.cookies.clear()

    page = await client.get(path_of(link), headers=HTML)
    assert page.status_code == 200
    assert "Join Acme" in page.text
    assert "Alice Admin invited" in page.text and "newbie@acme.test" in page.text
    assert "Accepting signs you in as newbie@acme.test." in page.text
    # Opening the link (a mail scanner does) changes nothing: accepting is a POST.
    assert await User.count().where(User.email == "newbie@acme.test") == 0

    response = await accept(client, token_of(link))
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"
    token = session_cookie_set(response, settings)
    assert token
    home = await client.get("/ui/", headers=HTML)
    assert home.status_code == 200
    assert "Welcome to Acme." in home.text
    assert "<h1>Acme</h1>" in home.text
    user = await User.select().where(User.email == "newbie@acme.test").first()
    assert user is not None and user["email_verified"] is True
    membership = await Membership.select().where(Membership.user == user["id"]).first().output(load_json=True)
    assert membership is not None
    assert membership["organization"] == world["acme"]["id"]
    assert membership["roles"] == ["admin", "member"]
    assert membership["source"] == "portal" and membership["status"] == "active"
    [session] = await Session.select().where(Session.user == user["id"])
    assert session["auth_method"] == "invitation"
    assert session["active_organization"] == world["acme"]["id"]
    [event] = await audit_events("invitation.accepted")
    assert event["actor_id"] == user["id"]
    assert event["details"]["new_user"] is True
    assert event["details"]["roles"] == ["admin", "member"]
    login = [e for e in await audit_events("login.succeeded") if e["actor_id"] == user["id"]]
    assert login and login[0]["details"]["method"] == "invitation"

    # Single use: the same link again.
    client.cookies.clear()
    again = await client.get(path_of(link), headers=HTML)
    assert again.status_code == 410
    assert "This invitation has already been used" in again.text
    reused = await accept(client, token_of(link))
    assert reused.status_code == 410
    assert session_cookie_set(reused, settings) is None
    assert await Session.count().where(Session.user == user["id"]) == 1


async def test_an_existing_user_who_is_signed_out_joins_and_is_signed_in(
    client: httpx.AsyncClient, world: dict[str, Any], settings: Settings
) -> None:
    _, token = await make_invitation(
        world["acme"], "olga@elsewhere.test", ["member"], invited_by=world["alice"]
    )
    response = await accept(client, token)
    assert response.status_code == 303
    assert session_cookie_set(response, settings)
    assert (await memberships(world["acme"]["id"]))["olga@elsewhere.test"] == ["member"]
    [event] = await audit_events("invitation.accepted")
    assert event["actor_id"] == world["olga"]["id"] and event["details"]["new_user"] is False


async def test_the_invited_user_already_signed_in_joins_in_the_same_session(
    client: httpx.AsyncClient, world: dict[str, Any], settings: Settings
) -> None:
    _, token = await make_invitation(world["acme"], "olga@elsewhere.test", ["member"])
    await sign_in(client, world["olga"])
    page = await client.get(f"{ACCEPT}?token={token}", headers=HTML)
    assert page.status_code == 200 and "Join Acme" in page.text
    assert "Accepting signs you in" not in page.text
    response = await accept(client, token)
    assert response.status_code == 303
    assert session_cookie_set(response, settings) is None  # the same session goes on
    [session] = await Session.select().where(Session.user == world["olga"]["id"])
    assert session["active_organization"] == world["acme"]["id"]
    assert session["revoked_at"] is None
    assert (await client.get(URL, headers=JSON)).status_code == 200


async def test_signed_in_as_someone_else_is_told_and_can_switch(
    client: httpx.AsyncClient, world: dict[str, Any], settings: Settings
) -> None:
    _, token = await make_invitation(world["acme"], "newbie@acme.test", ["member"])
    await sign_in(client, world["gina"], world["globex"])
    page = await client.get(f"{ACCEPT}?token={token}", headers=HTML)
    assert page.status_code == 200
    assert "This invitation is for another address" in page.text
    assert "gina@globex.test" in page.text and "newbie@acme.test" in page.text
    assert "Sign out and continue as newbie@acme.test" in page.text

    # Accepting without choosing to switch does nothing.
    before = await snapshot()
    refused = await accept(client, token)
    assert refused.status_code == 409
    assert "This invitation is for another address" in refused.text
    assert await snapshot() == before

    response = await accept(client, token, switch_account="1")
    assert response.status_code == 303
    new_token = session_cookie_set(response, settings)
    assert new_token
    client.cookies.clear()  # as a browser does: the new cookie replaces the old one
    client.cookies.set(sessions.cookie_name(settings), new_token)
    gina_sessions = await Session.select().where(Session.user == world["gina"]["id"])
    assert [(s["revoked_at"] is not None, s["revoke_reason"]) for s in gina_sessions] == [(True, "replaced")]
    assert "newbie@acme.test" in await memberships(world["acme"]["id"])
    assert "gina@globex.test" not in await memberships(world["acme"]["id"])
    home = await client.get("/ui/", headers=HTML)
    assert "newbie@acme.test" in home.text


@pytest.mark.parametrize(
    ("state", "status", "title"),
    [
        ("expired", 410, "This invitation has expired"),
        ("revoked", 410, "This invitation was withdrawn"),
        ("accepted", 410, "This invitation has already been used"),
    ],
)
async def test_links_that_no_longer_work_get_a_clear_page(
    client: httpx.AsyncClient, world: dict[str, Any], settings: Settings, state: str, status: int, title: str
) -> None:
    invitation_id, token = await make_invitation(
        world["acme"], "late@acme.test", ["admin"], invited_by=world["alice"]
    )
    now = clock.utcnow()
    change = {
        "expired": {Invitation.expires_at: now},
        "revoked": {Invitation.revoked_at: now},
        "accepted": {Invitation.accepted_at: now},
    }[state]
    await Invitation.update(change).where(Invitation.id == invitation_id)
    page = await client.get(f"{ACCEPT}?token={token}", headers=HTML)
    assert page.status_code == status
    assert title in page.text
    assert "Accept and join" not in page.text
    before = await snapshot()
    csrf = await csrf_token(client, "/login")
    response = await client.post(ACCEPT, data={"_csrf_token": csrf, "token": token}, headers=HTML)
    assert response.status_code == status
    assert title in response.text
    assert session_cookie_set(response, settings) is None
    assert await snapshot() == before
    assert await User.count().where(User.email == "late@acme.test") == 0


@pytest.mark.parametrize("token", ["", "nope", "portal_inv_" + "x" * 43, "\x00", "x" * 1000])
async def test_unknown_links(client: httpx.AsyncClient, world: dict[str, Any], token: str) -> None:
    page = await client.get(ACCEPT, params={"token": token}, headers=HTML)
    assert page.status_code == 404
    assert "This invitation link does not work" in page.text
    csrf = await csrf_token(client, "/login")
    response = await client.post(ACCEPT, data={"_csrf_token": csrf, "token": token}, headers=HTML)
    assert response.status_code == 404


async def test_accepting_needs_the_csrf_token(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await client.get(f"{ACCEPT}?token={world['acme_token']}", headers=HTML)
    before = await snapshot()
    response = await client.post(ACCEPT, data={"token": world["acme_token"]}, headers=HTML)
    assert response.status_code == 403
    assert await snapshot() == before


async def test_two_accepts_at_once_use_the_link_once(
    app: Litestar, client: httpx.AsyncClient, world: dict[str, Any], settings: Settings
) -> None:
    token = world["acme_token"]
    csrf = await csrf_token(client, f"{ACCEPT}?token={token}")
    responses = await asyncio.gather(
        *(client.post(ACCEPT, data={"_csrf_token": csrf, "token": token}, headers=HTML) for _ in range(3))
    )
    assert sorted(r.status_code for r in responses) == [303, 410, 410]
    assert await User.count().where(User.email == "ivy@acme.test") == 1
    assert await Membership.count().where(Membership.organization == world["acme"]["id"]) == 5
    assert len(await audit_events("invitation.accepted")) == 1


async def test_an_account_created_after_the_look_up_is_the_one_that_joins(
    client: httpx.AsyncClient, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from widgets.members import service

    real_find_user = service.accounts.find_user
    calls = []
    created: list[dict[str, Any]] = []

    async def find_user_while_someone_signs_up(email: str) -> dict[str, Any] | None:
        calls.append(email)
        if not created:
            # The address signs up right after this look-up found nobody.
            created.append(await make_user(email))
            return None
        return await real_find_user(email)

    monkeypatch.setattr(service.accounts, "find_user", find_user_while_someone_signs_up)
    response = await accept(client, world["acme_token"])

    assert response.status_code == 303
    assert calls == ["ivy@acme.test", "ivy@acme.test"]
    [user] = await User.select().where(User.email == "ivy@acme.test")
    assert user["id"] == created[0]["id"]
    assert "ivy@acme.test" in await memberships(world["acme"]["id"])
    assert len(await audit_events("invitation.accepted")) == 1


class UniqueViolation(Exception):
    """What the driver raises when the address was inserted between the check and the insert."""

    sqlstate = "23505"


async def test_a_unique_violation_on_the_new_account_is_retried_once(
    client: httpx.AsyncClient, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from widgets.members import service

    real_create_user = service.accounts.create_user
    attempts = []

    async def create_user_losing_the_race_once(email: str, **kwargs: Any) -> dict[str, Any]:
        attempts.append(email)
        if len(attempts) == 1:
            raise UniqueViolation("duplicate key value violates unique constraint")
        return await real_create_user(email, **kwargs)

    monkeypatch.setattr(service.accounts, "create_user", create_user_losing_the_race_once)
    response = await accept(client, world["acme_token"])

    assert response.status_code == 303
    assert attempts == ["ivy@acme.test", "ivy@acme.test"]
    assert await User.count().where(User.email == "ivy@acme.test") == 1
    assert "ivy@acme.test" in await memberships(world["acme"]["id"])
    assert len(await audit_events("invitation.accepted")) == 1


async def test_joined_meanwhile_keeps_the_membership_and_adds_the_invited_roles(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    newbie = await make_user("newbie@acme.test")
    await make_member(world["acme"], newbie, ["member"], source="jit")
    _, token = await make_invitation(world["acme"], "newbie@acme.test", ["lead"])
    response = await accept(client, token)
    assert response.status_code == 303
    assert (await memberships(world["acme"]["id"]))["newbie@acme.test"] == ["lead", "member"]
    [event] = await audit_events("member.roles_changed")
    assert event["details"]["old"] == ["member"] and event["details"]["new"] == ["lead", "member"]


async def test_roles_removed_from_the_policy_since_are_not_granted(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    _, token = await make_invitation(world["acme"], "newbie@acme.test", ["member", "retired-role"])
    assert (await accept(client, token)).status_code == 303
    assert (await memberships(world["acme"]["id"]))["newbie@acme.test"] == ["member"]


async def test_the_page_reveals_nothing_to_a_wrong_token_and_sets_no_referrer(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    page = await client.get(f"{ACCEPT}?token={world['acme_token']}", headers=HTML)
    assert page.headers["referrer-policy"] == "same-origin"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "<script" not in page.text and "style=" not in page.text
    wrong = await client.get(f"{ACCEPT}?token={world['acme_token'][:-1]}x", headers=HTML)
    assert "Join Acme" not in wrong.text and "ivy@acme.test" not in wrong.text

"""Helpers for the Members widget tests: reading pages, mail and stored rows."""

from __future__ import annotations

import html
import re
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx

from portal.core.tables import AuditEvent, Invitation, Membership
from tests.factories import csrf_token
from tests.mailserver import Mailbox

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
URL = "/ui/organization/members"
ACCEPT = "/invitations/accept"


async def audit_events(action: str) -> list[dict[str, Any]]:
    rows = (
        await AuditEvent.select()
        .where(AuditEvent.action == action)
        .order_by(AuditEvent.at)
        .output(load_json=True)
    )
    return cast(list[dict[str, Any]], rows)


async def memberships(org_id: str) -> dict[str, list[str]]:
    """email -> roles of the organization's members."""
    rows = await (
        Membership.select(Membership.user.email.as_alias("email"), Membership.roles)
        .where(Membership.organization == org_id)
        .output(load_json=True)
    )
    return {row["email"]: sorted(row["roles"]) for row in rows}


async def invitations(org_id: str) -> list[dict[str, Any]]:
    rows = await (
        Invitation.select()
        .where(Invitation.organization == org_id)
        .order_by(Invitation.email)
        .output(load_json=True)
    )
    return cast(list[dict[str, Any]], rows)


async def snapshot() -> tuple[Any, ...]:
    """Every membership and invitation, to prove a refused request changed nothing."""
    members = await Membership.select(Membership.id, Membership.roles).order_by(Membership.id)
    invites = await Invitation.select(
        Invitation.id,
        Invitation.token_hash,
        Invitation.expires_at,
        Invitation.accepted_at,
        Invitation.revoked_at,
    ).order_by(Invitation.id)
    return (members, invites)


async def post(
    client: httpx.AsyncClient,
    path: str,
    data: dict[str, Any] | None = None,
    headers: dict[str, str] = HTML,
    token_page: str = "/ui/",
) -> httpx.Response:
    token = await csrf_token(client, token_page)
    return await client.post(path, data={"_csrf_token": token, **(data or {})}, headers=headers)


def field_error(page: str, field: str) -> str:
    """The message shown next to ``field`` (which must be marked invalid for assistive technology)."""
    match = re.search(
        rf'<span class="field-error" id="{field}-error"><span class="visually-hidden">Error: </span>(.*?)</span>',
        page,
        re.S,
    )
    assert match, f"no error shown for {field}"
    control = re.search(
        rf'<(?:input|textarea|select|fieldset|section)[^>]* id="{field}"[^>]*>', page
    ) or re.search(rf'<(?:input|textarea|select|fieldset|section) id="{field}"[^>]*>', page)
    assert control, f"no control {field}"
    if "<section" not in control.group(0):
        assert 'aria-invalid="true"' in control.group(0)
    return html.unescape(re.sub(r"\s+", " ", match.group(1))).strip()


async def flash_after(client: httpx.AsyncClient, response: httpx.Response) -> str:
    """Follow a 303 and return the flash message the next page shows, as ``kind: message``."""
    assert response.status_code == 303, response.text
    page = await client.get(response.headers["location"], headers=HTML)
    match = re.search(r'<div class="flash flash-(\w+)"[^>]*>(.*?)</div>', page.text, re.S)
    assert match, "no flash message"
    return f"{match.group(1)}: {html.unescape(match.group(2)).strip()}"


def accept_link(mail: Mailbox, address: str) -> str:
    """The accept link of the last invitation mailed to ``address``."""
    messages = mail.to(address)
    assert messages, f"no mail to {address}"
    body = messages[-1].get_body(preferencelist=("plain",))
    assert body is not None
    match = re.search(r"(https?://\S+/invitations/accept\?token=\S+)", body.get_content())
    assert match, body.get_content()
    return match.group(1)


def token_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


def path_of(link: str) -> str:
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


def member_names(page: str) -> list[str]:
    """The names (or emails) in the members table, in order."""
    table = page.split('id="members-heading"', 1)[1]
    return [
        html.unescape(n)
        for n in re.findall(r'<td><a href="/ui/organization/members/mem_[^"]+">([^<]*)</a>', table)
    ]


def invitation_emails(page: str) -> list[str]:
    if 'id="invitations-heading"' not in page:
        return []
    section = page.split('id="invitations-heading"', 1)[1].split("</section>", 1)[0]
    return [html.unescape(e) for e in re.findall(r'<td class="cell-email">([^<]*)</td>', section)]


def link(page: str, rel: str) -> str | None:
    match = re.search(rf'rel="{rel}" href="([^"]+)"', page)
    return html.unescape(match.group(1)) if match else None

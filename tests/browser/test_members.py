"""An admin invites someone; the invitee accepts through the emailed link in a second browser; the admin
changes the invitee's role, then removes them. Screenshots of the Members and Organization settings widgets."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, expect

from policy import PolicyEngine
from portal.auth import accounts, sessions
from tests.browser.conftest import SCREENSHOTS, LiveServer
from tests.mailserver import Mailbox


async def wait_for_link(mail: Mailbox, address: str) -> str:
    for _ in range(100):
        messages = mail.to(address)
        if messages:
            body = messages[-1].get_body(preferencelist=("plain",))
            assert body is not None
            match = re.search(r"(http://\S+/invitations/accept\?token=\S+)", body.get_content())
            assert match, body.get_content()
            return match.group(1)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no invitation mailed to {address}")


async def seed(policy: PolicyEngine) -> dict[str, Any]:
    acme = await accounts.create_organization("acme", "Acme")
    alice = await accounts.create_user(
        "alice@acme.test", given_name="Alice", family_name="Admin", verified=True
    )
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    for email, given, family, source in (
        ("bob@acme.test", "Bob", "Builder", "portal"),
        ("chen.wei@acme.test", "Chen", "Wei", "jit"),
        ("dana@acme.test", "Dana", "Scully", "scim"),
        ("emile@acme.test", "Émile", "Zola", "api"),
    ):
        user = await accounts.create_user(email, given_name=given, family_name=family, verified=True)
        await accounts.add_member(acme["id"], user["id"], ["member"], known_roles=policy.roles, source=source)
    return {"acme": acme, "alice": alice}


async def signed_in_context(
    browser: Browser, server: LiveServer, user: dict[str, Any], org: dict[str, Any]
) -> BrowserContext:
    token, _ = await sessions.create_session(user["id"], auth_method="test", organization_id=org["id"])
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await context.add_cookies([{"name": "portal_session", "value": token, "url": server.url}])
    return context


def watch_csp(page: Page, violations: list[str]) -> None:
    page.on(
        "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
    )


async def test_invite_accept_change_role_remove(
    browser: Browser,
    live_server_env: dict[str, str],
    mail: Mailbox,
    policy: PolicyEngine,
    db: Any,
    request: Any,
) -> None:
    live_server_env["PORTAL_SMTP_URL"] = mail.url
    world = await seed(policy)
    server: LiveServer = request.getfixturevalue("live_server")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    violations: list[str] = []

    admin_context = await signed_in_context(browser, server, world["alice"], world["acme"])
    admin = await admin_context.new_page()
    watch_csp(admin, violations)

    # Organization settings: allow the company's domain.
    await admin.goto(f"{server.url}/ui/organization/settings")
    await expect(admin.get_by_role("heading", name="Organization settings", exact=True)).to_be_visible()
    await admin.get_by_label("Allowed email domains").fill("Acme.TEST\nacme-corp.example")
    await admin.get_by_role("button", name="Save settings").click()
    await expect(admin.get_by_role("status")).to_have_text("Organization settings saved.")
    await expect(admin.get_by_label("Allowed email domains")).to_have_value("acme-corp.example\nacme.test")
    await admin.screenshot(path=str(SCREENSHOTS / "organization-settings.png"), full_page=True)

    # Members: invite ivy as a member.
    await admin.get_by_role("navigation", name="Portal").get_by_role("link", name="Members").click()
    await expect(admin.get_by_role("heading", name="Members", exact=True).first).to_be_visible()
    await admin.get_by_text("Invite people").click()
    await admin.get_by_label("Email addresses").fill("Ivy@acme.test")
    await expect(admin.get_by_role("checkbox", name=re.compile(r"^Member member"))).to_be_checked()
    await admin.get_by_role("button", name="Send invitations").click()
    await expect(admin.get_by_role("status")).to_have_text("Invitation sent to ivy@acme.test.")
    pending = admin.locator("section", has=admin.get_by_role("heading", name="Pending invitations"))
    await expect(pending.get_by_role("cell", name="ivy@acme.test", exact=True)).to_be_visible()
    await admin.get_by_text("Invite people").click()  # open the form again for the picture
    await admin.screenshot(path=str(SCREENSHOTS / "members.png"), full_page=True)

    # The invitee opens the emailed link in another browser and accepts.
    link = await wait_for_link(mail, "ivy@acme.test")
    invitee_context = await browser.new_context(viewport={"width": 1280, "height": 800})
    invitee = await invitee_context.new_page()
    watch_csp(invitee, violations)
    await invitee.goto(link)
    await expect(invitee.get_by_role("heading", name="Join Acme")).to_be_visible()
    await invitee.screenshot(path=str(SCREENSHOTS / "invitation.png"))
    await invitee.get_by_role("button", name="Accept and join Acme").click()
    await expect(invitee.get_by_role("status")).to_have_text("Welcome to Acme.")
    await expect(invitee.get_by_role("heading", name="Acme", exact=True)).to_be_visible()
    await expect(invitee.get_by_text("Signed in as ivy@acme.test")).to_be_visible()

    # The admin sees ivy as a member and makes her an admin.
    await admin.goto(f"{server.url}/ui/organization/members")
    await expect(admin.get_by_role("heading", name="Pending invitations")).to_have_count(0)
    await admin.get_by_label("Search").fill("ivy")
    await admin.get_by_role("button", name="Apply").click()
    await admin.get_by_role("link", name="ivy@acme.test", exact=True).click()
    await expect(admin.get_by_role("heading", name="ivy@acme.test")).to_be_visible()
    await admin.get_by_role("checkbox", name=re.compile(r"^Administrator admin")).check()
    await admin.get_by_role("checkbox", name=re.compile(r"^Member member")).uncheck()
    await admin.get_by_role("button", name="Save roles").click()
    await expect(admin.get_by_role("status")).to_have_text("Roles of ivy@acme.test saved.")
    await expect(admin.locator("#current-roles")).to_have_text("admin")
    await admin.screenshot(path=str(SCREENSHOTS / "member.png"), full_page=True)

    # Her next page shows what admins see.
    await invitee.goto(f"{server.url}/ui/organization/members")
    await expect(invitee.get_by_text("Invite people")).to_be_visible()

    # The admin removes her, after a confirmation step; her next request is refused.
    await admin.get_by_role("link", name="Remove ivy@acme.test…").click()
    await expect(admin.get_by_role("heading", name="Remove ivy@acme.test from Acme?")).to_be_visible()
    await expect(admin.get_by_text("Nothing changes until you confirm.")).to_be_visible()
    await admin.screenshot(path=str(SCREENSHOTS / "member-remove.png"), full_page=True)
    await admin.get_by_role("button", name="Remove ivy@acme.test").click()
    await expect(admin.get_by_role("status")).to_have_text("ivy@acme.test was removed from the organization.")
    await invitee.goto(f"{server.url}/ui/organization/members")
    await expect(invitee.get_by_text("You are not a member of this organization")).to_be_visible()
    await invitee.goto(f"{server.url}/ui/")
    await expect(invitee.get_by_role("link", name="Members")).to_have_count(0)

    # The link works once.
    await invitee.goto(link)
    await expect(invitee.get_by_role("heading", name="This invitation has already been used")).to_be_visible()
    assert violations == []
    await invitee_context.close()
    await admin_context.close()

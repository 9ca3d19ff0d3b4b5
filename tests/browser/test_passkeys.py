"""Chromium's virtual authenticator (CDP) adds a passkey in the Security widget, signs out, and signs in with it."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from playwright.async_api import Browser, CDPSession, expect
from playwright.async_api import Error as PlaywrightError

from policy import PolicyEngine
from portal.auth import accounts, sessions
from portal.core import clock
from portal.core.tables import Passkey, Session
from tests.browser.conftest import SCREENSHOTS, LiveServer
from tests.browser.test_sign_in import wait_for_code
from tests.mailserver import Mailbox

FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)


async def add_authenticator(cdp: CDPSession, *, synced: bool) -> str:
    """A platform authenticator with discoverable credentials and user verification (a passkey provider)."""
    added = await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
                "defaultBackupEligibility": synced,
                "defaultBackupState": synced,
            }
        },
    )
    authenticator_id: str = added["authenticatorId"]
    return authenticator_id


async def test_add_a_passkey_sign_out_and_sign_in_with_it(
    browser: Browser,
    live_server_env: dict[str, str],
    mail: Mailbox,
    policy: PolicyEngine,
    db: Any,
    request: Any,
) -> None:
    live_server_env["PORTAL_SMTP_URL"] = mail.url
    live_server_env["PORTAL_BRAND_NAME"] = "Acme Cloud"
    acme = await accounts.create_organization("acme", "Acme")
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    server: LiveServer = request.getfixturevalue("live_server")

    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: (
            problems.append(msg.text)
            if msg.type == "error" and "Failed to load resource" not in msg.text
            else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    # Every request but the browser's own favicon probe succeeds (a failed fetch from passkeys.js shows here).
    page.on(
        "response",
        lambda response: (
            problems.append(f"{response.status} {response.url}")
            if response.status >= 400 and not response.url.endswith("/favicon.ico")
            else None
        ),
    )
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    laptop = await add_authenticator(cdp, synced=False)

    # A fresh sign-in with an emailed code: adding a passkey needs no further confirmation.
    await page.goto(f"{server.url}/login?return_to=/ui/account/security")
    await page.get_by_label("Email address").fill("alice@acme.test")
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    await page.get_by_label("Code").fill(await wait_for_code(mail, "alice@acme.test"))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Security", exact=True)).to_be_visible()
    await expect(page.get_by_text("You have no passkeys yet.")).to_be_visible()

    await page.get_by_role("button", name="Add a passkey").click()
    await expect(page.get_by_text("added. Rename it below if you like.")).to_be_visible()
    passkeys = page.get_by_role("list", name="Passkeys")
    await expect(passkeys.locator(".passkey-name")).to_have_text("Chrome on Linux")
    await expect(passkeys.get_by_text("Device-bound")).to_be_visible()
    [credential] = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": laptop}))["credentials"]
    assert credential["isResidentCredential"] is True
    [row] = await Passkey.select().where(Passkey.user == alice["id"])
    assert row["credential_id"] == credential["credentialId"].replace("+", "-").replace("/", "_").rstrip("=")

    # Rename it, as a person would.
    await passkeys.locator("summary", has_text="Rename").click()
    await page.get_by_label("New name").fill("Work laptop")
    await page.get_by_role("button", name="Save name").click()
    await expect(page.get_by_text("Passkey renamed to “Work laptop”.")).to_be_visible()

    # A second passkey from a password manager that syncs (backup eligible and backed up).
    await cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": laptop})
    await add_authenticator(cdp, synced=True)
    await page.get_by_role("button", name="Add a passkey").click()
    await expect(page.get_by_text("Passkey “Chrome on Linux” added.")).to_be_visible()
    await expect(passkeys.locator(".passkey-name")).to_have_text(["Work laptop", "Chrome on Linux"])
    await expect(passkeys.get_by_text("Synced")).to_be_visible()
    await expect(passkeys.get_by_text("Device-bound")).to_be_visible()

    # Two more browsers signed in earlier, for the list (and the screenshot) to show.
    now = clock.utcnow()
    for user_agent, ip, age, idle in (
        (FIREFOX_WINDOWS, "198.51.100.20", timedelta(days=3), timedelta(hours=2)),
        (SAFARI_IPHONE, "203.0.113.54", timedelta(days=1), timedelta(minutes=25)),
    ):
        _, session_id = await sessions.create_session(
            alice["id"], auth_method="email_code", organization_id=acme["id"], ip=ip, user_agent=user_agent
        )
        await Session.update(
            {
                Session.created_at: now - age,
                Session.authenticated_at: now - age,
                Session.last_seen_at: now - idle,
            }
        ).where(Session.id == session_id)
    await page.reload()
    sessions_list = page.get_by_role("list", name="Sessions")
    await expect(sessions_list.locator(".session-device")).to_have_text(
        ["Chrome 156 on Linux", "Safari 17 on iOS", "Firefox 133 on Windows"]
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "security.png"), full_page=True)

    await sessions_list.get_by_role("button", name="Revoke Firefox 133 on Windows").click()
    await expect(page.get_by_text("Session revoked.")).to_be_visible()
    await expect(sessions_list.locator(".session-device")).to_have_count(2)

    await page.locator(".user-menu summary").click()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    button = page.get_by_role("button", name="Sign in with a passkey")
    # Chromium's virtual authenticator (automatic presence) may answer the page's autofill (conditional
    # mediation) request before the button is clicked; either way the passkey is what signs in, which the
    # session rows below prove (auth_method "passkey").
    with contextlib.suppress(PlaywrightError):
        await button.click(timeout=5000)
    await expect(page.get_by_role("heading", name="Acme", exact=True)).to_be_visible()

    mine = await Session.select().where((Session.user == alice["id"]) & (Session.ip == "127.0.0.1"))
    by_method = {row["auth_method"]: row for row in mine}
    assert len(mine) == 2 and by_method["email_code"]["revoke_reason"] == "logout"
    assert by_method["passkey"]["revoked_at"] is None and "Chrome/" in by_method["passkey"]["user_agent"]
    laptop_key, synced_key = (
        await Passkey.select().where(Passkey.user == alice["id"]).order_by(Passkey.created_at)
    )
    assert laptop_key["last_used_at"] is None
    assert synced_key["last_used_at"] is not None and synced_key["backup_eligible"] is True
    assert synced_key["sign_count"] >= 1  # Chromium's virtual authenticator counts signatures

    await page.goto(f"{server.url}/ui/account/security")
    await expect(page.get_by_text("with a passkey")).to_be_visible()
    assert problems == []
    await context.close()


async def test_after_confirming_its_you_the_passkey_is_added_without_another_click(
    browser: Browser,
    live_server_env: dict[str, str],
    mail: Mailbox,
    policy: PolicyEngine,
    db: Any,
    request: Any,
) -> None:
    """Issue 16: step-up continues the original action (here, adding a passkey)."""
    live_server_env["PORTAL_SMTP_URL"] = mail.url
    acme = await accounts.create_organization("acme", "Acme")
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    server: LiveServer = request.getfixturevalue("live_server")
    token, session_id = await sessions.create_session(
        alice["id"], auth_method="email_code", organization_id=acme["id"]
    )
    # Signed in 20 minutes ago: adding a passkey asks to confirm first.
    await Session.update({Session.authenticated_at: clock.utcnow() - timedelta(minutes=20)}).where(
        Session.id == session_id
    )
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await context.add_cookies([{"name": "portal_session", "value": token, "url": server.url}])
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    await add_authenticator(cdp, synced=True)

    await page.goto(f"{server.url}/ui/account/security")
    await page.get_by_role("link", name="Add a passkey").click()
    await expect(page.get_by_role("heading", name="Confirm it's you")).to_be_visible()
    await expect(page.get_by_text("you signed in 20 minutes ago")).to_be_visible()
    await page.get_by_role("button", name="Email me a code").click()
    await page.get_by_role("textbox", name="Code").fill(await wait_for_code(mail, "alice@acme.test"))
    await page.get_by_role("button", name="Confirm", exact=True).click()
    # Back on Security, the passkey is created at once: the person asked for it before confirming.
    await expect(page.get_by_text("added. Rename it below if you like.")).to_be_visible()
    assert len(await Passkey.select().where(Passkey.user == alice["id"])) == 1
    await context.close()

"""A person signs in through /login with the code from a real SMTP server, uses the shell, signs out."""

from __future__ import annotations

import asyncio
from typing import Any

from playwright.async_api import Browser, expect

from policy import Feature, PolicyEngine
from portal.auth import accounts
from tests.browser.conftest import SCREENSHOTS, LiveServer
from tests.mailserver import Mailbox


async def wait_for_code(mail: Mailbox, address: str) -> str:
    for _ in range(100):
        if mail.to(address):
            return mail.last_code(address)
        await asyncio.sleep(0.1)
    return mail.last_code(address)  # fails with what was received


async def seed(policy: PolicyEngine) -> dict[str, Any]:
    acme = await accounts.create_organization("acme", "Acme", features=[f.value for f in Feature])
    globex = await accounts.create_organization("globex", "Globex")
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    await accounts.add_member(globex["id"], alice["id"], ["member"], known_roles=policy.roles)
    return {"acme": acme, "globex": globex, "alice": alice}


async def test_sign_in_switch_and_sign_out(
    browser: Browser,
    live_server_env: dict[str, str],
    mail: Mailbox,
    policy: PolicyEngine,
    db: Any,
    request: Any,
) -> None:
    live_server_env["PORTAL_SMTP_URL"] = mail.url
    await seed(policy)
    server: LiveServer = request.getfixturevalue("live_server")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    csp_violations: list[str] = []
    page.on(
        "console",
        lambda msg: csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )

    await page.goto(f"{server.url}/ui/")
    await expect(page).to_have_url(f"{server.url}/login?return_to=/ui/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "login.png"))

    await page.get_by_label("Email address").fill("alice@acme.test")
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    code = await wait_for_code(mail, "alice@acme.test")
    await page.get_by_label("Code").fill(code)
    await page.get_by_role("button", name="Sign in").click()

    # Two organizations and none used before: the chooser.
    await expect(page.get_by_role("heading", name="Choose an organization")).to_be_visible()
    await page.get_by_role("button", name="Acme").click()
    await expect(page.get_by_role("heading", name="Acme", exact=True)).to_be_visible()
    await expect(
        page.get_by_role("navigation", name="Portal").get_by_role("link", name="Profile")
    ).to_be_visible()
    await page.screenshot(path=str(SCREENSHOTS / "home.png"), full_page=True)

    await page.get_by_role("combobox", name="Organization").select_option(label="Globex")
    await page.get_by_role("button", name="Switch").click()
    await expect(page.get_by_role("heading", name="Globex", exact=True)).to_be_visible()

    await page.locator(".user-menu summary").click()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_text("signed out")).to_be_visible()

    # The old session is gone: the portal sends the browser back to the login page.
    await page.goto(f"{server.url}/ui/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert csp_violations == []
    await context.close()

"""An administrator brands the organization in Chromium: a too-light colour is refused with its contrast ratio,
a dark one and a PNG logo are saved and the header shows them at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Browser, expect

from portal.auth import accounts, sessions
from tests.browser.conftest import SCREENSHOTS, LiveServer
from tests.browser.test_links import png


async def test_brand_the_organization(
    browser: Browser, live_server: LiveServer, db: Any, tmp_path: Path
) -> None:
    acme = await accounts.create_organization("acme", "Acme Corporation", features=["org_branding"])
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=["admin"])
    token, _ = await sessions.create_session(alice["id"], auth_method="test", organization_id=acme["id"])
    logo = tmp_path / "acme.png"
    logo.write_bytes(png((124, 45, 18)))

    context = await browser.new_context(viewport={"width": 1280, "height": 1100})
    await context.add_cookies([{"name": "portal_session", "value": token, "url": live_server.url}])
    page = await context.new_page()
    csp: list[str] = []
    page.on("console", lambda msg: csp.append(msg.text) if "Content Security Policy" in msg.text else None)

    await page.goto(f"{live_server.url}/ui/organization/settings")
    await expect(page.get_by_role("heading", name="Branding")).to_be_visible()
    await page.get_by_label("Primary colour").fill("#f59e0b")
    await page.get_by_role("button", name="Save colour").click()
    await expect(page.locator("#primary_color-error")).to_contain_text("contrast ratio of 2.15:1")
    await expect(page.get_by_label("Primary colour")).to_have_attribute("aria-invalid", "true")

    await page.get_by_label("Primary colour").fill("#7c2d12")
    await page.get_by_role("button", name="Save colour").click()
    await expect(page.locator(".flash")).to_contain_text("Primary colour set to #7c2d12.")
    save = page.get_by_role("button", name="Save settings")
    assert await save.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(124, 45, 18)"

    await page.get_by_label("Logo", exact=True).set_input_files(str(logo))
    await page.get_by_role("button", name="Upload logo").click()
    await expect(page.locator(".flash")).to_contain_text("Logo uploaded.")
    header_logo = page.locator("header img.brand-logo")
    await expect(header_logo).to_have_attribute("alt", "Acme Corporation")
    # Loaded (not just in the page): wait for the image itself, which a busy machine serves a moment later.
    await page.wait_for_function("() => document.querySelector('header img.brand-logo').complete")
    assert await header_logo.evaluate("i => i.naturalWidth") == 96
    await page.locator("#branding").scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "organization-branding.png"), full_page=True)
    assert csp == []
    await context.close()

"""Phone-sized and desktop screens (issue 16 §7): the navigation folds into "Menu" on a phone, tables reflow
so that every row action is on screen, the account menu closes on Escape and on a click outside, and axe-core
finds no violations at either size. Screenshots of each page at 390x844 and 1280x800.

axe-core is not a dependency of the project (see the note in README "Accessibility checks"): the axe test
runs when ``PORTAL_TEST_AXE_JS`` names an ``axe.min.js`` or the ``axe_playwright_python`` package (which
bundles one) is installed, and is skipped otherwise, saying why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, expect

from policy import Feature, PolicyEngine
from portal.auth import accounts, sessions
from portal.core.tables import Organization
from tests.browser.conftest import SCREENSHOTS, LiveServer
from tests.browser.test_members import seed, watch_csp
from tests.factories import make_invitation

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
PAGES = {
    "home": "/ui/",
    "members": "/ui/organization/members",
    "settings": "/ui/organization/settings",
    "domains": "/ui/organization/domains",
    "session-policy": "/ui/organization/session-policy",
    "profile": "/ui/account/profile",
    "security": "/ui/account/security",
}


def axe_source() -> str:
    """axe-core's script: ``PORTAL_TEST_AXE_JS``, else the copy bundled in axe-playwright-python (dev extra)."""
    configured = os.environ.get("PORTAL_TEST_AXE_JS")
    if configured:
        return Path(configured).read_text()
    import axe_playwright_python

    return (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text()


async def world(policy: PolicyEngine) -> dict[str, Any]:
    found = await seed(policy)
    await Organization.update(
        {Organization.features: [f.value for f in Feature], Organization.allowed_email_domains: ["acme.test"]}
    ).where(Organization.id == found["acme"]["id"])
    await make_invitation(
        found["acme"], "a.rather.long.address@acme.test", ["member"], invited_by=found["alice"]
    )
    # A second organization, so that the header carries the organization switcher.
    globex = await accounts.create_organization("globex", "Globex Corporation International")
    await accounts.add_member(globex["id"], found["alice"]["id"], ["member"], known_roles=policy.roles)
    return found


async def open_as(
    browser: Browser, server: LiveServer, found: dict[str, Any], viewport: dict[str, int]
) -> Page:
    token, _ = await sessions.create_session(
        found["alice"]["id"], auth_method="test", organization_id=found["acme"]["id"]
    )
    context = await browser.new_context(viewport=viewport)
    await context.add_cookies([{"name": "portal_session", "value": token, "url": server.url}])
    return await context.new_page()


async def no_horizontal_scroll(page: Page) -> None:
    width = await page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= await page.evaluate("window.innerWidth"), "the page scrolls sideways"


async def test_phone_and_desktop_layouts(
    browser: Browser, live_server: LiveServer, policy: PolicyEngine, db: Any
) -> None:
    found = await world(policy)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    violations: list[str] = []

    phone = await open_as(browser, live_server, found, PHONE)
    watch_csp(phone, violations)
    for name, path in PAGES.items():
        await phone.goto(live_server.url + path)
        await no_horizontal_scroll(phone)
        # The sidebar is folded into "Menu": the page's title is near the top, not after 450 px of links.
        await expect(phone.locator(".sidenav-wide")).to_be_hidden()
        menu = phone.locator("details.sidenav-narrow > summary")
        await expect(menu).to_be_visible()
        title = phone.locator("main h1").first
        box = await title.bounding_box()
        assert box is not None and box["y"] < 260, (name, box)
        # The header is one row.
        header = await phone.locator("header.topbar").bounding_box()
        assert header is not None and header["height"] < 70, (name, header)
        await phone.screenshot(path=str(SCREENSHOTS / f"phone-{name}.png"), full_page=True)

    # Members: every row action is on screen, within the 390 px.
    await phone.goto(live_server.url + PAGES["members"])
    for action in ("Resend", "Revoke"):
        button = phone.get_by_role("button", name=action).first
        await expect(button).to_be_visible()
        box = await button.bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE["width"], (action, box)
    remove = phone.get_by_role("link", name="Remove Bob Builder")
    box = await remove.bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"]
    # The menu opens without JavaScript's help and leads to the other widgets.
    await phone.locator("details.sidenav-narrow > summary").click()
    await phone.screenshot(path=str(SCREENSHOTS / "phone-menu.png"))
    await phone.get_by_role("navigation", name="Portal").get_by_role("link", name="Security").click()
    await expect(phone.get_by_role("heading", name="Security", exact=True)).to_be_visible()

    desktop = await open_as(browser, live_server, found, DESKTOP)
    watch_csp(desktop, violations)
    for name, path in PAGES.items():
        await desktop.goto(live_server.url + path)
        await expect(desktop.locator(".sidenav-wide")).to_be_visible()
        await expect(desktop.locator("details.sidenav-narrow")).to_be_hidden()
        await desktop.screenshot(path=str(SCREENSHOTS / f"desktop-{name}.png"), full_page=True)

    # The account menu closes on Escape and on a click outside it.
    menu = desktop.locator("details.user-menu")
    await menu.locator("summary").click()
    await expect(desktop.get_by_role("link", name="Profile", exact=True).last).to_be_visible()
    await desktop.keyboard.press("Escape")
    assert await menu.evaluate("el => el.open") is False
    await expect(menu.locator("summary")).to_be_focused()
    await menu.locator("summary").click()
    assert await menu.evaluate("el => el.open") is True
    await desktop.locator("main h1").click()
    assert await menu.evaluate("el => el.open") is False
    assert violations == []


async def test_axe_finds_no_violations_at_phone_and_desktop_sizes(
    browser: Browser, live_server: LiveServer, policy: PolicyEngine, db: Any
) -> None:
    source = axe_source()
    found = await world(policy)
    report: dict[str, list[str]] = {}
    for label, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = await open_as(browser, live_server, found, viewport)
        for name, path in {**PAGES, "member": None}.items():
            if path is None:
                await page.goto(live_server.url + PAGES["members"])
                await page.get_by_role("link", name="Bob Builder", exact=True).click()
            else:
                await page.goto(live_server.url + path)
            # evaluate() runs outside the page's CSP, which (rightly) allows no injected script.
            result = await page.evaluate(
                source + "\n;axe.run(document, {resultTypes: ['violations']})"
                ".then(r => JSON.stringify(r.violations.map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))))"
            )
            found_here = json.loads(result)
            if found_here:
                report[f"{label} {name}"] = found_here
        await page.context.close()
    assert report == {}

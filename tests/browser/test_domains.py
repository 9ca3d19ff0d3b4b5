"""An administrator adds a domain in Chromium, copies the TXT record with the copy button, presses Verify now
and sees the result arrive without reloading (a real `portal serve`, embedded jobs, loopback DNS)."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Browser, expect

from portal.auth import accounts, sessions
from portal.core.tables import Domain
from tests.browser.conftest import SCREENSHOTS, LiveServer
from tests.dnsserver import LoopbackDNS, Mode, Zone, dns_server, zone
from widgets.domains.verification import record_name, record_value

__all__ = ["dns_server", "zone"]


async def test_add_copy_and_verify_a_domain(
    browser: Browser,
    live_server_env: dict[str, str],
    dns_server: LoopbackDNS,
    zone: Zone,
    db: Any,
    request: Any,
) -> None:
    live_server_env |= {
        "PORTAL_DNS_NAMESERVERS": "127.0.0.1",
        "PORTAL_DNS_PORT": str(dns_server.port),
        "PORTAL_DNS_TIMEOUT": "4",
    }
    acme = await accounts.create_organization("acme", "Acme", features=["domain_verification"])
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=["admin"])
    token, _ = await sessions.create_session(alice["id"], auth_method="test", organization_id=acme["id"])
    server: LiveServer = request.getfixturevalue("live_server")

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    await context.add_cookies([{"name": "portal_session", "value": token, "url": server.url}])
    page = await context.new_page()
    csp_violations: list[str] = []
    page.on(
        "console",
        lambda msg: csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )

    await page.goto(f"{server.url}/ui/organization/domains")
    await expect(page.get_by_role("heading", name="Domains", exact=True)).to_be_visible()
    await page.get_by_label("Domain", exact=True).fill("gmail.com")
    await page.get_by_role("button", name="Add domain").click()
    await expect(page.locator("#domain-error")).to_contain_text("gmail.com is a free email provider")
    # The error summary above the title names it too, and has the focus (issue 16).
    summary = page.locator(".error-summary")
    await expect(summary).to_contain_text("Domain: gmail.com is a free email provider")
    await expect(summary).to_be_focused()
    await page.get_by_label("Domain", exact=True).fill("Example.COM")
    await page.get_by_role("button", name="Add domain").click()
    await expect(page.locator(".flash")).to_contain_text("example.com added")

    row = await Domain.select().where(Domain.domain == "example.com").first()
    assert row is not None
    value = record_value(row["verification_token"])
    card = page.locator(f"#{row['id']}")
    await expect(card.get_by_text(value)).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(SCREENSHOTS / "domains-pending.png"), full_page=True)
    await card.get_by_role("button", name="Copy record value").click()
    await expect(card.get_by_role("button", name="Copy record value")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == value

    # DNS is slow to answer at first; the page waits, and shows the result when the check reports.
    zone.set_mode(record_name("example.com"), Mode.SILENT)
    await card.get_by_role("button", name="Verify now").click()
    await expect(page.locator(f"#{row['id']}").get_by_text("Checking the TXT record now")).to_be_visible()
    await expect(page.locator(".flash-pending")).to_contain_text("Checking the TXT record of example.com")
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(SCREENSHOTS / "domains-checking.png"), full_page=True)
    zone.publish(record_name("example.com"), value)  # the resolver's second try finds it
    await expect(page.locator(f"#{row['id']}").get_by_text("Verified", exact=True)).to_be_visible(
        timeout=15000
    )
    await expect(page.locator("#live-status")).to_contain_text("example.com: Verified on")
    await expect(page.locator(".flash-pending")).to_have_count(0)  # "Checking..." is no longer true
    await page.screenshot(path=str(SCREENSHOTS / "domains-verified.png"), full_page=True)

    assert csp_violations == []
    await context.close()

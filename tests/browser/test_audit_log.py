"""An admin reads the Audit log in Chromium: entries in words, filtered by action and actor, a bad date shown
next to its field, "Older entries", and the CSV download. Screenshots of the widget and a filtered view."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, expect

from policy import Feature, PolicyEngine
from portal.auth import accounts, sessions
from portal.core import clock
from portal.core.tables import AuditEvent
from tests.browser.conftest import SCREENSHOTS, LiveServer

URL = "/ui/organization/audit-log"


async def seed(policy: PolicyEngine) -> dict[str, Any]:
    acme = await accounts.create_organization("acme", "Acme", features=[Feature.AUDIT_LOG.value])
    people = {}
    for email, given, role in (
        ("alice@acme.test", "Alice", "admin"),
        ("bob@acme.test", "Bob", "member"),
        ("chen@acme.test", "Chen", "member"),
    ):
        user = await accounts.create_user(email, given_name=given, verified=True)
        await accounts.add_member(acme["id"], user["id"], [role], known_roles=policy.roles, actor_id=None)
        people[given.lower()] = user
    alice, bob, chen = people["alice"], people["bob"], people["chen"]
    now = clock.utcnow()
    # They joined an hour ago; what follows happened since.
    await AuditEvent.update({AuditEvent.at: now - timedelta(hours=1)}).where(
        AuditEvent.action.is_in(["organization.created", "member.added"])
    )
    story = [
        ("login.succeeded", alice, alice["email"], {"method": "passkey"}),
        ("member.invited", alice, "dana@acme.test", {"roles": ["member"]}),
        ("domain.added", alice, "dom_1", {"domain": "acme.test"}),
        ("domain.verified", None, "dom_1", {"domain": "acme.test"}),
        (
            "member.roles_changed",
            alice,
            bob["id"],
            {"email": bob["email"], "old": ["member"], "new": ["admin"]},
        ),
        (
            "settings.updated",
            bob,
            acme["id"],
            {
                "fields": ["display_name"],
                "changes": {"display_name": {"old": "Acme", "new": "Acme Corporation"}},
            },
        ),
        ("member.removed", alice, chen["id"], {"email": chen["email"], "roles": ["member"]}),
    ]
    for minutes, (action, actor, target, details) in enumerate(story):
        await AuditEvent(
            organization_id=acme["id"],
            actor_id=actor["id"] if actor else None,
            action=action,
            target=target,
            details=details,
            ip="203.0.113.7",
            at=now - timedelta(minutes=len(story) - minutes),
        ).save()
    # Older activity, enough for a second page.
    for i in range(60):
        await AuditEvent(
            organization_id=acme["id"],
            actor_id=bob["id"],
            action="login.succeeded",
            target=bob["email"],
            details={"method": "email_code"},
            ip="198.51.100.4",
            at=now - timedelta(days=3, minutes=i),
        ).save()
    return {"acme": acme, "alice": alice}


def watch_csp(page: Page, violations: list[str]) -> None:
    page.on(
        "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
    )


async def test_read_filter_page_and_export_the_audit_log(
    browser: Browser, policy: PolicyEngine, db: Any, request: Any, tmp_path: Path
) -> None:
    world = await seed(policy)
    server: LiveServer = request.getfixturevalue("live_server")
    token, _ = await sessions.create_session(
        world["alice"]["id"], auth_method="test", organization_id=world["acme"]["id"]
    )
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    await context.add_cookies([{"name": "portal_session", "value": token, "url": server.url}])
    page = await context.new_page()
    violations: list[str] = []
    watch_csp(page, violations)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    await page.goto(f"{server.url}/ui/")
    await page.get_by_role("link", name="Audit log").first.click()
    await expect(page.get_by_role("heading", name="Audit log", exact=True)).to_be_visible()
    sentences = page.locator("td.audit-sentence")
    await expect(sentences.nth(0)).to_have_text("alice@acme.test removed chen@acme.test")
    await expect(sentences.nth(1)).to_have_text(
        "bob@acme.test changed the organization's display name from “Acme” to “Acme Corporation”"
    )
    await expect(sentences.nth(2)).to_have_text(
        "alice@acme.test changed the roles of bob@acme.test from member to admin"
    )
    await expect(page.get_by_text("The domain acme.test was verified")).to_be_visible()
    await page.screenshot(path=str(SCREENSHOTS / "audit-log.png"), full_page=False)

    # Older entries, then back.
    await page.get_by_role("link", name="Older entries").click()
    await expect(sentences.first).to_have_text("bob@acme.test signed in (email code)")
    await page.get_by_role("link", name="Newest entries").click()
    await expect(sentences.first).to_have_text("alice@acme.test removed chen@acme.test")

    # Filter by action and actor.
    await page.get_by_label("Action").select_option(label="Roles changed")
    await page.get_by_label("Actor").fill("alice")
    await page.get_by_role("button", name="Apply").click()
    await expect(page.get_by_role("heading", name="Matching entries")).to_be_visible()
    await expect(sentences).to_have_count(1)
    await expect(sentences.first).to_have_text(
        "alice@acme.test changed the roles of bob@acme.test from member to admin"
    )
    await page.screenshot(path=str(SCREENSHOTS / "audit-log-filtered.png"), full_page=False)

    # The CSV download has the same filters.
    async with page.expect_download() as waiting:
        await page.get_by_role("link", name="Export as CSV").click()
    download = await waiting.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    assert download.suggested_filename.startswith("audit-log-acme-") and saved.suffix == ".csv"
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [(r["actor"], r["action"]) for r in rows] == [("alice@acme.test", "member.roles_changed")]

    # A date that is not one: explained next to the field.
    await page.goto(f"{server.url}{URL}?since=last+week")
    error = page.locator("#since-error")
    await expect(error).to_have_text("Error: Enter a date like 2026-12-03.")
    await expect(page.get_by_label("From")).to_have_attribute("aria-invalid", "true")
    await page.screenshot(path=str(SCREENSHOTS / "audit-log-error.png"), full_page=False)
    assert violations == []
    await context.close()

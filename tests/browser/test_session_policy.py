"""An admin tightens the session policy in Chromium: the custom fields appear with "Custom", bad input is
explained next to its field, the preview counts the sessions the change ends, confirming ends them.
Screenshots of the Session policy widget and its confirmation page."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from playwright.async_api import Browser, Page, expect

from policy import Feature, PolicyEngine
from portal.auth import accounts, sessions
from portal.core import clock
from portal.core.tables import Organization, Session
from tests.browser.conftest import SCREENSHOTS, LiveServer

URL = "/ui/organization/session-policy"


async def seed(policy: PolicyEngine) -> dict[str, Any]:
    acme = await accounts.create_organization("acme", "Acme", features=[Feature.SESSION_POLICY.value])
    alice = await accounts.create_user(
        "alice@acme.test", given_name="Alice", family_name="Admin", verified=True
    )
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    bob = await accounts.create_user("bob@acme.test", given_name="Bob", verified=True)
    chen = await accounts.create_user("chen@acme.test", given_name="Chen", verified=True)
    for user in (bob, chen):
        await accounts.add_member(acme["id"], user["id"], ["member"], known_roles=policy.roles)
    now = clock.utcnow()
    # Bob's laptop idle for 3 hours, his phone signed in 10 hours ago, Chen active a minute ago.
    for user, created, idle in (
        (bob, timedelta(hours=5), timedelta(hours=3)),
        (bob, timedelta(hours=10), timedelta(minutes=2)),
        (chen, timedelta(hours=1), timedelta(minutes=1)),
    ):
        _, session_id = await sessions.create_session(
            user["id"], auth_method="test", organization_id=acme["id"]
        )
        await Session.update({Session.created_at: now - created, Session.last_seen_at: now - idle}).where(
            Session.id == session_id
        )
    return {"acme": acme, "alice": alice}


def watch_csp(page: Page, violations: list[str]) -> None:
    page.on(
        "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
    )


async def test_tighten_the_session_policy(
    browser: Browser, policy: PolicyEngine, db: Any, request: Any
) -> None:
    world = await seed(policy)
    server: LiveServer = request.getfixturevalue("live_server")
    token, _ = await sessions.create_session(
        world["alice"]["id"], auth_method="test", organization_id=world["acme"]["id"]
    )
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    await context.add_cookies([{"name": "portal_session", "value": token, "url": server.url}])
    page = await context.new_page()
    violations: list[str] = []
    watch_csp(page, violations)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    await page.goto(f"{server.url}{URL}")
    await expect(page.get_by_role("heading", name="Session policy", exact=True)).to_be_visible()
    await expect(page.locator("#active-sessions")).to_have_text("4 active sessions")
    # With the application defaults the number fields are hidden; choosing Custom shows them.
    await expect(page.get_by_label("Absolute timeout", exact=True)).to_be_hidden()
    await page.get_by_label("Custom timeouts").check()
    await expect(page.get_by_label("Absolute timeout", exact=True)).to_be_visible()

    await page.get_by_label("Absolute timeout", exact=True).fill("8")
    await page.get_by_label("Absolute timeout unit").select_option("hours")
    await page.get_by_label("Idle timeout", exact=True).fill("12")
    await page.get_by_label("Idle timeout unit").select_option("hours")
    await page.get_by_role("button", name="Save policy").click()
    error = page.locator("#idle_value-error")
    await expect(error).to_contain_text("cannot be longer than the absolute timeout (8 hours)")
    await expect(page.get_by_label("Idle timeout", exact=True)).to_have_attribute("aria-invalid", "true")

    await page.get_by_label("Idle timeout", exact=True).fill("2")
    await page.get_by_role("button", name="Save policy").click()
    await expect(page.get_by_role("heading", name="This ends 2 active sessions now")).to_be_visible()
    await page.screenshot(path=str(SCREENSHOTS / "session-policy-confirm.png"), full_page=True)
    await page.get_by_role("button", name="Save and end 2 sessions").click()

    await expect(page.get_by_role("status")).to_contain_text("2 active sessions ended.")
    await expect(page.locator("#active-sessions")).to_have_text("2 active sessions")
    await expect(page.locator("#row-absolute td").last).to_contain_text("8 hours")
    await expect(page.locator("#row-idle td").last).to_contain_text("2 hours")
    await page.screenshot(path=str(SCREENSHOTS / "session-policy.png"), full_page=True)

    stored = await Organization.select(
        Organization.session_policy_source,
        Organization.session_absolute_timeout,
        Organization.session_idle_timeout,
    ).where(Organization.id == world["acme"]["id"])
    assert stored == [
        {
            "session_policy_source": "custom",
            "session_absolute_timeout": 8 * 3600,
            "session_idle_timeout": 7200,
        }
    ]
    reasons = sorted(r["revoke_reason"] or "-" for r in await Session.select(Session.revoke_reason))
    assert reasons == ["-", "-", "absolute", "idle"]

    # Narrow screens: the table turns into labelled rows, nothing overflows.
    await page.set_viewport_size({"width": 390, "height": 844})
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    assert violations == []
    await context.close()

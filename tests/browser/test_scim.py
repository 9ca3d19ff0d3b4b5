"""An administrator creates a SCIM directory in Chromium, copies the token shown once, and the IdP (here an
HTTP client with that token) provisions people and a group; the admin maps the group to a role, runs the
self-test and sees the requests listed (a real `portal serve`)."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import Browser, expect

from portal.auth import accounts, sessions
from portal.core.tables import Membership, User
from tests.browser.conftest import SCREENSHOTS, LiveServer


async def test_create_a_directory_provision_and_map_a_group(browser: Browser, db: Any, request: Any) -> None:
    acme = await accounts.create_organization("acme", "Acme", features=["scim"])
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=["admin"])
    session_token, _ = await sessions.create_session(
        alice["id"], auth_method="test", organization_id=acme["id"]
    )
    server: LiveServer = request.getfixturevalue("live_server")

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    await context.add_cookies([{"name": "portal_session", "value": session_token, "url": server.url}])
    page = await context.new_page()
    csp_violations: list[str] = []
    page.on(
        "console",
        lambda msg: csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    await page.goto(f"{server.url}/ui/organization/scim")
    await expect(page.get_by_role("heading", name="SCIM provisioning", exact=True)).to_be_visible()
    await page.get_by_role("button", name="Create directory").click()
    await expect(page.get_by_text("Give the directory a name")).to_be_visible()
    await page.get_by_label("Name").fill("Okta production")
    await page.get_by_label("Okta").check()
    await page.get_by_role("button", name="Create directory").click()
    await expect(page.get_by_role("heading", name="Your new token")).to_be_visible()
    await page.get_by_role("button", name="Copy token", exact=True).click()
    await expect(page.get_by_role("button", name="Copy token", exact=True)).to_have_text("Copied")
    token = await page.evaluate("navigator.clipboard.readText()")
    assert token.startswith("portal_scim_")
    await page.get_by_role("button", name="Copy base URL").first.click()
    base_url = await page.evaluate("navigator.clipboard.readText()")
    assert base_url.startswith(f"{server.url}/scim/v2/scd_")
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(SCREENSHOTS / "scim-token.png"), full_page=True)

    # The identity provider, with the copied values.
    headers = {"authorization": f"Bearer {token}", "content-type": "application/scim+json"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as idp:
        ids = []
        for email, given in (("dana@acme.test", "Dana"), ("eli@acme.test", "Eli")):
            body = {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": email,
                "name": {"givenName": given, "familyName": "Example"},
                "emails": [{"value": email, "primary": True}],
            }
            created = await idp.post(base_url + "/Users", json=body)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        group = await idp.post(
            base_url + "/Groups",
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Engineering",
                "members": [{"value": i} for i in ids],
            },
        )
        assert group.status_code == 201
        await idp.get(base_url + "/Users", params={"filter": "userName eq"})  # a bad filter, listed as 400

    await page.reload()
    await expect(page.get_by_role("heading", name="Your new token")).to_have_count(0)  # shown once
    await expect(page.locator('[data-count="users"]')).to_have_text("2")
    await expect(page.locator('[data-count="groups"]')).to_have_text("1")
    row = page.locator("#groups tr", has_text="Engineering")
    await row.get_by_label("admin").check()
    await row.get_by_role("button", name="Save roles for Engineering").click()
    await expect(page.locator(".flash")).to_contain_text("Members of the group now get admin")
    dana = await User.select(User.id).where(User.email == "dana@acme.test").first()
    member = (
        await Membership.select(Membership.roles)
        .where((Membership.user == dana["id"]) & (Membership.organization == acme["id"]))
        .first()
        .output(load_json=True)
    )
    assert member["roles"] == ["admin", "member"]

    await page.get_by_role("button", name="Run self-test").click()
    await expect(page.locator(".flash")).to_contain_text("Self-test passed")
    await expect(page.locator(".scim-steps li")).to_have_count(7)
    await expect(page.locator(".scim-requests")).to_contain_text("invalidFilter")
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(SCREENSHOTS / "scim-directory.png"), full_page=True)

    await page.goto(f"{server.url}/ui/organization/scim")
    await expect(page.get_by_role("link", name="Okta production")).to_be_visible()
    await page.screenshot(path=str(SCREENSHOTS / "scim-list.png"), full_page=True)
    assert csp_violations == []
    await context.close()

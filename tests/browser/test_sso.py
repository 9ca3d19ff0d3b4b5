"""An administrator sets up SAML single sign-on in Chromium from the guide, against an independent pysaml2
IdP (reached through Playwright's network routing as https://idp.example.test), tests the connection,
activates it; then a user signs in through home realm discovery, and once SSO is enforced another goes from
the email form straight to the IdP. Screenshots of the widget, a guide and the
test result."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, Route, expect

from portal.auth import accounts, sessions
from portal.core.tables import Domain, Membership, SsoConnection
from portal.sso import saml
from tests.browser.conftest import SCREENSHOTS, LiveServer
from tests.samlidp import SamlIdp, make_idp


def idp_page(acs_url: str, saml_response: str) -> str:
    """What an IdP answers after sign-in: a form that posts the response to the ACS by itself."""
    return (
        "<!doctype html><html lang=en><head><title>IdP</title></head><body>"
        f'<form method="post" action="{html.escape(acs_url)}">'
        f'<input type="hidden" name="SAMLResponse" value="{html.escape(saml_response)}">'
        "<button type=submit>Continue</button></form>"
        "<script>document.forms[0].submit()</script></body></html>"
    )


async def test_set_up_test_activate_and_sign_in_through_home_realm_discovery(
    browser: Browser, live_server_env: dict[str, str], db: Any, request: Any, tmp_path: Path
) -> None:
    acme = await accounts.create_organization("acme", "Acme", features=["sso", "domain_verification"])
    await Domain(
        organization=acme["id"],
        domain="acme.test",
        status="verified",
        verified_domain="acme.test",
        verification_token="t",
    ).save()
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=["admin"])
    token, _ = await sessions.create_session(alice["id"], auth_method="test", organization_id=acme["id"])
    server: LiveServer = request.getfixturevalue("live_server")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.add_cookies([{"name": "portal_session", "value": token, "url": server.url}])
    page = await context.new_page()
    csp_violations: list[str] = []
    page.on(
        "console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None
    )

    # 1. Create the connection from the Okta guide.
    await page.goto(f"{server.url}/ui/organization/sso")
    await expect(page.get_by_role("heading", name="Single sign-on", exact=True)).to_be_visible()
    await page.get_by_label("Okta").check()
    await page.get_by_label("Name (optional)").fill("Acme Okta")
    await page.get_by_role("button", name="Add connection").click()
    await expect(page.locator(".flash")).to_contain_text("Connection created")
    row = await SsoConnection.select().where(SsoConnection.organization == acme["id"]).first()
    sp = saml.ServiceProvider.of(server.url, row["id"])
    await expect(page.locator("#sp-acs-url")).to_have_text(sp.acs_url)
    guide = page.locator(".sso-guide")
    await expect(guide.get_by_role("heading", name="Setup guide: Okta")).to_be_visible()
    await expect(guide.locator("code", has_text=sp.entity_id).first).to_be_visible()
    await guide.screenshot(path=str(SCREENSHOTS / "sso-guide.png"))

    # 2. "In the IdP": it reads our SP metadata (downloaded from the page's URL) and publishes its own.
    async with httpx.AsyncClient() as http:
        metadata = await http.get(sp.metadata_url)
    assert metadata.status_code == 200
    (tmp_path / "sp.xml").write_bytes(metadata.content)
    idp: SamlIdp = make_idp(tmp_path, [tmp_path / "sp.xml"])
    (tmp_path / "idp-metadata.xml").write_bytes(idp.metadata())
    users = {"email": "alice@acme.test"}

    async def answer(route: Route) -> None:
        authn = idp.parse_request(route.request.url)
        body = idp.respond(
            sp_entity_id=sp.entity_id,
            acs_url=sp.acs_url,
            in_response_to=str(authn.message.id),
            email=users["email"],
            attributes={
                "email": [users["email"]],
                "givenName": ["Grace"],
                "sn": ["Hopper"],
                "groups": ["Engineering"],
            },
        )
        await route.fulfill(status=200, content_type="text/html", body=idp_page(sp.acs_url, body))

    await context.route("https://idp.example.test/**", answer)

    # 3. Upload the IdP's metadata file.
    await page.locator("#source-upload").check()
    await page.locator("#metadata_file").set_input_files(str(tmp_path / "idp-metadata.xml"))
    await page.get_by_role("button", name="Save the IdP's settings").click()
    await expect(page.locator(".flash")).to_contain_text("Metadata uploaded.")
    await expect(page.locator(".sso-facts").first).to_contain_text("https://idp.example.test/saml/sso")

    # 4. Test connection: a real round trip, no session.
    await page.get_by_role("button", name="Test connection").click()
    await expect(page.get_by_role("heading", name="The connection works")).to_be_visible()
    await expect(page.locator(".sso-attributes")).to_contain_text("Engineering")
    await page.screenshot(path=str(SCREENSHOTS / "sso-test.png"), full_page=True)
    await page.get_by_role("link", name="Back to Acme Okta").click()
    await expect(page.get_by_text("passed")).to_be_visible()

    # 5. Activate.
    await page.get_by_role("button", name="Activate").click()
    await expect(page.locator(".flash")).to_contain_text("Acme Okta is active.")
    await page.screenshot(path=str(SCREENSHOTS / "sso-connection.png"), full_page=True)
    await page.goto(f"{server.url}/ui/organization/sso")
    await expect(page.locator(".sso-table")).to_contain_text("Active")
    await page.screenshot(path=str(SCREENSHOTS / "sso.png"), full_page=True)

    # 6. A new user signs in through home realm discovery.
    users["email"] = "grace@acme.test"
    visitor = await browser.new_context(viewport={"width": 1280, "height": 900})
    await visitor.route("https://idp.example.test/**", answer)
    user_page = await visitor.new_page()
    user_page.on(
        "console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None
    )
    await user_page.goto(f"{server.url}/login")
    await user_page.get_by_label("Email address").fill("grace@acme.test")
    await user_page.get_by_role("button", name="Continue", exact=True).click()
    await expect(user_page.get_by_role("heading", name="Sign in to Acme")).to_be_visible()
    await user_page.screenshot(path=str(SCREENSHOTS / "sso-login.png"))
    await user_page.get_by_role("link", name="Continue with Acme Okta").click()
    await expect(user_page).to_have_url(f"{server.url}/ui/")
    await expect(user_page.get_by_text("grace@acme.test").first).to_be_attached()
    member = await Membership.select().where(Membership.email == "grace@acme.test").first()
    assert member is not None and member["source"] == "sso" and member["organization"] == acme["id"]
    await visitor.close()

    # 7. Enforce SSO: the next person goes from the email form straight to the IdP (a meta-refresh page
    #    leaves the form, whose redirect chain the browser holds to CSP form-action 'self').
    await page.goto(f"{server.url}/ui/organization/sso")
    await page.get_by_role("button", name="Enforce SSO").click()
    await expect(page.locator(".flash")).to_contain_text("SSO is enforced")
    users["email"] = "lin@acme.test"
    enforced = await browser.new_context(viewport={"width": 1280, "height": 900})
    await enforced.route("https://idp.example.test/**", answer)
    lin = await enforced.new_page()
    lin.on(
        "console", lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None
    )
    await lin.goto(f"{server.url}/login")
    await lin.get_by_label("Email address").fill("lin@acme.test")
    await lin.get_by_role("button", name="Continue", exact=True).click()
    await expect(lin).to_have_url(f"{server.url}/ui/")
    assert await Membership.count().where(Membership.email == "lin@acme.test") == 1
    assert csp_violations == []
    await enforced.close()
    await context.close()

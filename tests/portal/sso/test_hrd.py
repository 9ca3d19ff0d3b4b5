"""Home realm discovery and Enforce SSO on the hosted login, end to end with the pysaml2 IdP: the email's
verified domain leads to the organization's IdP; enforcement refuses codes (break-glass for holders of
sk_org_sso_manage) and passkeys."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest

from policy import PolicyEngine
from portal.auth import login
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Membership, Organization, Session
from tests.factories import make_member, make_user
from tests.mailserver import Mailbox
from tests.portal.sso.test_flow import continue_url, post_acs, setup
from tests.samlidp import IDP_SSO_URL

pytestmark = pytest.mark.db
HTML = {"accept": "text/html"}


@pytest.fixture
def settings(settings: Settings, mail: Mailbox) -> Settings:
    return msgspec.structs.replace(settings, smtp_url=mail.url)


async def csrf(client: httpx.AsyncClient) -> str:
    page = await client.get("/login", headers=HTML)
    match = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


async def enter_email(client: httpx.AsyncClient, email: str, **extra: str) -> httpx.Response:
    return await client.post(
        "/login", data={"_csrf_token": await csrf(client), "email": email, **extra}, headers=HTML
    )


async def enforce(org: dict[str, Any]) -> None:
    await Organization.update({Organization.sso_enforced: True}).where(Organization.id == org["id"])


async def test_a_verified_domain_is_offered_its_idp_and_a_code_instead(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient, mail: Mailbox
) -> None:
    org, connection_id, _, _ = await setup(tmp_path, settings)
    await make_user("ada@acme.test")
    offer = await enter_email(client, "Ada@ACME.test", return_to="/ui/organization/members")
    assert offer.status_code == 200
    assert f"Sign in to {org['display_name']}" in html.unescape(offer.text)
    link = f'href="/sso/saml/{connection_id}/login?return_to=%2Fui%2Forganization%2Fmembers"'
    assert link in offer.text and "Continue with Okta" in offer.text
    assert mail.received == []
    # "Email me a code instead" works while SSO is not enforced.
    instead = await enter_email(client, "ada@acme.test", method="code")
    assert instead.status_code == 303 and instead.headers["location"].startswith("/login/code?")
    assert mail.last_code("ada@acme.test")


async def test_other_domains_and_inactive_connections_keep_the_code_form(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient, mail: Mailbox
) -> None:
    await setup(tmp_path, settings, status="inactive")
    await make_user("ada@acme.test")
    response = await enter_email(client, "ada@acme.test")
    assert response.status_code == 303 and response.headers["location"].startswith("/login/code?")
    assert mail.last_code("ada@acme.test")


async def test_without_the_sso_feature_no_realm(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient, mail: Mailbox
) -> None:
    org, _, _, _ = await setup(tmp_path, settings)
    await Organization.update({Organization.features: []}).where(Organization.id == org["id"])
    await make_user("ada@acme.test")
    response = await enter_email(client, "ada@acme.test")
    assert response.status_code == 303 and response.headers["location"].startswith("/login/code?")


async def test_enforced_sso_sends_the_user_to_the_idp_and_signs_them_in(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient, mail: Mailbox
) -> None:
    org, connection_id, idp, sp = await setup(tmp_path, settings, group_roles={"Admins": ["admin"]})
    await enforce(org)
    response = await enter_email(client, "grace@acme.test", return_to="/ui/organization/members")
    assert (
        continue_url(response) == f"/sso/saml/{connection_id}/login?return_to=%2Fui%2Forganization%2Fmembers"
    )
    to_idp = await client.get(continue_url(response))
    assert to_idp.status_code == 303 and to_idp.headers["location"].startswith(IDP_SSO_URL)
    request = idp.parse_request(to_idp.headers["location"])
    body = idp.respond(
        sp_entity_id=sp.entity_id,
        acs_url=sp.acs_url,
        in_response_to=str(request.message.id),
        email="grace@acme.test",
        attributes={"email": ["grace@acme.test"], "groups": ["Admins", "Everyone"]},
    )
    signed_in = await post_acs(client, sp, body)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/organization/members"
    member = (
        await Membership.select().where(Membership.organization == org["id"]).output(load_json=True).first()
    )
    assert member["source"] == "sso" and member["roles"] == ["admin"]
    assert mail.received == []


async def test_enforced_sso_refuses_codes_except_break_glass(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient, mail: Mailbox, policy: PolicyEngine
) -> None:
    org, _, _, _ = await setup(tmp_path, settings)
    admin = await make_user("root@acme.test")
    await make_member(org, admin, ["admin"])
    member = await make_user("bob@acme.test")
    await make_member(org, member, ["member"])
    await enforce(org)
    page = await client.get("/login", headers=HTML)
    assert 'href="/login?method=code">Single sign-on not working? Use an email code</a>' in page.text
    break_glass = await client.get("/login?method=code", headers=HTML)
    assert '<input type="hidden" name="method" value="code">' in break_glass.text
    # The break-glass link: a plain member gets the neutral answer and no email.
    refused = await enter_email(client, "bob@acme.test", method="code")
    assert refused.status_code == 303 and refused.headers["location"].startswith("/login/code?")
    assert mail.to("bob@acme.test") == []
    reasons = [
        e["details"]["reason"]
        for e in await AuditEvent.select().where(AuditEvent.action == "login.failed").output(load_json=True)
    ]
    assert reasons == ["sso_enforced"]
    # A holder of sk_org_sso_manage gets a code and signs in with it.
    allowed = await enter_email(client, "root@acme.test", method="code")
    challenge = parse_qs(urlsplit(allowed.headers["location"]).query)["challenge"][0]
    code = mail.last_code("root@acme.test")
    page = await client.get(allowed.headers["location"], headers=HTML)
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token
    done = await client.post(
        "/login/code",
        data={"_csrf_token": token.group(1), "challenge": challenge, "code": code},
        headers=HTML,
    )
    assert done.status_code == 303
    assert await Session.count().where(Session.user == admin["id"]) == 1
    # Passkeys are refused for everyone at the domain, break-glass holders included.
    assert await login.sso_refuses("root@acme.test", admin["id"], policy, method="passkey") is not None
    assert await login.sso_refuses("root@acme.test", admin["id"], policy, method="email_code") is None
    assert await login.sso_refuses("bob@acme.test", member["id"], policy, method="email_code") is not None
    assert await login.sso_refuses("bob@elsewhere.test", None, policy, method="passkey") is None


async def test_a_code_sent_before_enforcement_is_refused(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient, mail: Mailbox
) -> None:
    org, _, _, _ = await setup(tmp_path, settings)
    bob = await make_user("bob@acme.test")
    await make_member(org, bob, ["member"])
    sent = await enter_email(client, "bob@acme.test", method="code")
    challenge = parse_qs(urlsplit(sent.headers["location"]).query)["challenge"][0]
    code = mail.last_code("bob@acme.test")
    await enforce(org)
    page = await client.get(sent.headers["location"], headers=HTML)
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token
    refused = await client.post(
        "/login/code",
        data={"_csrf_token": token.group(1), "challenge": challenge, "code": code},
        headers=HTML,
    )
    assert refused.status_code == 403
    assert "Your organization requires single sign-on" in refused.text
    assert await Session.count().where(Session.user == bob["id"]) == 0


async def test_enforced_with_two_connections_offers_both_and_only_the_break_glass_code(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    from portal.core.tables import SsoConnection

    org, first, _, _ = await setup(tmp_path, settings)
    second = SsoConnection(organization=org["id"], protocol="oidc", name="Entra (OIDC)", status="active")
    await second.save()
    await enforce(org)
    offer = await enter_email(client, "ada@acme.test")
    assert offer.status_code == 200
    assert f'href="/sso/saml/{first}/login?return_to=%2Fui%2F"' in offer.text
    assert f'href="/sso/oidc/{second.id}/login?return_to=%2Fui%2F"' in offer.text
    assert "Email me a code (administrators)" in offer.text and "Email me a code instead" not in offer.text
    assert "requires single sign-on" in offer.text

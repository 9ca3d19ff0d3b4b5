"""Enforce SSO refuses passkey sign-in through the real route (a software authenticator that py_webauthn
verifies), for break-glass holders too; the same passkey works again once SSO is no longer enforced."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from portal.core.tables import AuditEvent, Domain, Organization, Session, SsoConnection
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in
from tests.portal.auth.test_passkey_login import ORIGIN, options, other_browser
from tests.softauthn import LOGIN, SoftAuthenticator, post_json, register

pytestmark = pytest.mark.db


async def test_enforced_sso_refuses_passkeys(client: httpx.AsyncClient, db: Any) -> None:
    acme = await make_org("acme", "Acme", features=["sso"])
    await Domain(
        organization=acme["id"],
        domain="acme.test",
        status="verified",
        verified_domain="acme.test",
        verification_token="t",
    ).save()
    await SsoConnection(
        organization=acme["id"],
        protocol="saml",
        name="Okta",
        status="active",
        idp_sso_url="https://idp.example.test/sso",
    ).save()
    alice = await make_user("alice@acme.test")
    await make_member(acme, alice, ["admin"])  # holds sk_org_sso_manage: break-glass covers codes only
    authenticator = SoftAuthenticator(ORIGIN)
    await sign_in(client, alice, acme)
    await register(client, authenticator, await csrf_token(client, "/ui/account/security"))
    await Organization.update({Organization.sso_enforced: True}).where(Organization.id == acme["id"])
    before = await Session.count().where(Session.user == alice["id"])

    async with other_browser(client) as browser:
        token, request_options = await options(browser)
        response = await post_json(browser, LOGIN, token, {"credential": authenticator.get(request_options)})
        assert response.status_code == 403
        assert response.json()["error"]["reason"] == "sso_enforced"
        assert "requires single sign-on" in response.json()["error"]["detail"]
        assert await Session.count().where(Session.user == alice["id"]) == before
        [failed] = (
            await AuditEvent.select()
            .where((AuditEvent.action == "login.failed") & (AuditEvent.actor_id == alice["id"]))
            .output(load_json=True)
        )
        assert failed["details"]["reason"] == "sso_enforced"

        await Organization.update({Organization.sso_enforced: False}).where(Organization.id == acme["id"])
        token, request_options = await options(browser)
        response = await post_json(browser, LOGIN, token, {"credential": authenticator.get(request_options)})
        assert response.status_code == 200, response.text
        assert await Session.count().where(Session.user == alice["id"]) == before + 1

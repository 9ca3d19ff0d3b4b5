"""SP-initiated SAML sign-in through the real routes, with a pysaml2 IdP: JIT membership, replay, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Domain, Membership, Session, SsoConnection
from portal.sso import saml
from tests.factories import make_org
from tests.samlidp import IDP_ENTITY_ID, IDP_SSO_URL, SamlIdp, make_idp

pytestmark = pytest.mark.db


async def setup(
    tmp_path: Path, settings: Settings, *, status: str = "active", **columns: Any
) -> tuple[dict[str, Any], str, SamlIdp, saml.ServiceProvider]:
    org = await make_org(features=["sso"])
    await Domain(
        organization=org["id"],
        domain="acme.test",
        status="verified",
        verified_domain="acme.test",
        verification_token="t",
    ).save()
    connection = SsoConnection(
        organization=org["id"],
        protocol="saml",
        name="Okta",
        status=status,
        idp_entity_id=IDP_ENTITY_ID,
        idp_sso_url=IDP_SSO_URL,
        **columns,
    )
    await connection.save()
    sp = saml.ServiceProvider.of(settings.origin, connection.id)
    (tmp_path / "sp.xml").write_bytes(await_metadata(sp))
    idp = make_idp(tmp_path, [tmp_path / "sp.xml"])
    await SsoConnection.update({SsoConnection.idp_certificate: idp.certificate_pem}).where(
        SsoConnection.id == connection.id
    )
    return org, connection.id, idp, sp


def await_metadata(sp: saml.ServiceProvider) -> bytes:
    return saml.sp_metadata(sp)


async def start(client: httpx.AsyncClient, connection_id: str, idp: SamlIdp) -> str:
    response = await client.get(f"/sso/saml/{connection_id}/login?return_to=/ui/organization/members")
    assert response.status_code == 303
    assert response.headers["location"].startswith(IDP_SSO_URL)
    request = idp.parse_request(response.headers["location"])
    return str(request.message.id)


async def post_acs(client: httpx.AsyncClient, sp: saml.ServiceProvider, body: str) -> httpx.Response:
    return await client.post(
        sp.acs_url.replace("http://localhost:8000", ""),
        data={"SAMLResponse": body},
        headers={"accept": "text/html"},
    )


async def test_sp_initiated_sign_in_creates_a_session_and_a_jit_member(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    org, connection_id, idp, sp = await setup(tmp_path, settings)
    metadata = await client.get(f"/sso/saml/{connection_id}/metadata")
    assert metadata.status_code == 200
    assert saml.parse_xml(metadata.content).get("entityID") == sp.entity_id
    request_id = await start(client, connection_id, idp)
    body = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=request_id, email="ada@acme.test"
    )
    response = await post_acs(client, sp, body)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/organization/members"
    assert "portal_session" in response.headers.get("set-cookie", "")
    member = (
        await Membership.select().where(Membership.organization == org["id"]).output(load_json=True).first()
    )
    assert member["email"] == "ada@acme.test" and member["source"] == "sso" and member["roles"] == ["member"]
    session = await Session.select().where(Session.active_organization == org["id"]).first()
    assert session["auth_method"] == "sso"
    home = await client.get("/ui/", headers={"accept": "text/html"})
    assert home.status_code == 200 and "ada@acme.test" in home.text

    # The same response again: refused, no new session, audited.
    client.cookies.clear()
    replay = await post_acs(client, sp, body)
    assert replay.status_code == 400
    assert "already used" in replay.text or "answers no pending sign-in" in replay.text
    assert await Session.count().where(Session.active_organization == org["id"]) == 1
    failed = await AuditEvent.select().where(AuditEvent.action == "sso.login.failed").output(load_json=True)
    assert failed[-1]["details"]["reason"] in {"replay", "in_response_to"}


async def test_group_mapping_sets_roles(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    org, connection_id, idp, sp = await setup(tmp_path, settings, group_roles={"Admins": ["admin"]})
    request_id = await start(client, connection_id, idp)
    body = idp.respond(
        sp_entity_id=sp.entity_id,
        acs_url=sp.acs_url,
        in_response_to=request_id,
        email="root@acme.test",
        attributes={"email": ["root@acme.test"], "groups": ["Admins", "Staff"]},
    )
    assert (await post_acs(client, sp, body)).status_code == 303
    member = (
        await Membership.select().where(Membership.organization == org["id"]).output(load_json=True).first()
    )
    assert member["roles"] == ["admin"]


async def test_email_outside_verified_domains_is_refused(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    org, connection_id, idp, sp = await setup(tmp_path, settings)
    request_id = await start(client, connection_id, idp)
    body = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=request_id, email="eve@evil.test"
    )
    response = await post_acs(client, sp, body)
    assert response.status_code == 400
    assert "outside the organization" in response.text
    assert await Membership.count().where(Membership.organization == org["id"]) == 0
    assert "set-cookie" not in response.headers or "portal_session" not in response.headers["set-cookie"]


async def test_unsolicited_and_unknown_requests_are_refused(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    org, _connection_id, idp, sp = await setup(tmp_path, settings)
    unsolicited = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=None, email="ada@acme.test"
    )
    response = await post_acs(client, sp, unsolicited)
    assert response.status_code == 400 and "IdP-initiated sign-in is off" in response.text
    forged = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to="ssr_notours", email="ada@acme.test"
    )
    response = await post_acs(client, sp, forged)
    assert response.status_code == 400 and "answers no pending sign-in" in response.text
    garbage = await post_acs(client, sp, "not base64 !!")
    assert garbage.status_code == 400 and "not base64" in garbage.text
    assert await Membership.count().where(Membership.organization == org["id"]) == 0


async def test_an_inactive_connection_does_not_sign_in(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    _, connection_id, _, _ = await setup(tmp_path, settings, status="draft")
    response = await client.get(f"/sso/saml/{connection_id}/login", headers={"accept": "text/html"})
    assert response.status_code == 400 and "not active" in response.text
    assert (await client.get("/sso/saml/sso_nope/metadata")).status_code == 404


def continue_url(response: httpx.Response) -> str:
    """Where a "continue to your identity provider" page (meta refresh, after a form) moves on to."""
    import html
    import re

    assert response.status_code == 200, response.text
    match = re.search(r'<meta http-equiv="refresh" content="0;url=([^"]+)">', response.text)
    assert match, "no meta refresh"
    return html.unescape(match.group(1))


async def test_an_organization_without_the_feature_signs_nobody_in(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    from portal.core.tables import Organization

    org, connection_id, idp, sp = await setup(tmp_path, settings)
    request_id = await start(client, connection_id, idp)
    body = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=request_id, email="ada@acme.test"
    )
    # The app owner switches SSO off for the organization between the request and the response.
    await Organization.update({Organization.features: []}).where(Organization.id == org["id"])
    refused = await post_acs(client, sp, body)
    assert refused.status_code == 400
    assert "Single sign-on is not enabled for this organization." in refused.text
    assert await Session.count() == 0
    start_again = await client.get(f"/sso/saml/{connection_id}/login")
    assert start_again.status_code == 400


async def test_idp_initiated_sign_in_when_the_connection_allows_it(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    org, _connection_id, idp, sp = await setup(tmp_path, settings, allow_idp_initiated=True)
    unsolicited = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=None, email="ada@acme.test"
    )
    response = await post_acs(client, sp, unsolicited)
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    assert await Session.count().where(Session.active_organization == org["id"]) == 1
    # Still single use.
    client.cookies.clear()
    again = await post_acs(client, sp, unsolicited)
    assert again.status_code == 400 and "already used" in again.text
    assert await Session.count().where(Session.active_organization == org["id"]) == 1


async def test_starting_sign_ins_is_rate_limited_per_address(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    from portal.core.tables import SsoRequest
    from portal.sso.routes import START_PER_IP

    _, connection_id, _, _ = await setup(tmp_path, settings)
    limit, _window = START_PER_IP
    for _ in range(limit):
        assert (await client.get(f"/sso/saml/{connection_id}/login")).status_code == 303
    refused = await client.get(f"/sso/saml/{connection_id}/login", headers={"accept": "text/html"})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert "Too many single sign-on attempts" in refused.text
    assert await SsoRequest.count() == limit

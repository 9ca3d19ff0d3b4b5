"""Test connection (SAML) with the pysaml2 IdP: a real round trip that creates no session and ends on a
page listing the attributes; each failure names the fix on the IdP side."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Membership, Session, SsoConnection
from portal.sso import saml
from tests.factories import make_member, make_user, sign_in
from tests.portal.sso.test_flow import continue_url, post_acs, setup
from tests.samlidp import IDP_SSO_URL, SamlIdp, make_certificate

pytestmark = pytest.mark.db
HTML = {"accept": "text/html"}


async def start_test(
    client: httpx.AsyncClient, tmp_path: Path, settings: Settings, **columns: Any
) -> tuple[dict[str, Any], str, SamlIdp, saml.ServiceProvider, str, dict[str, Any]]:
    org, connection_id, idp, sp = await setup(tmp_path, settings, status="draft", **columns)
    admin = await make_user("root@acme.test")
    await make_member(org, admin, ["admin"])
    await sign_in(client, admin, org)
    page = await client.get(f"/ui/organization/sso/{connection_id}", headers=HTML)
    assert "Test connection" in page.text
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token
    started = await client.post(
        f"/ui/organization/sso/{connection_id}/test", data={"_csrf_token": token.group(1)}, headers=HTML
    )
    assert continue_url(started).startswith(IDP_SSO_URL)
    request_id = str(idp.parse_request(continue_url(started)).message.id)
    return org, connection_id, idp, sp, request_id, admin


async def test_a_passing_test_lists_the_attributes_and_creates_no_session(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    org, connection_id, idp, sp, request_id, _admin = await start_test(
        client, tmp_path, settings, group_roles={"Engineering": ["admin"]}
    )
    body = idp.respond(
        sp_entity_id=sp.entity_id,
        acs_url=sp.acs_url,
        in_response_to=request_id,
        email="ada@acme.test",
        attributes={
            "email": ["ada@acme.test"],
            "givenName": ["Ada"],
            "sn": ["Lovelace"],
            "groups": ["Engineering", "Everyone"],
        },
    )
    sessions_before = await Session.count()
    result = await post_acs(client, sp, body)
    assert result.status_code == 200, result.text
    page = " ".join(result.text.split())
    assert "The connection works" in page
    assert "no session was created and nobody was added" in page
    assert "<dt>Roles they would get</dt><dd>admin</dd>" in page
    assert "<td><code>groups</code></td><td>Engineering, Everyone</td>" in page
    assert "<dt>Name</dt><dd>Ada Lovelace</dd>" in page
    assert "set-cookie" not in result.headers or "portal_session" not in result.headers["set-cookie"]
    assert await Session.count() == sessions_before
    assert await Membership.count().where(Membership.organization == org["id"]) == 1  # the admin only
    row = await SsoConnection.select().where(SsoConnection.id == connection_id).first()
    assert row["test_ok"] is True and row["status"] == "draft"
    connection_page = await client.get(f"/ui/organization/sso/{connection_id}", headers=HTML)
    assert "passed" in connection_page.text
    [tested] = (
        await AuditEvent.select().where(AuditEvent.action == "sso.connection.tested").output(load_json=True)
    )
    assert tested["details"] == {"ok": True, "email": "ada@acme.test"}


async def failing(client: httpx.AsyncClient, sp: saml.ServiceProvider, body: str, connection_id: str) -> str:
    result = await post_acs(client, sp, body)
    assert result.status_code == 400
    row = await SsoConnection.select().where(SsoConnection.id == connection_id).first()
    assert row["test_ok"] is False and row["tested_at"] is not None
    [failed] = await AuditEvent.select().where(AuditEvent.action == "sso.login.failed").output(load_json=True)
    assert failed["details"]["test"] is True
    page = " ".join(result.text.split())
    assert "The test failed" in page and "Nobody was signed in" in page
    return page


async def test_wrong_audience(tmp_path: Path, settings: Settings, client: httpx.AsyncClient) -> None:
    _, connection_id, idp, sp, request_id, _ = await start_test(client, tmp_path, settings)
    body = idp.respond(
        sp_entity_id=sp.entity_id,
        acs_url=sp.acs_url,
        in_response_to=request_id,
        email="ada@acme.test",
        audience="https://wrong.example.com/sp",
    )
    page = await failing(client, sp, body, connection_id)
    assert (
        "The Audience URI (SP entity id) in the IdP must be exactly this connection&#39;s entity id." in page
    )


async def test_wrong_acs_url(tmp_path: Path, settings: Settings, client: httpx.AsyncClient) -> None:
    _, connection_id, idp, sp, request_id, _ = await start_test(client, tmp_path, settings)
    body = idp.respond(
        sp_entity_id=sp.entity_id,
        acs_url="https://portal.example.com/wrong/acs",
        in_response_to=request_id,
        email="ada@acme.test",
    )
    page = await failing(client, sp, body, connection_id)
    assert "The response was sent to https://portal.example.com/wrong/acs, not to this ACS URL." in page
    assert "must be exactly this connection&#39;s ACS URL" in page


async def test_wrong_certificate(tmp_path: Path, settings: Settings, client: httpx.AsyncClient) -> None:
    _, connection_id, idp, sp, request_id, _ = await start_test(client, tmp_path, settings)
    _, _, other = make_certificate(tmp_path, "other")
    await SsoConnection.update({SsoConnection.idp_certificate: other}).where(
        SsoConnection.id == connection_id
    )
    body = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=request_id, email="ada@acme.test"
    )
    page = await failing(client, sp, body, connection_id)
    assert "download the IdP&#39;s current signing certificate" in page


async def test_expired_certificate(tmp_path: Path, settings: Settings, client: httpx.AsyncClient) -> None:
    _, connection_id, idp, sp, request_id, _ = await start_test(client, tmp_path, settings)
    _, _, expired = make_certificate(tmp_path, "old", days=-1, not_before_days=-30)
    await SsoConnection.update({SsoConnection.idp_certificate: expired}).where(
        SsoConnection.id == connection_id
    )
    body = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=request_id, email="ada@acme.test"
    )
    page = await failing(client, sp, body, connection_id)
    assert "The configured IdP certificate has expired." in page
    assert "create a new one in the IdP and upload it here" in page


async def test_clock_skew(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, connection_id, idp, sp, request_id, _ = await start_test(client, tmp_path, settings)
    body = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=request_id, email="ada@acme.test"
    )
    real = clock.utcnow
    monkeypatch.setattr(clock, "utcnow", lambda: real() + timedelta(minutes=9))  # IdP lifetime is 15 minutes
    ok_within = await post_acs(client, sp, body)
    assert ok_within.status_code == 200  # still valid: accepted
    # Start again; this time our clock is 20 minutes ahead of the IdP's.
    monkeypatch.setattr(clock, "utcnow", real)
    page = await client.get(f"/ui/organization/sso/{connection_id}", headers=HTML)
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token
    started = await client.post(
        f"/ui/organization/sso/{connection_id}/test", data={"_csrf_token": token.group(1)}, headers=HTML
    )
    request_id = str(idp.parse_request(continue_url(started)).message.id)
    body = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=request_id, email="ada@acme.test"
    )
    monkeypatch.setattr(clock, "utcnow", lambda: real() + timedelta(minutes=20))
    page_text = await failing(client, sp, body, connection_id)
    assert "The assertion expired at" in page_text
    assert "check the clocks (NTP) on both sides" in page_text


async def test_missing_email_attribute(tmp_path: Path, settings: Settings, client: httpx.AsyncClient) -> None:
    from portal.sso import service
    from portal.sso.problems import SsoProblem

    row = {"attribute_mapping": {"email": "mail"}, "allow_other_domains": True, "organization": "org_x"}
    with pytest.raises(SsoProblem) as caught:
        await service.outcome_of(row, "test", "/ui/", {"givenName": ["Ada"]}, "a1b2c3")
    assert caught.value.code == "missing_email"
    assert "Map an email attribute in the IdP" in caught.value.fix


async def test_expired_requests_and_assertion_ids_are_purged(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    from portal.core.tables import SsoAssertion, SsoRequest
    from portal.jobs import registered_crons
    from portal.sso import service

    _, _, idp, sp, request_id, _ = await start_test(client, tmp_path, settings)
    body = idp.respond(
        sp_entity_id=sp.entity_id, acs_url=sp.acs_url, in_response_to=request_id, email="ada@acme.test"
    )
    assert (await post_acs(client, sp, body)).status_code == 200
    assert await SsoRequest.count() == 1 and await SsoAssertion.count() == 1
    assert await service.purge_expired() == {"requests": 0, "assertions": 0}
    later = clock.utcnow() + timedelta(days=2)
    assert await service.purge_expired(later) == {"requests": 1, "assertions": 1}
    assert await SsoRequest.count() == 0 and await SsoAssertion.count() == 0
    assert "purge_sso_requests" in {job.name for job in registered_crons()}

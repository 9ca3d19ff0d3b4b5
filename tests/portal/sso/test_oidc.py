"""OIDC RP sign-in against an independent provider on loopback (PyPI ``oidc-provider-mock``, built on
Authlib's server): discovery, code + PKCE + nonce + state, ID token verified against its JWKS; JIT
membership with group → role mapping; refusals (another browser, replay, wrong secret, private issuer);
Test connection; and the ID-token checks against tokens we sign ourselves (wrong key, audience, nonce,
expiry beyond the skew)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from oidc_provider_mock import run_server_in_thread

from portal.core import crypto
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Domain, Membership, Session, SsoConnection
from portal.sso import oidc
from portal.sso.problems import SsoProblem
from tests.factories import make_member, make_org, make_user, sign_in
from tests.portal.sso.test_flow import continue_url

pytestmark = [
    pytest.mark.db,
    # oidc-provider-mock 0.3.4 calls Authlib 1.9's deprecated get_jwt_config (its server thread would turn
    # the warning into a 500 under -W error).
    pytest.mark.filterwarnings("ignore:get_jwt_config.*is deprecated:DeprecationWarning"),
]
HTML = {"accept": "text/html"}


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with run_server_in_thread(require_nonce=True) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, sso_allow_private_addresses=True)


async def register_client(issuer: str, redirect_uri: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{issuer}/oauth2/clients", json={"redirect_uris": [redirect_uri]})
        assert response.status_code == 201, response.text
        return dict(response.json())


async def set_user(issuer: str, sub: str, claims: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.put(f"{issuer}/users/{sub}", json=claims)).status_code == 204


async def setup(
    settings: Settings, issuer: str, *, status: str = "active", secret: str | None = None, **columns: Any
) -> tuple[dict[str, Any], str]:
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
        protocol="oidc",
        provider="generic-oidc",
        name="Keycloak",
        status=status,
        **columns,
    )
    await connection.save()
    client = await register_client(issuer, oidc.redirect_uri(settings, connection.id))
    sealed = crypto.seal(settings, "sso.oidc_client_secret", (secret or client["client_secret"]).encode())
    await SsoConnection.update(
        {
            SsoConnection.oidc_issuer: issuer,
            SsoConnection.oidc_client_id: client["client_id"],
            SsoConnection.oidc_client_secret: sealed,
        }
    ).where(SsoConnection.id == connection.id)
    return org, connection.id


async def approve(authorize_url: str, sub: str) -> str:
    """The user signs in at the provider; returns the callback path (with code and state) it redirects to."""
    async with httpx.AsyncClient() as http:
        response = await http.post(authorize_url, data={"sub": sub})
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


async def start(client: httpx.AsyncClient, connection_id: str, issuer: str) -> str:
    response = await client.get(f"/sso/oidc/{connection_id}/login?return_to=/ui/organization/members")
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(f"{issuer}/oauth2/authorize?")
    query = parse_qs(urlsplit(location).query)
    assert query["response_type"] == ["code"] and query["code_challenge_method"] == ["S256"]
    assert query["nonce"][0] and query["state"][0] and query["scope"] == ["openid email profile"]
    return location


async def test_sign_in_through_the_provider_creates_a_session_and_a_member_with_mapped_roles(
    settings: Settings, client: httpx.AsyncClient, provider: str
) -> None:
    org, connection_id = await setup(settings, provider, group_roles={"Admins": ["admin"]})
    await set_user(
        provider,
        "ada-sub",
        {
            "email": "Ada@acme.test",
            "email_verified": True,
            "given_name": "Ada",
            "family_name": "Lovelace",
            "groups": ["Admins"],
        },
    )
    callback = await approve(await start(client, connection_id, provider), "ada-sub")
    assert callback.startswith(f"/sso/oidc/{connection_id}/callback?")
    response = await client.get(callback, headers=HTML)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/organization/members"
    member = (
        await Membership.select().where(Membership.organization == org["id"]).output(load_json=True).first()
    )
    assert member["email"] == "ada@acme.test" and member["source"] == "sso" and member["roles"] == ["admin"]
    session = await Session.select().where(Session.active_organization == org["id"]).first()
    assert session["auth_method"] == "sso"
    home = await client.get("/ui/", headers=HTML)
    assert home.status_code == 200 and "ada@acme.test" in home.text
    # The same callback again (a replayed code and state): refused, no second session.
    client.cookies.delete("portal_session")
    again = await client.get(callback, headers=HTML)
    assert again.status_code == 400
    assert "answers no pending sign-in" in again.text
    assert await Session.count().where(Session.active_organization == org["id"]) == 1


async def test_a_callback_in_another_browser_is_refused(
    settings: Settings, client: httpx.AsyncClient, provider: str
) -> None:
    org, connection_id = await setup(settings, provider)
    callback = await approve(await start(client, connection_id, provider), "eve@acme.test")
    client.cookies.clear()  # the victim's browser never started this sign-in
    response = await client.get(callback, headers=HTML)
    assert response.status_code == 400
    assert "The sign-in was started in another browser." in response.text
    assert await Session.count() == 0
    [failed] = await AuditEvent.select().where(AuditEvent.action == "sso.login.failed").output(load_json=True)
    assert failed["details"]["reason"] == "oidc_state" and failed["organization_id"] == org["id"]


async def test_a_wrong_client_secret_is_refused_with_the_fix(
    settings: Settings, client: httpx.AsyncClient, provider: str
) -> None:
    _, connection_id = await setup(settings, provider, secret="not-the-secret")
    callback = await approve(await start(client, connection_id, provider), "ada@acme.test")
    response = await client.get(callback, headers=HTML)
    assert response.status_code == 400
    assert "The token endpoint refused the code (HTTP 401" in response.text
    assert "Check the client id and client secret" in response.text
    assert await Session.count() == 0


async def test_an_email_outside_the_verified_domains_is_refused(
    settings: Settings, client: httpx.AsyncClient, provider: str
) -> None:
    _, connection_id = await setup(settings, provider)
    callback = await approve(await start(client, connection_id, provider), "mallory@evil.test")
    response = await client.get(callback, headers=HTML)
    assert response.status_code == 400
    assert "mallory@evil.test is outside the organization&#39;s verified domains." in response.text
    assert await Session.count() == 0


async def test_a_private_issuer_is_refused_without_the_setting(
    settings: Settings, client: httpx.AsyncClient, provider: str, app: Any
) -> None:
    _, connection_id = await setup(settings, provider)
    app.state.settings = msgspec.structs.replace(settings, sso_allow_private_addresses=False)
    response = await client.get(f"/sso/oidc/{connection_id}/login")
    assert response.status_code == 400
    assert "The URL must start with https://." in response.text or "private or local address" in response.text


async def test_test_connection_shows_the_claims_and_creates_no_session(
    settings: Settings, client: httpx.AsyncClient, provider: str
) -> None:
    org, connection_id = await setup(settings, provider, status="draft", group_roles={"Admins": ["admin"]})
    admin = await make_user("root@acme.test")
    await make_member(org, admin, ["admin"])
    await sign_in(client, admin, org)
    page = await client.get(f"/ui/organization/sso/{connection_id}", headers=HTML)
    import re

    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token
    started = await client.post(
        f"/ui/organization/sso/{connection_id}/test", data={"_csrf_token": token.group(1)}, headers=HTML
    )
    assert continue_url(started).startswith(f"{provider}/oauth2/authorize?")
    assert "portal_sso_browser=" in started.headers["set-cookie"]
    await set_user(provider, "grace-sub", {"email": "grace@acme.test", "groups": ["Admins", "Staff"]})
    result = await client.get(await approve(continue_url(started), "grace-sub"), headers=HTML)
    assert result.status_code == 200, result.text
    assert "The connection works" in result.text and "grace@acme.test" in result.text
    assert "<code>groups</code>" in result.text and "Admins, Staff" in result.text
    assert await Session.count().where(Session.user != admin["id"]) == 0
    assert await Membership.count().where(Membership.organization == org["id"]) == 1
    row = await SsoConnection.select().where(SsoConnection.id == connection_id).first()
    assert row["test_ok"] is True and row["tested_at"] is not None and row["status"] == "draft"


# --- the ID token checks, with tokens we sign ourselves ---------------------------------------------------

ISSUER, CLIENT = "https://idp.example.com", "portal-app"


def keys() -> tuple[RSAKey, dict[str, Any]]:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256", "use": "sig"})
    return key, KeySet([key]).as_dict(private=False)


def token(key: RSAKey, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "u1",
        "exp": now + 300,
        "iat": now,
        "nonce": "n1",
        "email": "ada@acme.test",
        **claims,
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid}, body, key)


def verify(id_token: str, jwks: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return oidc.verify_id_token(
        id_token, jwks, **{"issuer": ISSUER, "client_id": CLIENT, "nonce": "n1", "skew": 120, **kwargs}
    )


def test_id_token_checks() -> None:
    key, jwks = keys()
    assert verify(token(key), jwks)["email"] == "ada@acme.test"
    other, _ = keys()
    cases = [
        (token(other), "oidc_signature"),
        (token(key, iss="https://evil.example.com"), "oidc_issuer"),
        (token(key, aud="another-client"), "oidc_audience"),
        (token(key, aud=[CLIENT, "other"], azp="other"), "oidc_audience"),
        (token(key, nonce="n2"), "oidc_nonce"),
        (token(key, exp=int(time.time()) - 121), "expired"),
        (token(key, iat=int(time.time()) + 600), "not_yet_valid"),
        ("not.a.jwt", "oidc_id_token"),
    ]
    for value, code in cases:
        with pytest.raises(SsoProblem) as caught:
            verify(value, jwks)
        assert caught.value.code == code, (code, caught.value.message)
    # Within the clock skew: accepted.
    assert verify(token(key, exp=int(time.time()) - 60), jwks)["sub"] == "u1"
    # An HS256 token keyed with anything is refused (only asymmetric algorithms).
    from joserfc.jwk import OctKey

    secret = OctKey.import_key(b"k" * 32, {"kid": "k1"})
    hs = jwt.encode(
        {"alg": "HS256", "kid": "k1"},
        {"iss": ISSUER, "aud": CLIENT, "exp": int(time.time()) + 60, "nonce": "n1"},
        secret,
    )
    with pytest.raises(SsoProblem):
        verify(hs, {"keys": [secret.as_dict()]})


async def test_the_email_is_read_from_userinfo_when_the_id_token_has_none(
    settings: Settings, client: httpx.AsyncClient, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some IdPs leave the email out of the ID token. The provider's real userinfo answer is used, with a
    ``sub`` check; we only drop the email from the real ID token's claims on their way in."""
    org, connection_id = await setup(settings, provider)
    await set_user(provider, "ada-sub", {"email": "ada@acme.test", "given_name": "Ada"})
    real_verify = oidc.verify_id_token
    seen: list[dict[str, Any]] = []

    def without_email(*args: Any, **kwargs: Any) -> dict[str, Any]:
        claims = {k: v for k, v in real_verify(*args, **kwargs).items() if k != "email"}
        seen.append(claims)
        return claims

    monkeypatch.setattr(oidc, "verify_id_token", without_email)
    response = await client.get(
        await approve(await start(client, connection_id, provider), "ada-sub"), headers=HTML
    )
    assert response.status_code == 303, response.text
    assert seen and "email" not in seen[0]
    member = await Membership.select().where(Membership.organization == org["id"]).first()
    assert member["email"] == "ada@acme.test"

    # A userinfo answer for another subject is refused.
    async def other_subject(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"sub": "someone-else", "email": "eve@acme.test"}

    monkeypatch.setattr(oidc, "fetch_userinfo", other_subject)
    client.cookies.delete("portal_session")
    refused = await client.get(
        await approve(await start(client, connection_id, provider), "ada-sub"), headers=HTML
    )
    assert refused.status_code == 400
    assert "another subject" in refused.text


async def test_a_failing_oidc_test_is_recorded_with_the_fix(
    settings: Settings, client: httpx.AsyncClient, provider: str
) -> None:
    import re

    org, connection_id = await setup(settings, provider, status="draft", secret="wrong-secret")
    admin = await make_user("root@acme.test")
    await make_member(org, admin, ["admin"])
    await sign_in(client, admin, org)
    page = await client.get(f"/ui/organization/sso/{connection_id}", headers=HTML)
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token
    started = await client.post(
        f"/ui/organization/sso/{connection_id}/test", data={"_csrf_token": token.group(1)}, headers=HTML
    )
    result = await client.get(await approve(continue_url(started), "grace@acme.test"), headers=HTML)
    assert result.status_code == 400
    assert "The test failed" in result.text and "Check the client id and client secret" in result.text
    row = await SsoConnection.select().where(SsoConnection.id == connection_id).first()
    assert row["test_ok"] is False and row["tested_at"] is not None
    [failed] = await AuditEvent.select().where(AuditEvent.action == "sso.login.failed").output(load_json=True)
    assert failed["details"]["test"] is True and failed["details"]["reason"] == "oidc_token"

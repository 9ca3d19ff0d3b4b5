"""The whole flow with an independent relying party: Authlib's OAuth 2.0 / OIDC client against a real
``portal serve`` process over HTTP, signing in through the hosted login (code from a real SMTP server); ID
and logout tokens verified with joserfc against the JWKS fetched over HTTP."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from policy import Feature, PolicyEngine
from portal.auth import accounts
from portal.oidc import clients
from tests.conftest import POLICY_DIR, free_port, portal_serve
from tests.mailserver import Mailbox
from tests.portal.oidc.peers import Listener, UserAgent, backchannel_listener

pytestmark = pytest.mark.db
CALLBACK = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect
AFTER_LOGOUT = "http://127.0.0.1:9/signed-out"
SCOPE = "openid email profile"


@pytest.fixture
def listener() -> Iterator[Listener]:
    with backchannel_listener() as found:
        yield found


@pytest.fixture
def portal(database_url: str, tmp_path: Path, mail: Mailbox, db: Any) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
        "PORTAL_SECRET_KEY": "oidc-test-secret-" + "k" * 32,
        "PORTAL_PUBLIC_URL": url,
        "PORTAL_SMTP_URL": mail.url,
        "PORTAL_OIDC_LOGOUT_INTERVAL": "1",
        "PORTAL_LOG_LEVEL": "WARNING",
    }
    with portal_serve(env, port, tmp_path / "server.log"):
        yield url


def jwks_over_http(base: str) -> KeySet:
    return KeySet.import_key_set(httpx.get(f"{base}/oauth/jwks").json())


def verify(token: str, base: str, **expected: Any) -> dict[str, Any]:
    """joserfc: signature against the published JWKS, then the registered claims."""
    decoded = jwt.decode(token, jwks_over_http(base))
    options = {"iss": {"essential": True, "value": base}, "exp": {"essential": True}}
    options |= {name: {"essential": True, "value": value} for name, value in expected.items()}
    JWTClaimsRegistry(**options).validate(decoded.claims)
    return dict(decoded.claims)


def rp_client(client_id: str, secret: str | None) -> OAuth2Client:
    return OAuth2Client(
        client_id=client_id,
        client_secret=secret,
        scope=SCOPE,
        redirect_uri=CALLBACK,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic" if secret else "none",
    )


def authorize(rp: OAuth2Client, base: str, **extra: str) -> tuple[str, str, str, str]:
    """Authlib builds the authorization URL (state, nonce, PKCE S256): (url, state, nonce, verifier)."""
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(16)
    url, state = rp.create_authorization_url(
        f"{base}/oauth/authorize", code_verifier=verifier, nonce=nonce, **extra
    )
    return url, state, nonce, verifier


async def test_authlib_code_flow_refresh_reuse_logout(
    portal: str, listener: Listener, mail: Mailbox, policy: PolicyEngine
) -> None:
    acme = await accounts.create_organization(
        "acme", "Acme", external_id="ext-acme", features=[f.value for f in Feature]
    )
    globex = await accounts.create_organization("globex", "Globex")
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    await accounts.add_member(globex["id"], alice["id"], ["member"], known_roles=policy.roles)
    client, secret = await clients.create(
        "Acme CRM",
        redirect_uris=[CALLBACK],
        post_logout_redirect_uris=[AFTER_LOGOUT],
        backchannel_logout_uri=listener.url,
    )
    assert secret is not None and secret.startswith("portal_client_secret_")

    # Discovery as the RP reads it.
    meta = httpx.get(f"{portal}/.well-known/openid-configuration").json()  # noqa: ASYNC210 (the server is another process)
    assert meta["issuer"] == portal
    assert meta["token_endpoint"] == f"{portal}/oauth/token"
    assert meta["code_challenge_methods_supported"] == ["S256"]

    rp = rp_client(client.id, secret)
    browser = UserAgent(portal)
    # 1. No portal session: the authorize request goes to the hosted login, which comes back to it.
    url, state, nonce, verifier = authorize(rp, portal, organization_id="ext-acme")
    login_page = browser.follow(url, stop_at=CALLBACK)
    assert urlsplit(str(login_page.url)).path == "/login"
    callback = browser.sign_in(login_page, "alice@acme.test", mail, stop_at=CALLBACK)
    assert callback.status_code == 302, (callback.url, callback.status_code, callback.text[:3000])
    location = callback.headers["location"]
    assert location.startswith(CALLBACK)
    assert parse_qs(urlsplit(location).query)["state"] == [state]
    assert parse_qs(urlsplit(location).query)["iss"] == [portal]

    token = rp.fetch_token(
        f"{portal}/oauth/token", authorization_response=location, code_verifier=verifier, state=state
    )
    assert token["token_type"].lower() == "bearer"
    id_claims = verify(token["id_token"], portal, aud=client.id, nonce=nonce, sub=alice["id"])
    assert id_claims["email"] == "alice@acme.test" and id_claims["email_verified"] is True
    assert id_claims["name"] == "Alice Admin"
    assert id_claims["org_id"] == acme["id"] and id_claims["org_roles"] == ["admin"]
    assert "sk_org_sso_manage" in id_claims["permissions"]
    assert id_claims["amr"] == ["otp"] and isinstance(id_claims["auth_time"], int)
    sid = id_claims["sid"]
    access = jwt.decode(token["access_token"], jwks_over_http(portal))
    assert access.header["typ"] == "at+jwt"
    assert access.claims["client_id"] == client.id and access.claims["sid"] == sid

    # 2. userinfo with the access token (Authlib adds the bearer header).
    rp.token = token
    answer = rp.get(f"{portal}/oauth/userinfo")
    assert answer.status_code == 200
    info = answer.json()
    assert info["sub"] == alice["id"] and info["email"] == "alice@acme.test"
    assert info["org_id"] == acme["id"] and "sk_org_users_invite" in info["permissions"]

    # 3. Refresh rotates; using the old refresh token again revokes the family (the new one dies too).
    first_refresh = token["refresh_token"]
    refreshed = rp.refresh_token(f"{portal}/oauth/token", refresh_token=first_refresh)
    assert refreshed["refresh_token"] != first_refresh
    assert "nonce" not in verify(refreshed["id_token"], portal, aud=client.id, sid=sid)
    with pytest.raises(OAuthError) as reused:
        rp.refresh_token(f"{portal}/oauth/token", refresh_token=first_refresh)
    assert reused.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as family:
        rp.refresh_token(f"{portal}/oauth/token", refresh_token=refreshed["refresh_token"])
    assert family.value.error == "invalid_grant"

    # 4. Shared session: authorize again (prompt=none, the other organization) needs no sign-in.
    url, state, nonce, verifier = authorize(rp, portal, prompt="none", organization_id=globex["id"])
    again = browser.follow(url, stop_at=CALLBACK)
    location = again.headers["location"]
    assert "code=" in location, location
    second = rp.fetch_token(
        f"{portal}/oauth/token", authorization_response=location, code_verifier=verifier, state=state
    )
    second_claims = verify(second["id_token"], portal, aud=client.id, nonce=nonce, sid=sid)
    assert second_claims["org_id"] == globex["id"] and second_claims["org_roles"] == ["member"]
    assert "sk_org_sso_manage" not in second_claims["permissions"]
    # ... and /ui/ opens signed in, in that organization.
    home = browser.http.get("/ui/")
    assert home.status_code == 200 and "Globex" in home.text

    # prompt=none from a browser with no portal session: login_required, back at the app.
    stranger = UserAgent(portal)
    url, state, _, _ = authorize(rp, portal, prompt="none")
    refused = stranger.follow(url, stop_at=CALLBACK)
    query = parse_qs(urlsplit(refused.headers["location"]).query)
    assert query["error"] == ["login_required"] and query["state"] == [state]
    stranger.close()

    # 5. RP-initiated logout with id_token_hint: signed out, sent back with state.
    out = browser.http.get(
        "/oauth/logout",
        params={
            "id_token_hint": second["id_token"],
            "post_logout_redirect_uri": AFTER_LOGOUT,
            "state": "bye",
        },
    )
    assert out.status_code == 303 and out.headers["location"] == f"{AFTER_LOGOUT}?state=bye"
    assert browser.http.get("/ui/").status_code in (302, 303)

    # 6. The back-channel logout token arrives (from the job, not the request).
    received = listener.wait(1)
    assert len(received) == 1, f"no logout token ({listener.hits} requests)"
    decoded = jwt.decode(received[0], jwks_over_http(portal))
    assert decoded.header["typ"] == "logout+jwt"
    logout_claims = decoded.claims
    JWTClaimsRegistry(
        iss={"essential": True, "value": portal},
        aud={"essential": True, "value": client.id},
        sid={"essential": True, "value": sid},
        sub={"essential": True, "value": alice["id"]},
        jti={"essential": True},
        iat={"essential": True},
    ).validate(logout_claims)
    assert logout_claims["events"] == {"http://schemas.openid.net/event/backchannel-logout": {}}
    assert "nonce" not in logout_claims
    # ... and the tokens of that session are dead.
    with pytest.raises(OAuthError) as dead:
        rp.refresh_token(f"{portal}/oauth/token", refresh_token=second["refresh_token"])
    assert dead.value.error == "invalid_grant"
    rp.token = second
    assert rp.get(f"{portal}/oauth/userinfo").status_code == 401
    browser.close()
    rp.close()

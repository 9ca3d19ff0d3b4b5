"""Bad input at the authorize, token, revoke and logout endpoints (issue item 7): the RFC's error code, a
clear description, nothing issued, never a redirect to an unregistered URI, never a 500."""

from __future__ import annotations

import base64
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from policy import PolicyEngine
from portal.core.tables import OidcGrant, OidcRefreshToken
from portal.oidc import clients, tokens
from tests.conftest import FrozenClock
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in

pytestmark = pytest.mark.db
CALLBACK = "https://app.example/callback"


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"authorization": f"Basic {raw}"}


@pytest.fixture
async def setup(client: httpx.AsyncClient, policy: PolicyEngine) -> dict[str, Any]:
    org = await make_org()
    user = await make_user()
    await make_member(org, user, roles=["admin"])
    await sign_in(client, user, org)
    app, secret = await clients.create("CRM", redirect_uris=[CALLBACK], post_logout_redirect_uris=[CALLBACK])
    spa, _ = await clients.create("SPA", redirect_uris=[CALLBACK], public=True)
    assert secret is not None
    return {"org": org, "user": user, "app": app, "secret": secret, "spa": spa}


def auth_query(client_id: str, **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": CALLBACK,
        "scope": "openid email",
        "state": "s1",
        **extra,
    }
    return "/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v != ""})


def redirect_query(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, (response.status_code, response.text[:300])
    location = response.headers["location"]
    assert location.startswith(CALLBACK)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def issued() -> tuple[int, int]:
    """(codes handed out, refresh tokens issued)."""
    return await OidcGrant.count(), await OidcRefreshToken.count()


async def get_code(client: httpx.AsyncClient, client_id: str, verifier: str | None = None) -> str:
    extra = {"code_challenge": tokens.s256(verifier), "code_challenge_method": "S256"} if verifier else {}
    return redirect_query(await client.get(auth_query(client_id, **extra)))["code"]


async def exchange(
    client: httpx.AsyncClient, setup: dict[str, Any], code: str, **form: str
) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, **form}
    return await client.post("/oauth/token", data=data, headers=basic(setup["app"].id, setup["secret"]))


# --- authorize: errors that must not redirect --------------------------------------------------------------


async def test_unknown_client_gets_an_error_page(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    response = await client.get(auth_query("client_nope"), headers={"accept": "text/html"})
    assert response.status_code == 400 and "location" not in response.headers
    assert "Unknown client" in response.text
    assert await issued() == (0, 0)


async def test_unregistered_redirect_uri_gets_an_error_page(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    query = auth_query(setup["app"].id).replace(
        urlencode({"redirect_uri": CALLBACK}), urlencode({"redirect_uri": "https://evil.example/cb"})
    )
    response = await client.get(query, headers={"accept": "text/html"})
    assert response.status_code == 400 and "location" not in response.headers
    assert "redirect URI is not registered" in response.text
    assert "evil.example" not in response.headers.get("location", "")
    assert await issued() == (0, 0)


# --- authorize: errors sent back to the registered redirect URI ---------------------------------------------


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "email"}, "invalid_scope"),
        ({"scope": "openid admin"}, "invalid_scope"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
        ({"prompt": "sometimes"}, "invalid_request"),
        ({"max_age": "soon"}, "invalid_request"),
    ],
)
async def test_bad_authorize_parameters(
    client: httpx.AsyncClient, setup: dict[str, Any], extra: dict[str, str], error: str
) -> None:
    query = redirect_query(await client.get(auth_query(setup["app"].id, **extra)))
    assert query["error"] == error and query["error_description"] and query["state"] == "s1"
    assert "code" not in query
    assert await issued() == (0, 0)


async def test_public_client_must_use_pkce(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    query = redirect_query(await client.get(auth_query(setup["spa"].id)))
    assert query["error"] == "invalid_request" and "PKCE" in query["error_description"]
    assert await issued() == (0, 0)


async def test_organization_of_which_the_user_is_not_a_member(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    other = await make_org()
    query = redirect_query(await client.get(auth_query(setup["app"].id, organization_id=other["id"])))
    assert query["error"] == "access_denied"
    assert await issued() == (0, 0)


# --- token endpoint -----------------------------------------------------------------------------------------


async def test_wrong_pkce_verifier_issues_nothing(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    code = await get_code(client, setup["app"].id, verifier="v" * 50)
    wrong = await exchange(client, setup, code, code_verifier="w" * 50)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert "PKCE" in wrong.json()["error_description"]
    assert await OidcRefreshToken.count() == 0


async def test_missing_pkce_verifier(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    code = await get_code(client, setup["app"].id, verifier="v" * 50)
    missing = await exchange(client, setup, code)
    assert (
        missing.json()["error"] == "invalid_grant" and "code_verifier" in missing.json()["error_description"]
    )
    assert await OidcRefreshToken.count() == 0


async def test_reused_code_revokes_what_it_issued(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    code = await get_code(client, setup["app"].id)
    first = await exchange(client, setup, code)
    assert first.status_code == 200, first.text
    again = await exchange(client, setup, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    refresh = await client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": first.json()["refresh_token"]},
        headers=basic(setup["app"].id, setup["secret"]),
    )
    assert refresh.json()["error"] == "invalid_grant"
    userinfo = await client.get(
        "/oauth/userinfo", headers={"authorization": f"Bearer {first.json()['access_token']}"}
    )
    assert userinfo.status_code == 401


async def test_expired_code(
    client: httpx.AsyncClient, setup: dict[str, Any], frozen_clock: FrozenClock, policy: PolicyEngine
) -> None:
    await sign_in(client, setup["user"], setup["org"])  # a session made at the frozen time
    code = await get_code(client, setup["app"].id)
    frozen_clock.advance(seconds=61)
    expired = await exchange(client, setup, code)
    assert expired.json() == {
        "error": "invalid_grant",
        "error_description": "the authorization code has expired",
    }
    assert await OidcRefreshToken.count() == 0


async def test_wrong_client_secret(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    code = await get_code(client, setup["app"].id)
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        headers=basic(setup["app"].id, "portal_client_secret_wrong"),
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert await OidcRefreshToken.count() == 0
    # The code was not spent by the failed attempt: the real client can still use it.
    assert (await exchange(client, setup, code)).status_code == 200


async def test_code_bound_to_client_and_redirect_uri(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    code = await get_code(client, setup["app"].id)
    other, other_secret = await clients.create("Other", redirect_uris=[CALLBACK])
    assert other_secret
    stolen = await client.post(
        "/oauth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        headers=basic(other.id, other_secret),
    )
    assert stolen.json()["error"] == "invalid_grant"
    code2 = await get_code(client, setup["app"].id)
    moved = await exchange(client, setup, code2, redirect_uri="https://app.example/other")
    assert moved.json()["error"] == "invalid_grant" and "redirect_uri" in moved.json()["error_description"]
    assert await OidcRefreshToken.count() == 0


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "portal_refresh_nope"}, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": "portal_code_nope"}, "invalid_grant"),
        ({"grant_type": "refresh_token", "refresh_token": "x", "scope": "openid root"}, "invalid_scope"),
    ],
)
async def test_bad_token_requests(
    client: httpx.AsyncClient, setup: dict[str, Any], form: dict[str, str], error: str
) -> None:
    response = await client.post("/oauth/token", data=form, headers=basic(setup["app"].id, setup["secret"]))
    assert response.status_code == 400 and response.json()["error"] == error
    assert response.json()["error_description"]
    assert response.headers["cache-control"] == "no-store"
    assert await OidcRefreshToken.count() == 0


async def test_token_endpoint_wants_a_form(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    response = await client.post(
        "/oauth/token",
        json={"grant_type": "authorization_code"},
        headers=basic(setup["app"].id, setup["secret"]),
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


async def test_unknown_client_at_token_endpoint(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    response = await client.post(
        "/oauth/token", data={"grant_type": "authorization_code", "client_id": "nope"}
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


async def test_revoked_refresh_token(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    code = await get_code(client, setup["app"].id)
    tokens_ = (await exchange(client, setup, code)).json()
    auth = basic(setup["app"].id, setup["secret"])
    revoked = await client.post("/oauth/revoke", data={"token": tokens_["refresh_token"]}, headers=auth)
    assert revoked.status_code == 200
    unknown = await client.post("/oauth/revoke", data={"token": "whatever"}, headers=auth)
    assert unknown.status_code == 200
    refresh = await client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens_["refresh_token"]},
        headers=auth,
    )
    assert refresh.json()["error"] == "invalid_grant"
    wrong = await client.post("/oauth/revoke", data={"token": "x"}, headers=basic(setup["app"].id, "bad"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


# --- logout -------------------------------------------------------------------------------------------------


async def test_logout_to_an_unregistered_uri_is_an_error_page(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    response = await client.get(
        "/oauth/logout",
        params={"client_id": setup["app"].id, "post_logout_redirect_uri": "https://evil.example/"},
        headers={"accept": "text/html"},
    )
    assert response.status_code == 400 and "location" not in response.headers
    assert (await client.get("/ui/")).status_code == 200  # still signed in


async def test_logout_without_a_hint_asks_first(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    params = {"client_id": setup["app"].id, "post_logout_redirect_uri": CALLBACK, "state": "z"}
    page = await client.get("/oauth/logout", params=params, headers={"accept": "text/html"})
    assert page.status_code == 200 and "Sign out of" in page.text
    assert (await client.get("/ui/")).status_code == 200  # a GET alone signed nobody out
    token = await csrf_token(client, "/oauth/logout?" + urlencode(params))
    done = await client.post("/oauth/logout", data={**params, "_csrf_token": token})
    # A page that moves on by itself (the form's CSP would block a redirect to the app's origin).
    assert done.status_code == 200
    assert f'http-equiv="refresh" content="0;url={CALLBACK}?state=z"' in done.text
    assert (await client.get("/ui/")).status_code in (302, 303, 401)


async def test_forged_id_token_hint(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    fake = base64.urlsafe_b64encode(secrets.token_bytes(30)).decode()
    response = await client.get(
        "/oauth/logout", params={"id_token_hint": f"a.{fake}.b"}, headers={"accept": "text/html"}
    )
    assert response.status_code == 400
    assert (await client.get("/ui/")).status_code == 200


# --- prompt, max_age, login_hint ----------------------------------------------------------------------------


async def test_prompt_login_and_max_age_send_a_signed_in_user_to_the_login_page(
    client: httpx.AsyncClient, setup: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    await sign_in(client, setup["user"], setup["org"])
    for extra in ({"prompt": "login"}, {"prompt": "select_account"}, {"max_age": "60"}):
        if "max_age" in extra:
            frozen_clock.advance(seconds=61)
        response = await client.get(auth_query(setup["app"].id, login_hint="a@b.test", **extra))
        assert response.status_code == 303, extra
        location = response.headers["location"]
        query = parse_qs(urlsplit(location).query)
        assert urlsplit(location).path == "/login" and query["prompt"] == ["login"]
        # Back to the same authorize request, without what the new sign-in satisfies.
        back = parse_qs(urlsplit(query["return_to"][0]).query)
        assert back["client_id"] == [setup["app"].id] and "prompt" not in back and "max_age" not in back
        page = await client.get(location, headers={"accept": "text/html"})
        assert page.status_code == 200 and 'value="a@b.test"' in page.text
    assert await issued() == (0, 0)
    # A recent enough sign-in gets its code.
    assert "code" in redirect_query(await client.get(auth_query(setup["app"].id, max_age="3600")))


async def test_without_a_session_the_hosted_login_comes_back_to_authorize(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    client.cookies.clear()
    response = await client.get(auth_query(setup["app"].id, organization_id=setup["org"]["id"]))
    assert response.status_code == 303
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["return_to"][0].startswith("/oauth/authorize?")
    assert query["organization"] == [setup["org"]["id"]]
    refused = redirect_query(await client.get(auth_query(setup["app"].id, prompt="none")))
    assert refused["error"] == "login_required"
    assert await issued() == (0, 0)

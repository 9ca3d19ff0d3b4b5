"""Passkey sign-in on /login (DESIGN §4): a software authenticator against the real endpoints, and the hostile
cases: another origin, a challenge the portal never issued, a replayed answer, another browser's challenge,
an expired challenge, a counter that goes backwards, an unknown passkey, no user verification, no CSRF."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from portal.auth import accounts, sessions
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, LoginChallenge, Passkey, Session
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in
from tests.softauthn import LOGIN, LOGIN_OPTIONS, SoftAuthenticator, b64url, post_json, register

ORIGIN = "http://localhost:8000"
HTML = {"accept": "text/html"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """WebAuthn needs a host name: the portal is public at http://localhost:8000."""
    return msgspec.structs.replace(settings, public_url=ORIGIN)


@pytest.fixture
async def world(db: Any) -> dict[str, Any]:
    acme = await make_org("acme", "Acme")
    globex = await make_org("globex", "Globex")
    alice = await make_user("alice@acme.test", given_name="Alice")
    await make_member(acme, alice, ["admin"])
    await make_member(globex, alice, ["member"])
    await accounts.audit("seed")  # so that "no audit" assertions below look at the right table
    return {"acme": acme, "globex": globex, "alice": alice}


def other_browser(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """A second browser on the same app: its own cookies."""
    return httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url))


@pytest.fixture
async def browser(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    async with other_browser(client) as anonymous:
        yield anonymous


@pytest.fixture
async def enrolled(client: httpx.AsyncClient, world: dict[str, Any]) -> SoftAuthenticator:
    """Alice registered a (synced) passkey from a signed-in browser."""
    authenticator = SoftAuthenticator(ORIGIN)
    await sign_in(client, world["alice"], world["acme"])
    await register(client, authenticator, await csrf_token(client, "/ui/account/security"))
    return authenticator


async def options(browser: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """Open /login signed out (as after signing out) and fetch sign-in options: (CSRF token, options)."""
    browser.cookies.delete("portal_session")
    token = await csrf_token(browser, "/login")
    response = await post_json(browser, LOGIN_OPTIONS, token)
    assert response.status_code == 200, response.text
    return token, response.json()


async def sessions_of(user_id: str) -> list[dict[str, Any]]:
    return list(await Session.select().where(Session.user == user_id).order_by(Session.created_at))


async def audit(action: str) -> list[dict[str, Any]]:
    return list(await AuditEvent.select().where(AuditEvent.action == action).output(load_json=True))


# --- the page --------------------------------------------------------------------------------------------


async def test_login_page_offers_a_passkey_button_and_autofill(client: httpx.AsyncClient) -> None:
    page = await client.get("/login?return_to=/ui/account/security", headers=HTML)
    assert page.status_code == 200
    field = re.search(r"<input id=\"email\"[^>]*>", page.text)
    assert field is not None
    assert 'autocomplete="username webauthn"' in field.group(0)
    button = re.search(r"<button[^>]*data-passkey=\"login\"[^>]*>([^<]*)</button>", page.text)
    assert button is not None and button.group(1) == "Sign in with a passkey"
    assert 'data-options-url="/login/passkey/options"' in button.group(0)
    # Shown by the script only where the browser has WebAuthn; no inline code (CSP default-src 'self').
    assert "hidden" in button.group(0)
    assert re.findall(r"<script[^>]*>[^<]*</script>", page.text) == [
        '<script src="/static/passkeys.js" defer></script>'
    ]
    assert " style=" not in page.text and "<style" not in page.text and "onclick" not in page.text
    script = await client.get("/static/passkeys.js")
    assert script.status_code == 200
    assert "parseRequestOptionsFromJSON" in script.text and "x-csrftoken" in script.text
    assert '"conditional"' in script.text and "isConditionalMediationAvailable" in script.text


async def test_no_passkeys_when_the_public_url_is_an_ip_address(
    client: httpx.AsyncClient, app: Litestar, settings: Settings, db: Any
) -> None:
    on_ip = msgspec.structs.replace(settings, public_url="http://127.0.0.1:8000")
    app.state.settings = on_ip
    page = await client.get("/login", headers=HTML)
    assert "data-passkey" not in page.text and "<script" not in page.text
    assert 'autocomplete="email"' in page.text
    response = await post_json(client, LOGIN_OPTIONS, await csrf_token(client, "/login"))
    assert response.status_code == 409
    assert "host name" in response.json()["error"]["detail"]


# --- success ---------------------------------------------------------------------------------------------


async def test_sign_in_with_a_discoverable_passkey(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    alice = world["alice"]
    before = len(await sessions_of(alice["id"]))
    token, request_options = await options(browser)
    # Discoverable: no email asked, no credentials listed; user verification required; RP id from the URL.
    assert request_options["rpId"] == "localhost"
    assert request_options["allowCredentials"] == []
    assert request_options["userVerification"] == "required"

    answer = enrolled.get(request_options)
    response = await post_json(
        browser,
        LOGIN,
        token,
        {"credential": answer, "return_to": "/ui/account/security", "organization": "globex"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"redirect": "/ui/account/security"}
    assert any(h.startswith("portal_session=") for h in response.headers.get_list("set-cookie"))

    page = await browser.get("/ui/account/security", headers=HTML)
    assert page.status_code == 200
    assert "alice@acme.test" in page.text
    rows = await sessions_of(alice["id"])
    assert len(rows) == before + 1
    new = rows[-1]
    assert new["auth_method"] == "passkey"
    assert new["active_organization"] == world["globex"]["id"]
    assert new["authenticated_at"] == new["created_at"]
    [event] = await audit("login.succeeded")
    assert event["actor_id"] == alice["id"]
    assert event["details"]["method"] == "passkey"
    passkey = await Passkey.select().where(Passkey.user == alice["id"]).first()
    assert passkey is not None and passkey["last_used_at"] is not None
    assert event["details"]["passkey_id"] == passkey["id"]
    assert event["details"]["session_id"] == new["id"]


async def test_several_organizations_and_none_chosen_go_to_the_chooser(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    token, request_options = await options(browser)
    response = await post_json(browser, LOGIN, token, {"credential": enrolled.get(request_options)})
    assert response.status_code == 200
    assert response.json()["redirect"].startswith("/ui/organizations?")


async def test_synced_passkeys_reporting_zero_may_sign_in_again_and_again(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient
) -> None:
    assert enrolled.counter is False
    for _ in range(3):
        token, request_options = await options(browser)
        response = await post_json(browser, LOGIN, token, {"credential": enrolled.get(request_options)})
        assert response.status_code == 200, response.text
    stored = await Passkey.select(Passkey.sign_count).first()
    assert stored is not None and stored["sign_count"] == 0


async def test_a_signed_in_browser_that_signs_in_again_replaces_its_session(
    enrolled: SoftAuthenticator, client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    client.cookies.delete("portal_session")
    await sign_in(client, world["alice"], world["acme"])
    old = (await sessions_of(world["alice"]["id"]))[-1]
    token = await csrf_token(client, "/ui/account/security")
    request_options = (await post_json(client, LOGIN_OPTIONS, token)).json()
    response = await post_json(client, LOGIN, token, {"credential": enrolled.get(request_options)})
    assert response.status_code == 200
    replaced = await Session.select().where(Session.id == old["id"]).first()
    assert replaced is not None and replaced["revoke_reason"] == "replaced"


# --- hostile ---------------------------------------------------------------------------------------------


async def refused(response: httpx.Response, reason: str, words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["reason"] == reason
    assert words in error["detail"]
    assert "portal_session=" not in "".join(response.headers.get_list("set-cookie"))


async def test_an_answer_for_another_origin_is_refused(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    before = await sessions_of(world["alice"]["id"])
    token, request_options = await options(browser)
    answer = enrolled.get(request_options, origin="https://login.evil.example")
    response = await post_json(browser, LOGIN, token, {"credential": answer})
    await refused(response, "origin", "https://login.evil.example")
    assert await sessions_of(world["alice"]["id"]) == before
    [failed] = await audit("login.failed")
    assert failed["details"] == {"method": "passkey", "reason": "origin"}
    assert await audit("login.succeeded") == []


async def test_an_answer_to_a_challenge_never_issued_is_refused(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    token, request_options = await options(browser)
    forged = b64url(b"\x00" * 32)
    response = await post_json(
        browser, LOGIN, token, {"credential": enrolled.get(request_options, challenge=forged)}
    )
    await refused(response, "challenge", "did not issue")
    # The real challenge is still unused: nothing was consumed by the forged answer.
    used = LoginChallenge.consumed_at.is_not_null() & (LoginChallenge.purpose == "webauthn_login")
    assert await LoginChallenge.count().where(used) == 0
    assert len(await sessions_of(world["alice"]["id"])) == 1


async def test_a_replayed_answer_is_refused(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient, client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    token, request_options = await options(browser)
    answer = enrolled.get(request_options)
    first = await post_json(browser, LOGIN, token, {"credential": answer})
    assert first.status_code == 200
    count = len(await sessions_of(world["alice"]["id"]))
    # The same answer works once, whoever sends it again.
    again = await post_json(browser, LOGIN, token, {"credential": answer})
    await refused(again, "replayed", "already used")
    async with other_browser(client) as attacker:
        theirs = await post_json(
            attacker, LOGIN, await csrf_token(attacker, "/login"), {"credential": answer}
        )
        await refused(theirs, "challenge", "did not issue")
    assert len(await sessions_of(world["alice"]["id"])) == count


async def test_a_challenge_issued_to_another_browser_is_refused(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    _, their_options = await options(browser)
    async with other_browser(client) as mine:
        my_token = await csrf_token(mine, "/login")
        response = await post_json(mine, LOGIN, my_token, {"credential": enrolled.get(their_options)})
        await refused(response, "challenge", "did not issue")


async def test_an_expired_challenge_is_refused(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, request_options = await options(browser)
    later = clock.utcnow() + timedelta(minutes=6)
    monkeypatch.setattr(clock, "utcnow", lambda: later)
    response = await post_json(browser, LOGIN, token, {"credential": enrolled.get(request_options)})
    await refused(response, "expired", "expired")


async def test_a_counter_that_goes_backwards_is_refused_as_a_possible_clone(
    client: httpx.AsyncClient, browser: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    authenticator = SoftAuthenticator(ORIGIN, synced=False, counter=True)
    await sign_in(client, world["alice"], world["acme"])
    await register(client, authenticator, await csrf_token(client, "/ui/account/security"))
    token, request_options = await options(browser)
    assert (
        await post_json(browser, LOGIN, token, {"credential": authenticator.get(request_options)})
    ).status_code == 200
    assert (await Passkey.select(Passkey.sign_count).first() or {})["sign_count"] == 1

    [credential] = authenticator.credentials.values()
    credential.sign_count = 0  # a copy of the key that never saw the first signature
    token, request_options = await options(browser)
    response = await post_json(browser, LOGIN, token, {"credential": authenticator.get(request_options)})
    await refused(response, "sign_count", "may have been copied")
    assert (await Passkey.select(Passkey.sign_count).first() or {})["sign_count"] == 1
    failed = await audit("login.failed")
    assert failed[-1]["details"]["reason"] == "sign_count"
    assert failed[-1]["actor_id"] == world["alice"]["id"]

    # The genuine authenticator, counting on, still works.
    credential.sign_count = 5
    token, request_options = await options(browser)
    ok = await post_json(browser, LOGIN, token, {"credential": authenticator.get(request_options)})
    assert ok.status_code == 200
    assert (await Passkey.select(Passkey.sign_count).first() or {})["sign_count"] == 6


async def test_a_deleted_passkey_is_unknown(enrolled: SoftAuthenticator, browser: httpx.AsyncClient) -> None:
    await Passkey.delete(force=True)
    token, request_options = await options(browser)
    response = await post_json(browser, LOGIN, token, {"credential": enrolled.get(request_options)})
    await refused(response, "unknown_credential", "not registered here")


async def test_user_verification_is_required(enrolled: SoftAuthenticator, browser: httpx.AsyncClient) -> None:
    enrolled.user_verified = False
    token, request_options = await options(browser)
    response = await post_json(browser, LOGIN, token, {"credential": enrolled.get(request_options)})
    await refused(response, "invalid", "User verification is required")


async def test_a_tampered_signature_is_refused(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient
) -> None:
    token, request_options = await options(browser)
    answer = enrolled.get(request_options)
    answer["response"]["signature"] = enrolled.get(request_options)["response"]["signature"][:-4] + "AAAA"
    response = await post_json(browser, LOGIN, token, {"credential": answer})
    await refused(response, "invalid", "signature")


async def test_garbage_is_a_clear_400_not_a_crash(browser: httpx.AsyncClient, db: Any) -> None:
    token = await csrf_token(browser, "/login")
    for body in ({"credential": {}}, {"credential": {"response": {"clientDataJSON": "!!"}}}):
        response = await post_json(browser, LOGIN, token, body)
        await refused(response, "malformed", "could not be read")
    response = await post_json(browser, LOGIN, token, {"nothing": 1})
    assert response.status_code == 400


async def test_both_endpoints_need_the_csrf_header(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient
) -> None:
    token, request_options = await options(browser)
    assert (await post_json(browser, LOGIN_OPTIONS, None)).status_code == 403
    response = await post_json(browser, LOGIN, None, {"credential": enrolled.get(request_options)})
    assert response.status_code == 403
    assert await audit("login.succeeded") == []
    # A token from another browser's page does not fit this browser's cookie either.
    async with other_browser(browser) as other:
        theirs = await csrf_token(other, "/login")
    assert (await post_json(browser, LOGIN_OPTIONS, theirs)).status_code == 403
    assert token


async def test_session_cookie_from_passkey_sign_in_is_a_live_session(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient, settings: Settings
) -> None:
    token, request_options = await options(browser)
    response = await post_json(browser, LOGIN, token, {"credential": enrolled.get(request_options)})
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith("portal_session="))
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    resolved = await sessions.resolve(settings, value)
    assert resolved.session is not None and resolved.session["auth_method"] == "passkey"


async def test_the_step_up_window_opens_at_passkey_sign_in(
    enrolled: SoftAuthenticator, browser: httpx.AsyncClient
) -> None:
    token, request_options = await options(browser)
    await post_json(browser, LOGIN, token, {"credential": enrolled.get(request_options)})
    # A passkey sign-in is a sign-in: adding another passkey right away needs no confirmation.
    token = await csrf_token(browser, "/ui/account/security")
    response = await post_json(browser, "/ui/account/security/passkeys/options", token)
    assert response.status_code == 200

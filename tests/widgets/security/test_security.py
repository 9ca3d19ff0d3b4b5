"""The Security widget: sessions (list, revoke one, revoke all others), passkeys (register with a software
authenticator, list, rename, delete), the step-up confirmation by emailed code or passkey, and the hostile
matrix: anonymous, another user's ids, missing CSRF, a stale sign-in, wrong origin/challenge, replays, bad names."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest

from portal.auth import passkeys, sessions
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, LoginChallenge, Passkey, Session
from tests.factories import csrf_token, make_member, make_org, make_user
from tests.mailserver import Mailbox
from tests.softauthn import REGISTER, REGISTER_OPTIONS, SoftAuthenticator, b64url, post_json, register

ORIGIN = "http://localhost:8000"
URL = "/ui/account/security"
HTML = {"accept": "text/html"}
CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)
EDGE_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
    "Safari/537.36 Edg/131.0.2903.86"
)


@pytest.fixture
def settings(settings: Settings, mail: Mailbox) -> Settings:
    return msgspec.structs.replace(settings, public_url=ORIGIN, smtp_url=mail.url, brand_name="Acme Cloud")


@pytest.fixture
async def world(db: Any) -> dict[str, Any]:
    acme = await make_org("acme", "Acme")
    alice = await make_user("alice@acme.test", given_name="Alice")
    bob = await make_user("bob@acme.test", given_name="Bob")
    await make_member(acme, alice, ["member"])
    await make_member(acme, bob, ["admin"])
    return {"acme": acme, "alice": alice, "bob": bob}


async def start_session(
    user: dict[str, Any], org: dict[str, Any] | None, user_agent: str = CHROME_MAC, ip: str = "203.0.113.7"
) -> tuple[str, str]:
    return await sessions.create_session(
        user["id"],
        auth_method="email_code",
        organization_id=org["id"] if org else None,
        ip=ip,
        user_agent=user_agent,
    )


def plant(client: httpx.AsyncClient, token: str) -> None:
    client.cookies.delete("portal_session")
    client.cookies.set("portal_session", token)


@pytest.fixture
async def alice(client: httpx.AsyncClient, world: dict[str, Any]) -> dict[str, Any]:
    """The client is Alice's browser (Chrome on macOS), freshly signed in; returns her session id and token."""
    token, session_id = await start_session(world["alice"], world["acme"])
    plant(client, token)
    return {"session_id": session_id, "token": token, **world["alice"]}


@pytest.fixture
async def bob_browser(client: httpx.AsyncClient, world: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url)) as other:
        token, _ = await start_session(world["bob"], world["acme"], user_agent=FIREFOX_WINDOWS)
        plant(other, token)
        yield other


def later(monkeypatch: pytest.MonkeyPatch, minutes: int) -> datetime:
    """Move the clock on: a sign-in ``minutes`` ago."""
    moment = clock.utcnow() + timedelta(minutes=minutes)
    monkeypatch.setattr(clock, "utcnow", lambda: moment)
    return moment


async def token_of(client: httpx.AsyncClient) -> str:
    return await csrf_token(client, URL)


async def audit(action: str) -> list[dict[str, Any]]:
    return list(await AuditEvent.select().where(AuditEvent.action == action).output(load_json=True))


async def live_sessions(user_id: str) -> list[str]:
    rows = await Session.select(Session.id).where((Session.user == user_id) & Session.revoked_at.is_null())
    return sorted(row["id"] for row in rows)


async def passkey_rows(user_id: str | None = None) -> list[dict[str, Any]]:
    query = Passkey.select().order_by(Passkey.created_at)
    if user_id:
        query = query.where(Passkey.user == user_id)
    return list(await query.output(load_json=True))


# --- who may ---------------------------------------------------------------------------------------------


ROUTES = [
    ("GET", URL),
    ("GET", f"{URL}/confirm?action=add_passkey"),
    ("POST", f"{URL}/sessions/ses_x/revoke"),
    ("POST", f"{URL}/sessions/revoke-others"),
    ("POST", f"{URL}/passkeys/options"),
    ("POST", f"{URL}/passkeys"),
    ("POST", f"{URL}/passkeys/pk_x/rename"),
    ("POST", f"{URL}/passkeys/pk_x/delete"),
    ("POST", f"{URL}/confirm/code/send"),
    ("POST", f"{URL}/confirm/code"),
    ("POST", f"{URL}/confirm/passkey/options"),
    ("POST", f"{URL}/confirm/passkey"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_anonymous_goes_to_login_or_gets_401(
    client: httpx.AsyncClient, db: Any, method: str, path: str
) -> None:
    token = await csrf_token(client, "/login")
    if method == "GET":
        response = await client.get(path, headers=HTML)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?return_to=/ui/account/security")
    else:
        response = await client.post(
            path, json={"credential": {}}, headers={"x-csrftoken": token, "accept": "application/json"}
        )
        assert response.status_code == 401
        assert response.json()["error"]["title"] == "Sign-in required"


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if r[0] == "POST"])
async def test_every_change_needs_the_csrf_token(
    client: httpx.AsyncClient, alice: dict[str, Any], method: str, path: str
) -> None:
    response = await client.post(path, json={"credential": {}}, headers={"accept": "application/json"})
    assert response.status_code == 403
    form = await client.post(path, data={"name": "x"}, headers=HTML)
    assert form.status_code == 403
    assert await live_sessions(alice["id"]) == [alice["session_id"]]


async def test_the_widget_is_in_the_navigation_and_on_home(
    client: httpx.AsyncClient, alice: dict[str, Any]
) -> None:
    home = await client.get("/ui/", headers=HTML)
    assert 'href="/ui/account/security"' in home.text
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    assert '<a href="/ui/account/security" aria-current="page">Security</a>' in page.text
    assert "<h1>Security</h1>" in page.text
    # Only external scripts (CSP): the account menu's and the passkey ceremony's.
    assert re.findall(r"<script[^>]*>[^<]*</script>", page.text) == [
        '<script src="/static/menu.js" defer></script>',
        '<script src="/static/passkeys.js" defer></script>',
    ]


# --- sessions --------------------------------------------------------------------------------------------


async def test_sessions_list_browser_os_ip_times_and_this_one(
    client: httpx.AsyncClient, alice: dict[str, Any], world: dict[str, Any], settings: Settings
) -> None:
    _, firefox = await start_session(world["alice"], None, FIREFOX_WINDOWS, "198.51.100.20")
    _, iphone = await start_session(world["alice"], world["acme"], SAFARI_IPHONE, "2001:db8::1")
    _, gone = await start_session(world["alice"], world["acme"], EDGE_WINDOWS)
    await sessions.revoke(gone, "logout")
    _, bobs = await start_session(world["bob"], world["acme"], EDGE_WINDOWS, "192.0.2.99")
    # Past the idle timeout, not yet swept: no longer a live session, so not listed.
    _, stale = await start_session(world["alice"], world["acme"], "curl/8.5.0")
    await Session.update({Session.last_seen_at: clock.utcnow() - timedelta(days=2)}).where(
        Session.id == stale
    )

    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    text = page.text
    for device, ip in (
        ("Chrome 131 on macOS", "203.0.113.7"),
        ("Firefox 133 on Windows", "198.51.100.20"),
        ("Safari 17 on iOS", "2001:db8::1"),
    ):
        assert f'<span class="session-device">{device}</span>' in text
        assert f"IP {ip}" in text
    assert "Edge 131" not in text  # revoked (Alice's) or someone else's (Bob's)
    assert "192.0.2.99" not in text and bobs not in text and gone not in text
    assert "curl" not in text and stale not in text
    assert text.count("This session") == 1
    current = text.index("This session")
    assert text.index("Chrome 131 on macOS") < current < text.index("Firefox 133 on Windows")
    assert "with an email code" in text
    assert f"/sessions/{firefox}/revoke" in text and f"/sessions/{iphone}/revoke" in text
    assert f"/sessions/{alice['session_id']}/revoke" not in text  # this one is ended by signing out
    assert "Last active <time" in text and "UTC</time>" in text


async def test_revoke_one_of_my_sessions(
    client: httpx.AsyncClient, alice: dict[str, Any], world: dict[str, Any]
) -> None:
    other_token, other = await start_session(world["alice"], world["acme"], FIREFOX_WINDOWS)
    response = await client.post(
        f"{URL}/sessions/{other}/revoke", data={"_csrf_token": await token_of(client)}, headers=HTML
    )
    assert response.status_code == 303 and response.headers["location"] == URL
    row = await Session.select().where(Session.id == other).first()
    assert row is not None and row["revoked_at"] is not None and row["revoke_reason"] == "user"
    [event] = await audit("session.revoked")
    assert event["target"] == other and event["actor_id"] == alice["id"]
    assert event["details"] == {"device": "Firefox 133 on Windows"}
    page = await client.get(URL, headers=HTML)
    assert "Session revoked" in page.text
    # The revoked browser is signed out on its next request.
    async with httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url)) as revoked:
        plant(revoked, other_token)
        landing = (await revoked.get(URL, headers=HTML)).headers["location"]
        # The login page says why (issue 16).
        assert landing == "/login?return_to=/ui/account/security&ended=user"
        login = await revoked.get(landing, headers=HTML)
        assert "This session was signed out from another browser or device." in login.text


async def test_revoking_someone_elses_session_is_404(
    client: httpx.AsyncClient, alice: dict[str, Any], world: dict[str, Any]
) -> None:
    _, bobs = await start_session(world["bob"], world["acme"])
    token = await token_of(client)
    for target in (bobs, "ses_doesnotexist"):
        response = await client.post(
            f"{URL}/sessions/{target}/revoke", data={"_csrf_token": token}, headers=HTML
        )
        assert response.status_code == 404
    assert bobs in await live_sessions(world["bob"]["id"])
    assert await audit("session.revoked") == []


async def test_revoke_all_others_right_after_signing_in(
    client: httpx.AsyncClient, alice: dict[str, Any], world: dict[str, Any]
) -> None:
    others = [(await start_session(world["alice"], None, FIREFOX_WINDOWS))[1] for _ in range(2)]
    _, bobs = await start_session(world["bob"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert "Revoke all other sessions" in page.text
    response = await client.post(
        f"{URL}/sessions/revoke-others", data={"_csrf_token": await token_of(client)}, headers=HTML
    )
    assert response.status_code == 303 and response.headers["location"] == URL
    assert await live_sessions(alice["id"]) == [alice["session_id"]]
    assert bobs in await live_sessions(world["bob"]["id"])
    [event] = await audit("sessions.revoked_others")
    assert event["details"]["count"] == 2 and sorted(event["details"]["session_ids"]) == sorted(others)
    assert "Signed out 2 other sessions." in (await client.get(URL, headers=HTML)).text


async def test_revoke_all_others_after_ten_minutes_asks_to_confirm_by_email_code(
    client: httpx.AsyncClient,
    alice: dict[str, Any],
    world: dict[str, Any],
    mail: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, other = await start_session(world["alice"], None, FIREFOX_WINDOWS)
    token = await token_of(client)
    later(monkeypatch, 11)
    page = await client.get(URL, headers=HTML)
    assert "We will ask you to confirm it's you first." in page.text
    response = await client.post(f"{URL}/sessions/revoke-others", data={"_csrf_token": token}, headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == f"{URL}/confirm?action=revoke_others"
    assert other in await live_sessions(alice["id"])  # nothing happened yet

    confirm = await client.get(response.headers["location"], headers=HTML)
    assert "<h1>Confirm it's you</h1>" in confirm.text
    assert (
        "To sign out your other sessions, confirm who you are: you signed in 11 minutes ago" in confirm.text
    )
    assert "Then your other sessions are signed out straight away." in confirm.text
    assert "Use a passkey" not in confirm.text  # Alice has none
    sent = await client.post(
        f"{URL}/confirm/code/send", data={"_csrf_token": token, "action": "revoke_others"}, headers=HTML
    )
    assert sent.status_code == 303
    challenge_id = parse_qs(urlsplit(sent.headers["location"]).query)["challenge_id"][0]
    code = mail.last_code("alice@acme.test")
    [message] = mail.to("alice@acme.test")
    assert message["Subject"] == "Acme Cloud: your confirmation code"

    form = await client.get(sent.headers["location"], headers=HTML)
    assert "We sent a 6-digit code to alice@acme.test." in form.text
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    bad = await client.post(
        f"{URL}/confirm/code",
        data={"_csrf_token": token, "action": "revoke_others", "challenge_id": challenge_id, "code": wrong},
        headers=HTML,
    )
    assert bad.status_code == 400
    assert 'id="code-error"' in bad.text and "That code is not right. 4 attempts left." in bad.text
    assert other in await live_sessions(alice["id"])

    ok = await client.post(
        f"{URL}/confirm/code",
        data={"_csrf_token": token, "action": "revoke_others", "challenge_id": challenge_id, "code": code},
        headers=HTML,
    )
    assert ok.status_code == 303 and ok.headers["location"] == URL
    assert await live_sessions(alice["id"]) == [alice["session_id"]]
    row = await Session.select(Session.authenticated_at).where(Session.id == alice["session_id"]).first()
    assert row is not None and row["authenticated_at"] == clock.utcnow()
    [step_up] = await audit("session.step_up")
    assert step_up["details"] == {"method": "email_code"} and step_up["target"] == alice["session_id"]
    assert len(await audit("sessions.revoked_others")) == 1
    assert "Signed out 1 other session." in (await client.get(URL, headers=HTML)).text


async def test_someone_elses_confirmation_code_is_unknown(
    client: httpx.AsyncClient, alice: dict[str, Any], bob_browser: httpx.AsyncClient, mail: Mailbox
) -> None:
    bob_token = await token_of(bob_browser)
    sent = await bob_browser.post(
        f"{URL}/confirm/code/send", data={"_csrf_token": bob_token, "action": "revoke_others"}, headers=HTML
    )
    challenge_id = parse_qs(urlsplit(sent.headers["location"]).query)["challenge_id"][0]
    code = mail.last_code("bob@acme.test")
    page = await client.get(f"{URL}/confirm?action=revoke_others&challenge_id={challenge_id}", headers=HTML)
    assert 'name="challenge_id"' not in page.text  # not Alice's: she is offered a code of her own
    response = await client.post(
        f"{URL}/confirm/code",
        data={"_csrf_token": await token_of(client), "challenge_id": challenge_id, "code": code},
        headers=HTML,
    )
    assert response.status_code == 303 and "/confirm?action=add_passkey" in response.headers["location"]
    assert await audit("session.step_up") == []
    row = await LoginChallenge.select().where(LoginChallenge.id == challenge_id).first()
    assert row is not None and row["attempts"] == 0 and row["consumed_at"] is None


# --- passkeys: registration ----------------------------------------------------------------------------


async def test_register_a_passkey(client: httpx.AsyncClient, alice: dict[str, Any]) -> None:
    token = await token_of(client)
    page = await client.get(URL, headers=HTML)
    assert "You have no passkeys yet." in page.text
    assert 'data-passkey="register"' in page.text

    options = await post_json(client, REGISTER_OPTIONS, token)
    assert options.status_code == 200
    body = options.json()
    assert body["rp"] == {"name": "Acme Cloud", "id": "localhost"}
    assert body["user"]["name"] == "alice@acme.test"
    assert passkeys.from_b64url(body["user"]["id"]) == alice["id"].encode()
    assert body["attestation"] == "none"
    assert body["authenticatorSelection"]["residentKey"] == "required"
    assert body["authenticatorSelection"]["userVerification"] == "required"
    assert body["excludeCredentials"] == []

    authenticator = SoftAuthenticator(ORIGIN)
    result = await post_json(client, REGISTER, token, {"credential": authenticator.create(body)})
    assert result.status_code == 200, result.text
    assert result.json() == {"redirect": URL}
    [row] = await passkey_rows(alice["id"])
    [credential_id] = authenticator.credentials
    assert row["credential_id"] == b64url(credential_id)
    assert row["name"] == "Google Password Manager"  # named after the AAGUID
    assert row["backup_eligible"] is True and row["backed_up"] is True
    assert row["sign_count"] == 0 and row["transports"] == ["hybrid", "internal"]
    assert row["aaguid"] == "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4"
    assert row["id"].startswith("pk_")
    [event] = await audit("passkey.registered")
    assert event["target"] == row["id"] and event["details"]["synced"] is True

    page = await client.get(URL, headers=HTML)
    assert "Passkey “Google Password Manager” added." in page.text
    assert '<span class="passkey-name">Google Password Manager</span>' in page.text
    assert '<span class="badge ok">Synced</span>' in page.text
    assert "Not used to sign in yet" in page.text

    # A device-bound passkey with an unknown AAGUID is named after the browser and system.
    second = SoftAuthenticator(ORIGIN, synced=False, aaguid=uuid.UUID("12345678-1234-5678-1234-567812345678"))
    again = await post_json(client, REGISTER_OPTIONS, token)
    assert again.json()["excludeCredentials"] == [
        {"id": b64url(credential_id), "type": "public-key", "transports": ["hybrid", "internal"]}
    ]
    result = await client.post(
        REGISTER,
        json={"credential": second.create(again.json())},
        headers={"x-csrftoken": token, "accept": "application/json", "user-agent": CHROME_MAC},
    )
    assert result.status_code == 200
    assert [r["name"] for r in await passkey_rows(alice["id"])] == [
        "Google Password Manager",
        "Chrome on macOS",
    ]
    assert '<span class="badge">Device-bound</span>' in (await client.get(URL, headers=HTML)).text


async def test_registration_after_ten_minutes_needs_confirmation_first(
    client: httpx.AsyncClient, alice: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await token_of(client)
    later(monkeypatch, 10)
    page = await client.get(URL, headers=HTML)
    assert 'href="/ui/account/security/confirm?action=add_passkey"' in page.text
    assert 'data-passkey="register"' not in page.text
    options = await post_json(client, REGISTER_OPTIONS, token)
    assert options.status_code == 403
    error = options.json()["error"]
    assert error["reason"] == "step_up"
    assert error["redirect"] == f"{URL}/confirm?action=add_passkey"
    assert await LoginChallenge.count().where(LoginChallenge.purpose == "webauthn_register") == 0


async def test_confirm_with_a_passkey_then_register_another(
    client: httpx.AsyncClient, alice: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await token_of(client)
    phone = SoftAuthenticator(ORIGIN)
    await register(client, phone, token)
    later(monkeypatch, 30)
    assert (await post_json(client, REGISTER_OPTIONS, token)).status_code == 403

    confirm = await client.get(f"{URL}/confirm?action=add_passkey", headers=HTML)
    assert "Use a passkey" in confirm.text and 'data-passkey="step-up"' in confirm.text
    options = await post_json(client, f"{URL}/confirm/passkey/options", token)
    assert options.status_code == 200
    [allowed] = options.json()["allowCredentials"]
    assert allowed["id"] == b64url(next(iter(phone.credentials)))
    answer = phone.get(options.json())
    result = await post_json(
        client, f"{URL}/confirm/passkey", token, {"credential": answer, "action": "add_passkey"}
    )
    assert result.status_code == 200, result.text
    # The action goes on: the Security page starts adding the passkey (issue 16).
    assert result.json() == {"redirect": f"{URL}?then=add_passkey#passkeys-heading"}
    page = await client.get(f"{URL}?then=add_passkey", headers=HTML)
    assert "Confirmed. Now add your passkey: your browser asks for it." in page.text
    assert re.search(
        r'<button type="button" class="button" hidden data-passkey="register" data-autostart', page.text
    )
    [event] = await audit("session.step_up")
    assert event["details"] == {"method": "passkey"}
    # A confirmation answer is single-use like any other.
    replay = await post_json(client, f"{URL}/confirm/passkey", token, {"credential": answer})
    assert replay.status_code == 400 and replay.json()["error"]["reason"] == "replayed"

    laptop = SoftAuthenticator(ORIGIN, synced=False)
    await register(client, laptop, token)
    assert len(await passkey_rows(alice["id"])) == 2


async def test_confirming_with_someone_elses_passkey_is_refused(
    client: httpx.AsyncClient,
    alice: dict[str, Any],
    bob_browser: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = await token_of(client)
    mine = SoftAuthenticator(ORIGIN)
    await register(client, mine, token)
    shared = SoftAuthenticator(ORIGIN)
    await register(bob_browser, shared, await token_of(bob_browser))
    later(monkeypatch, 30)
    options = (await post_json(client, f"{URL}/confirm/passkey/options", token)).json()
    bobs_credential = next(iter(shared.credentials))
    answer = shared.get(options, credential_id=bobs_credential)
    result = await post_json(client, f"{URL}/confirm/passkey", token, {"credential": answer})
    assert result.status_code == 400 and result.json()["error"]["reason"] == "wrong_user"
    assert await audit("session.step_up") == []
    row = await Session.select(Session.authenticated_at).where(Session.id == alice["session_id"]).first()
    assert row is not None and clock.utcnow() - row["authenticated_at"] >= timedelta(minutes=30)


async def test_registration_hostile_answers_store_nothing(
    client: httpx.AsyncClient, alice: dict[str, Any], world: dict[str, Any]
) -> None:
    token = await token_of(client)
    authenticator = SoftAuthenticator(ORIGIN)

    async def attempt(**tamper: Any) -> dict[str, Any]:
        options = (await post_json(client, REGISTER_OPTIONS, token)).json()
        response = await post_json(
            client, REGISTER, token, {"credential": authenticator.create(options, **tamper)}
        )
        assert response.status_code == 400, response.text
        error: dict[str, Any] = response.json()["error"]
        return error

    error = await attempt(origin="https://evil.example")
    assert error["reason"] == "origin" and "https://evil.example" in error["detail"]
    error = await attempt(challenge=b64url(b"\x01" * 32))
    assert error["reason"] == "challenge" and "did not issue" in error["detail"]
    authenticator.user_verified = False
    error = await attempt()
    assert error["reason"] == "invalid" and "User verification" in error["detail"]
    authenticator.user_verified = True

    # Replay: the same answer again.
    options = (await post_json(client, REGISTER_OPTIONS, token)).json()
    answer = authenticator.create(options)
    assert (await post_json(client, REGISTER, token, {"credential": answer})).status_code == 200
    again = await post_json(client, REGISTER, token, {"credential": answer})
    assert again.status_code == 400 and again.json()["error"]["reason"] == "replayed"
    assert len(await passkey_rows()) == 1
    assert len(await audit("passkey.registered")) == 1


async def test_a_registration_challenge_belongs_to_the_session_that_asked(
    client: httpx.AsyncClient, alice: dict[str, Any], world: dict[str, Any]
) -> None:
    options = (await post_json(client, REGISTER_OPTIONS, await token_of(client))).json()
    answer = SoftAuthenticator(ORIGIN).create(options)
    # Alice's other browser (another session of the same user) cannot complete it.
    async with httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url)) as other:
        token, _ = await start_session(world["alice"], world["acme"], FIREFOX_WINDOWS)
        plant(other, token)
        response = await post_json(other, REGISTER, await token_of(other), {"credential": answer})
    assert response.status_code == 400 and response.json()["error"]["reason"] == "challenge"
    assert await passkey_rows() == []


async def test_a_passkey_registered_to_someone_else_is_refused(
    client: httpx.AsyncClient, alice: dict[str, Any], world: dict[str, Any]
) -> None:
    token = await token_of(client)
    options = (await post_json(client, REGISTER_OPTIONS, token)).json()
    authenticator = SoftAuthenticator(ORIGIN)
    answer = authenticator.create(options)
    await Passkey(user=world["bob"]["id"], credential_id=answer["id"], public_key="x", name="Bob's").save()
    response = await post_json(client, REGISTER, token, {"credential": answer})
    assert response.status_code == 409 and response.json()["error"]["reason"] == "duplicate"
    assert await passkey_rows(alice["id"]) == []


# --- passkeys: rename and delete -----------------------------------------------------------------------


@pytest.fixture
async def my_passkey(client: httpx.AsyncClient, alice: dict[str, Any]) -> dict[str, Any]:
    await register(client, SoftAuthenticator(ORIGIN), await token_of(client))
    [row] = await passkey_rows(alice["id"])
    return row


async def test_rename_a_passkey(client: httpx.AsyncClient, my_passkey: dict[str, Any]) -> None:
    response = await client.post(
        f"{URL}/passkeys/{my_passkey['id']}/rename",
        data={"_csrf_token": await token_of(client), "name": "  Work phone  "},
        headers=HTML,
    )
    assert response.status_code == 303
    [row] = await passkey_rows()
    assert row["name"] == "Work phone"
    [event] = await audit("passkey.renamed")
    assert event["details"] == {"old": "Google Password Manager", "new": "Work phone"}
    page = await client.get(URL, headers=HTML)
    assert "Passkey renamed to “Work phone”." in page.text


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("   ", "Enter a name"),
        ("x" * 65, "Use at most 64 characters (this has 65)."),
        ("Work\tphone", "Remove control characters"),
        ("Work\nphone", "Remove control characters"),
        ("enohp\u202ekroW", "Remove control characters"),
    ],
)
async def test_a_bad_name_is_shown_next_to_the_field_and_nothing_is_saved(
    client: httpx.AsyncClient, my_passkey: dict[str, Any], name: str, message: str
) -> None:
    response = await client.post(
        f"{URL}/passkeys/{my_passkey['id']}/rename",
        data={"_csrf_token": await token_of(client), "name": name},
        headers=HTML,
    )
    assert response.status_code == 400
    field_id = f"name-{my_passkey['id']}"
    error = re.search(
        rf'<span class="field-error" id="{field_id}-error">(.*?)</span>\s*<input id="{field_id}"[^>]*>',
        response.text,
        re.S,
    )
    assert error is not None and message in error.group(1)
    assert 'aria-invalid="true"' in error.group(0)
    assert '<details class="security-disclosure" name="passkey-actions" open>' in response.text
    assert 'role="alert"' in response.text and "There is a problem" in response.text
    [row] = await passkey_rows()
    assert row["name"] == "Google Password Manager"
    assert await audit("passkey.renamed") == []


async def test_someone_elses_passkey_cannot_be_renamed_or_deleted(
    client: httpx.AsyncClient, alice: dict[str, Any], bob_browser: httpx.AsyncClient
) -> None:
    await register(bob_browser, SoftAuthenticator(ORIGIN), await token_of(bob_browser))
    [bobs] = await passkey_rows()
    token = await token_of(client)
    renamed = await client.post(
        f"{URL}/passkeys/{bobs['id']}/rename", data={"_csrf_token": token, "name": "Mine now"}, headers=HTML
    )
    assert renamed.status_code == 404
    # 404 even when the name is bad: the id is checked first, and the answer says nothing about Bob's passkey.
    bad = await client.post(
        f"{URL}/passkeys/{bobs['id']}/rename", data={"_csrf_token": token, "name": ""}, headers=HTML
    )
    assert bad.status_code == 404
    deleted = await client.post(
        f"{URL}/passkeys/{bobs['id']}/delete", data={"_csrf_token": token}, headers=HTML
    )
    assert deleted.status_code == 404
    assert (await passkey_rows())[0]["name"] == bobs["name"]
    assert await audit("passkey.renamed") == [] and await audit("passkey.deleted") == []
    page = await client.get(URL, headers=HTML)
    assert bobs["id"] not in page.text


async def test_delete_a_passkey(client: httpx.AsyncClient, my_passkey: dict[str, Any]) -> None:
    page = await client.get(URL, headers=HTML)
    assert "Delete “Google Password Manager”? You will no longer be able to sign in with it." in page.text
    response = await client.post(
        f"{URL}/passkeys/{my_passkey['id']}/delete",
        data={"_csrf_token": await token_of(client)},
        headers=HTML,
    )
    assert response.status_code == 303
    assert await passkey_rows() == []
    [event] = await audit("passkey.deleted")
    assert event["target"] == my_passkey["id"] and event["details"] == {"name": "Google Password Manager"}
    assert "You have no passkeys yet." in (await client.get(URL, headers=HTML)).text


async def test_last_used_is_shown_after_a_passkey_sign_in(
    client: httpx.AsyncClient, my_passkey: dict[str, Any]
) -> None:
    await Passkey.update({Passkey.last_used_at: clock.utcnow() - timedelta(hours=3)}).where(
        Passkey.id == my_passkey["id"]
    )
    page = await client.get(URL, headers=HTML)
    assert re.search(r"Last used <time [^>]*>3 hours ago</time>", page.text)

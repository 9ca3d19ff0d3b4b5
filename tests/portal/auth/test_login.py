"""The hosted login (DESIGN §4, §5, §8): codes by real SMTP, neutral answers, limits, sessions, JIT join."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
from litestar import Litestar
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.auth import accounts, codes, ratelimit, sessions
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import (
    TABLES,
    AuditEvent,
    Domain,
    LoginChallenge,
    Membership,
    Organization,
    RateEvent,
    Session,
    User,
)
from portal.web.app import create_app
from tests.conftest import serve
from tests.mailserver import Mailbox

HTML = {"accept": "text/html"}
COOKIE = "portal_session"


@pytest.fixture
def settings(settings: Settings, mail: Mailbox) -> Settings:
    """The app sends its mail to the loopback SMTP server."""
    return msgspec.structs.replace(settings, smtp_url=mail.url, brand_name="Acme Cloud")


@pytest.fixture
async def world(db: Engine, policy: PolicyEngine) -> dict[str, Any]:
    acme = await accounts.create_organization("acme", "Acme")
    globex = await accounts.create_organization("globex", "Globex")
    initech = await accounts.create_organization("initech", "Initech")
    await Organization.update({Organization.allowed_email_domains: ["acme.test"]}).where(
        Organization.id == acme["id"]
    )
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", verified=True)
    carol = await accounts.create_user("carol@example.test", given_name="Carol")
    mallory = await accounts.create_user("mallory@example.test")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    await accounts.add_member(acme["id"], carol["id"], ["member"], known_roles=policy.roles)
    await accounts.add_member(globex["id"], carol["id"], ["admin"], known_roles=policy.roles)
    return {
        "acme": acme,
        "globex": globex,
        "initech": initech,
        "alice": alice,
        "carol": carol,
        "mallory": mallory,
    }


# --- helpers ------------------------------------------------------------------------------------------------


def csrf_from(html: str) -> str:
    return html.split('name="_csrf_token" value="', 1)[1].split('"', 1)[0]


async def csrf(client: httpx.AsyncClient, path: str = "/login") -> str:
    """GET a page (which sets the CSRF cookie) and read the token from its form."""
    page = await client.get(path, headers=HTML)
    assert page.status_code == 200, (path, page.status_code)
    return csrf_from(page.text)


async def ask_code(
    client: httpx.AsyncClient, email: str, token: str | None = None, **fields: str
) -> httpx.Response:
    token = token or await csrf(client)
    return await client.post("/login", data={"_csrf_token": token, "email": email, **fields}, headers=HTML)


def challenge_of(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    location = urlsplit(response.headers["location"])
    assert location.path == "/login/code"
    return parse_qs(location.query)["challenge"][0]


async def enter_code(
    client: httpx.AsyncClient, challenge: str, code: str, token: str | None = None, **fields: str
) -> httpx.Response:
    token = token or await csrf(client, f"/login/code?challenge={challenge}")
    return await client.post(
        "/login/code",
        data={"_csrf_token": token, "challenge": challenge, "code": code, **fields},
        headers=HTML,
    )


async def sign_in(client: httpx.AsyncClient, mail: Mailbox, email: str, **fields: str) -> httpx.Response:
    """The whole flow: ask for a code, read it from the SMTP message, enter it."""
    challenge = challenge_of(await ask_code(client, email, **fields))
    return await enter_code(client, challenge, mail.last_code(email), **fields)


def plant(client: httpx.AsyncClient, value: str) -> None:
    """Put ``value`` in the browser's one session cookie (as a browser would: replacing any other)."""
    client.cookies.delete(COOKIE)
    client.cookies.set(COOKIE, value, domain="127.0.0.1")


class ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def session_cookie(response: httpx.Response, name: str = COOKIE) -> str:
    for header in set_cookies(response):
        if header.startswith(f"{name}="):
            return header.split(";", 1)[0].split("=", 1)[1]
    raise AssertionError(f"no {name} cookie in {set_cookies(response)}")


async def audit(action: str) -> list[dict[str, Any]]:
    rows = await AuditEvent.select().where(AuditEvent.action == action).output(load_json=True)
    return list(rows)


async def sessions_of(user_id: str) -> list[dict[str, Any]]:
    return list(await Session.select().where(Session.user == user_id).order_by(Session.created_at))


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- the page ------------------------------------------------------------------------------------------------


async def test_login_page_is_branded_accessible_and_has_no_inline_code(client: httpx.AsyncClient) -> None:
    page = await client.get("/login?return_to=/ui/account/profile&organization=acme", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert "Acme Cloud" in text
    assert '<label for="email">Email address</label>' in text
    field = re.search(r"<input id=\"email\"[^>]*>", text)
    assert field is not None
    assert 'type="email"' in field.group(0)
    # localhost can hold passkeys, so the field also offers them in autofill (conditional mediation).
    assert 'autocomplete="username webauthn"' in field.group(0)
    assert "autofocus" in field.group(0)
    assert "aria-invalid" not in field.group(0)
    assert '<input type="hidden" name="return_to" value="/ui/account/profile">' in text
    assert '<input type="hidden" name="organization" value="acme">' in text
    assert 'name="_csrf_token"' in text
    assert "<style" not in text and " style=" not in text
    # Scripts only from files (the CSP forbids inline code): passkeys.js is the one on this page.
    assert re.findall(r"<script[^>]*>", text) == ['<script src="/static/passkeys.js" defer>']
    assert "You have been signed out" not in text
    assert 'href="/static/portal.css"' in text


async def test_signed_out_notice(client: httpx.AsyncClient) -> None:
    page = await client.get("/login?signed_out=1", headers=HTML)
    assert "You have been signed out." in page.text


async def test_signed_in_user_is_sent_on(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    token, _ = await sessions.create_session(world["alice"]["id"], auth_method="test")
    plant(client, token)
    response = await client.get("/login?return_to=/ui/account/profile", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/account/profile"
    response = await client.get("/login?return_to=//evil.example", headers=HTML)
    assert response.headers["location"] == "/ui/"


# --- the whole flow ------------------------------------------------------------------------------------------


async def test_full_sign_in_with_the_code_from_the_smtp_message(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], mail: Mailbox
) -> None:
    asked = await ask_code(client, "  Alice@ACME.test ")
    challenge = challenge_of(asked)
    assert not set_cookies(asked) or all(not c.startswith(f"{COOKIE}=") for c in set_cookies(asked))

    page = await client.get(asked.headers["location"], headers=HTML)
    assert page.status_code == 200
    assert (
        "We sent a 6-digit code to <strong" in page.text
        and "alice@acme.test</strong> if it can sign in here" in page.text
    )
    assert '<label for="code">Code</label>' in page.text
    code_input = re.search(r"<input id=\"code\"[^>]*>", page.text)
    assert code_input is not None
    for attribute in (
        'inputmode="numeric"',
        'autocomplete="one-time-code"',
        'pattern="[0-9]{6}"',
        "autofocus",
    ):
        assert attribute in code_input.group(0)
    assert "Use another email" in page.text

    [message] = mail.to("alice@acme.test")
    assert message["From"] == settings.mail_from
    assert message["To"] == "alice@acme.test"
    assert message["Subject"] == "Acme Cloud: your sign-in code"
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@localhost>")
    assert message["Date"]
    code = mail.last_code("alice@acme.test")

    signed = await enter_code(client, challenge, code, token=csrf_from(page.text))
    assert signed.status_code == 303
    assert signed.headers["location"] == "/ui/"
    cookie_header = next(c for c in set_cookies(signed) if c.startswith(f"{COOKIE}="))
    assert "HttpOnly" in cookie_header
    assert "SameSite=lax" in cookie_header or "SameSite=Lax" in cookie_header
    assert "Path=/" in cookie_header
    assert "Secure" not in cookie_header  # plain http development URL
    token = session_cookie(signed)
    assert token.startswith("portal_ses_") and len(token) > 40

    home = await client.get("/ui/", headers=HTML)
    assert home.status_code == 200
    assert "<h1>Acme</h1>" in home.text
    assert "Signed in as alice@acme.test" in home.text

    [stored] = await sessions_of(world["alice"]["id"])
    assert stored["token_hash"] == sha256(token)
    assert stored["auth_method"] == "email_code"
    assert stored["active_organization"] == world["acme"]["id"]
    assert stored["ip"] == "127.0.0.1"
    # Neither the cookie nor the code is stored anywhere in the database.
    for table in TABLES:
        for row in await table.select():
            assert token not in repr(row), table
            assert code not in row.values(), table
    stored_challenge = await LoginChallenge.select().where(LoginChallenge.id == challenge).first()
    assert stored_challenge is not None
    assert stored_challenge["code_hash"] not in {code, sha256(code)}
    assert stored_challenge["consumed_at"] is not None

    [event] = await audit("login.succeeded")
    assert event["actor_id"] == world["alice"]["id"]
    assert event["organization_id"] == world["acme"]["id"]
    assert event["target"] == "alice@acme.test"
    assert event["details"]["method"] == "email_code"
    user = await User.select(User.last_organization).where(User.id == world["alice"]["id"]).first()
    assert user == {"last_organization": world["acme"]["id"]}


async def test_secure_cookie_with_host_prefix_on_https(
    settings: Settings, db: Engine, policy: PolicyEngine, world: dict[str, Any], mail: Mailbox
) -> None:
    secure = msgspec.structs.replace(settings, public_url="https://portal.example.com")
    async with serve(create_app(secure, engine=db, policy=policy)) as client:
        client.base_url = httpx.URL("https://portal.example.com")
        signed = await sign_in(client, mail, "alice@acme.test")
    assert signed.status_code == 303
    header = next(c for c in set_cookies(signed) if c.startswith("__Host-portal_session="))
    assert "Secure" in header and "HttpOnly" in header and "Path=/" in header
    assert "Domain=" not in header
    # A dead cookie is cleared with the attributes a __Host- cookie needs to be accepted.
    async with serve(create_app(secure, engine=db, policy=policy)) as client:
        client.base_url = httpx.URL("https://portal.example.com")
        client.cookies.set("__Host-portal_session", "portal_ses_" + "x" * 43)
        page = await client.get("/login", headers=HTML)
    cleared = next(c for c in set_cookies(page) if c.startswith("__Host-portal_session="))
    assert "Max-Age=0" in cleared and "Secure" in cleared and "Path=/" in cleared


# --- bad input and neutral answers -----------------------------------------------------------------------------


async def test_malformed_email_is_shown_next_to_the_field_and_nothing_is_stored(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    response = await ask_code(client, "alice at acme", return_to="/ui/account/profile")
    assert response.status_code == 400
    field = re.search(r"<input id=\"email\"[^>]*>", response.text)
    assert field is not None
    assert 'aria-invalid="true"' in field.group(0)
    assert 'aria-describedby="email-error"' in field.group(0)
    assert 'value="alice at acme"' in field.group(0)
    assert (
        '<p id="email-error" class="field-error">Enter an email address like name@example.com.</p>'
        in response.text
    )
    assert '<input type="hidden" name="return_to" value="/ui/account/profile">' in response.text
    assert await LoginChallenge.count() == 0
    assert await RateEvent.count() == 0
    assert await audit("login.failed") == []
    assert mail.received == []


async def test_unknown_email_gets_the_identical_answer_and_no_mail(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    token = await csrf(client)
    known = await ask_code(client, "alice@acme.test", token)
    unknown = await ask_code(client, "nobody@nowhere.test", token)
    assert known.status_code == unknown.status_code == 303
    known_challenge, unknown_challenge = challenge_of(known), challenge_of(unknown)
    assert known.headers["location"].replace(known_challenge, "X") == unknown.headers["location"].replace(
        unknown_challenge, "X"
    )
    known_page = await client.get(known.headers["location"], headers=HTML)
    unknown_page = await client.get(unknown.headers["location"], headers=HTML)
    assert known_page.status_code == unknown_page.status_code == 200
    assert known_page.text.replace(known_challenge, "X").replace("alice@acme.test", "E") == (
        unknown_page.text.replace(unknown_challenge, "X").replace("nobody@nowhere.test", "E")
    )
    assert len(mail.to("alice@acme.test")) == 1
    assert mail.to("nobody@nowhere.test") == []
    assert len(mail.received) == 1
    [failed] = await audit("login.failed")
    assert failed["target"] == "nobody@nowhere.test"
    assert failed["details"]["reason"] == "unknown_email"
    assert await User.count().where(User.email == "nobody@nowhere.test") == 0
    # Guessing codes for the unsent challenge never signs anyone in.
    response = await enter_code(client, unknown_challenge, "000000", token)
    assert response.status_code == 400
    assert await Session.count() == 0


# --- wrong, expired, locked, replayed ---------------------------------------------------------------------------


async def test_wrong_code_shows_attempts_left(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    challenge = challenge_of(await ask_code(client, "alice@acme.test"))
    code = mail.last_code("alice@acme.test")
    response = await enter_code(client, challenge, wrong(code))
    assert response.status_code == 400
    field = re.search(r"<input id=\"code\"[^>]*>", response.text)
    assert field is not None
    assert 'aria-invalid="true"' in field.group(0)
    assert 'aria-describedby="code-error code-hint"' in field.group(0)
    assert '<p id="code-error" class="field-error">Wrong code. 4 attempts left.</p>' in response.text
    assert COOKIE not in response.headers.get("set-cookie", "")
    [failed] = await audit("login.failed")
    assert failed["target"] == "alice@acme.test"
    assert failed["details"]["reason"] == "wrong_code"
    # Not a 6-digit code at all: said so, and no attempt is used up.
    response = await enter_code(client, challenge, "12ab")
    assert response.status_code == 400
    assert "Enter the 6-digit code from the email." in response.text
    stored = (
        await LoginChallenge.select(LoginChallenge.attempts).where(LoginChallenge.id == challenge).first()
    )
    assert stored == {"attempts": 1}
    # The right code, typed with a space, still works after a wrong one.
    response = await enter_code(client, challenge, f"{code[:3]} {code[3:]}")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"


async def test_expired_code(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    challenge = challenge_of(await ask_code(client, "alice@acme.test"))
    code = mail.last_code("alice@acme.test")
    token = await csrf(client, f"/login/code?challenge={challenge}")
    later = datetime.now(UTC) + timedelta(minutes=10, seconds=1)
    monkeypatch.setattr(clock, "utcnow", lambda: later)
    response = await enter_code(client, challenge, code, token)
    assert response.status_code == 400
    assert "This code has expired. Request a new one." in response.text
    assert 'href="/login"' in response.text
    assert 'id="code"' not in response.text
    assert await Session.count() == 0
    [failed] = await audit("login.failed")
    assert failed["details"]["reason"] == "expired"


async def test_a_code_is_still_good_just_before_it_expires(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    challenge = challenge_of(await ask_code(client, "alice@acme.test"))
    token = await csrf(client, f"/login/code?challenge={challenge}")
    later = datetime.now(UTC) + timedelta(minutes=9, seconds=50)
    monkeypatch.setattr(clock, "utcnow", lambda: later)
    response = await enter_code(client, challenge, mail.last_code("alice@acme.test"), token)
    assert response.status_code == 303


async def test_five_wrong_attempts_lock_the_code(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    challenge = challenge_of(await ask_code(client, "alice@acme.test"))
    code = mail.last_code("alice@acme.test")
    token = await csrf(client, f"/login/code?challenge={challenge}")
    for left in (4, 3, 2, 1):
        response = await enter_code(client, challenge, wrong(code), token)
        expected = f"Wrong code. {left} attempt{'s' if left != 1 else ''} left."
        assert expected in response.text
    response = await enter_code(client, challenge, wrong(code), token)
    assert response.status_code == 400
    assert "Too many wrong attempts. Request a new code." in response.text
    # Locked means locked: the right code no longer works.
    response = await enter_code(client, challenge, code, token)
    assert response.status_code == 400
    assert "Too many wrong attempts. Request a new code." in response.text
    assert COOKIE not in response.headers.get("set-cookie", "")
    assert await Session.count() == 0
    stored = (
        await LoginChallenge.select(LoginChallenge.attempts).where(LoginChallenge.id == challenge).first()
    )
    assert stored == {"attempts": 5}
    reasons = [e["details"]["reason"] for e in await audit("login.failed")]
    assert reasons.count("wrong_code") == 4 and reasons.count("locked") == 2


async def test_code_replayed_after_use(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    challenge = challenge_of(await ask_code(client, "alice@acme.test"))
    code = mail.last_code("alice@acme.test")
    token = await csrf(client, f"/login/code?challenge={challenge}")
    assert (await enter_code(client, challenge, code, token)).status_code == 303
    client.cookies.delete(COOKIE)
    replay = await enter_code(client, challenge, code, token)
    assert replay.status_code == 400
    assert "This code has already been used" in replay.text
    assert COOKIE not in replay.headers.get("set-cookie", "")
    assert len(await sessions_of(world["alice"]["id"])) == 1


async def test_a_double_submit_signs_in_once(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    challenge = challenge_of(await ask_code(client, "alice@acme.test"))
    code = mail.last_code("alice@acme.test")
    token = await csrf(client, f"/login/code?challenge={challenge}")
    first, second = await asyncio.gather(
        enter_code(client, challenge, code, token), enter_code(client, challenge, code, token)
    )
    assert sorted([first.status_code, second.status_code]) == [303, 400]
    assert len(await sessions_of(world["alice"]["id"])) == 1
    assert len(await audit("login.succeeded")) == 1


async def test_unknown_challenge(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    response = await client.get("/login/code?challenge=chl_nope&return_to=/ui/account/profile", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?return_to=%2Fui%2Faccount%2Fprofile"
    token = await csrf(client)
    response = await enter_code(client, "chl_nope", "123456", token)
    assert response.status_code == 400
    assert "This code has expired. Request a new one." in response.text


# --- rate limits ------------------------------------------------------------------------------------------------


async def test_code_requests_are_limited_per_email(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    token = await csrf(client)
    for _ in range(5):
        assert (await ask_code(client, "alice@acme.test", token)).status_code == 303
    refused = await ask_code(client, "ALICE@acme.test", token)
    assert refused.status_code == 429
    retry_after = int(refused.headers["retry-after"])
    assert 890 <= retry_after <= 900
    assert "Too many sign-in codes were requested." in refused.text
    assert "Try again in 15 minutes." in refused.text
    assert len(mail.to("alice@acme.test")) == 5
    assert await LoginChallenge.count() == 5
    # Another address from the same network is not affected.
    assert (await ask_code(client, "carol@example.test", token)).status_code == 303


async def test_code_requests_are_limited_per_ip(
    client: httpx.AsyncClient, app: Litestar, world: dict[str, Any], mail: Mailbox
) -> None:
    token = await csrf(client)
    for n in range(20):
        assert (await ask_code(client, f"user{n}@nowhere.test", token)).status_code == 303
    refused = await ask_code(client, "alice@acme.test", token)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "Try again in" in refused.text
    assert mail.received == []
    # Another address (network) still gets through.
    transport = httpx.ASGITransport(app=app, client=("127.0.0.2", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as other:
        assert (await ask_code(other, "alice@acme.test")).status_code == 303
    assert len(mail.to("alice@acme.test")) == 1


async def test_code_verifications_are_limited_per_ip(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    token = await csrf(client)
    challenges = [(await codes.issue_code("alice@acme.test", "login"))[0] for _ in range(7)]
    for n in range(30):
        response = await enter_code(client, challenges[n // 5], "000000", token)
        assert response.status_code == 400
    challenge, code = await codes.issue_code("alice@acme.test", "login")
    refused = await enter_code(client, challenge, code, token)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert await Session.count() == 0


async def test_rate_limit_window_slides(db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    now = {"t": start}
    monkeypatch.setattr(clock, "utcnow", lambda: now["t"])
    for minute in range(3):
        now["t"] = start + timedelta(minutes=minute)
        assert (await ratelimit.hit("k", 3, 600)).allowed
    now["t"] = start + timedelta(minutes=5)
    refused = await ratelimit.hit("k", 3, 600)
    assert not refused.allowed
    assert refused.retry_after_seconds == 300  # the first hit leaves the window at 12:10
    now["t"] = start + timedelta(minutes=10, seconds=1)
    assert (await ratelimit.hit("k", 3, 600)).allowed
    assert not (await ratelimit.hit("k", 3, 600)).allowed
    assert (await ratelimit.hit("other", 3, 600)).allowed
    # Refused hits are not counted, and a key's old events are pruned.
    assert await RateEvent.count().where(RateEvent.key == "k") == 3


# --- codes API (shared with the Profile widget) ---------------------------------------------------------------


async def test_codes_are_single_use_per_purpose(db: Engine) -> None:
    challenge, code = await codes.issue_code(
        "new@acme.test", "email_change", details={"new_email": "new@acme.test"}
    )
    assert re.fullmatch(r"[0-9]{6}", code)
    assert challenge.startswith("chl_")
    assert (await codes.verify_code(challenge, code, "login")).status == "unknown"
    assert (await codes.verify_code("chl_missing", code, "email_change")).status == "unknown"
    result = await codes.verify_code(challenge, code, "email_change")
    assert result.status == "ok"
    assert result.challenge is not None
    assert result.challenge["details"] == {"new_email": "new@acme.test"}
    assert "code_hash" not in result.challenge
    assert (await codes.verify_code(challenge, code, "email_change")).status == "used"
    with pytest.raises(ValueError, match="purpose"):
        await codes.issue_code("a@acme.test", "nonsense")


async def test_codes_respect_their_ttl(db: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    challenge, code = await codes.issue_code("a@acme.test", "login", ttl_seconds=60)
    later = datetime.now(UTC) + timedelta(seconds=61)
    monkeypatch.setattr(clock, "utcnow", lambda: later)
    result = await codes.verify_code(challenge, code, "login")
    assert result.status == "expired" and result.attempts_left == 0


# --- return_to ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "evil",
    ["//evil.example", "https://evil.example", "/\\evil.example", "javascript:alert(1)", "/\\/evil.example"],
)
async def test_return_to_attacks_are_ignored(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox, evil: str
) -> None:
    page = await client.get("/login", params={"return_to": evil}, headers=HTML)
    assert "evil" not in page.text and "javascript" not in page.text
    signed = await sign_in(client, mail, "alice@acme.test", return_to=evil)
    assert signed.status_code == 303
    assert signed.headers["location"] == "/ui/"


async def test_return_to_a_portal_page(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    signed = await sign_in(client, mail, "alice@acme.test", return_to="/ui/account/profile?tab=email")
    assert signed.headers["location"] == "/ui/account/profile?tab=email"


# --- CSRF, cookies and sessions ---------------------------------------------------------------------------------


async def test_csrf_token_missing_on_login_and_logout_is_refused(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await csrf(client)  # the CSRF cookie is set, but the form field is left out
    refused = await client.post("/login", data={"email": "alice@acme.test"}, headers=HTML)
    assert refused.status_code == 403
    assert await LoginChallenge.count() == 0
    assert mail.received == []

    assert (await sign_in(client, mail, "alice@acme.test")).status_code == 303
    refused = await client.post("/logout", headers=HTML)
    assert refused.status_code == 403
    [stored] = await sessions_of(world["alice"]["id"])
    assert stored["revoked_at"] is None
    assert (await client.get("/ui/", headers=HTML)).status_code == 200


async def test_logout_revokes_the_session(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    signed = await sign_in(client, mail, "alice@acme.test")
    old_cookie = session_cookie(signed)
    token = await csrf(client, "/ui/")
    response = await client.post("/logout", data={"_csrf_token": token}, headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?signed_out=1"
    cleared = next(c for c in set_cookies(response) if c.startswith(f"{COOKIE}="))
    assert "Max-Age=0" in cleared or "expires=" in cleared.lower()
    [stored] = await sessions_of(world["alice"]["id"])
    assert stored["revoked_at"] is not None
    assert stored["revoke_reason"] == "logout"
    [event] = await audit("logout")
    assert event["actor_id"] == world["alice"]["id"]
    page = await client.get(response.headers["location"], headers=HTML)
    assert page.status_code == 200
    assert "You have been signed out." in page.text
    # The old cookie no longer works.
    plant(client, old_cookie)
    again = await client.get("/ui/", headers=HTML)
    assert again.status_code == 303
    assert again.headers["location"] == "/login?return_to=/ui/"


async def test_another_users_revoked_session_cookie_leads_to_the_login_page(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    token, session_id = await sessions.create_session(world["carol"]["id"], auth_method="email_code")
    await sessions.revoke(session_id, "user")
    plant(client, token)
    response = await client.get("/ui/", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?return_to=/ui")
    page = await client.get(response.headers["location"], headers=HTML)
    assert page.status_code == 200
    assert '<input id="email"' in page.text
    assert "Carol" not in page.text
    # The useless cookie is cleared.
    assert any(c.startswith(f"{COOKIE}=") and "Max-Age=0" in c for c in set_cookies(page))


async def test_a_tampered_cookie_leads_to_the_login_page(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    good = session_cookie(await sign_in(client, mail, "alice@acme.test"))
    tampered = good[:-1] + ("A" if good[-1] != "A" else "B")
    plant(client, tampered)
    response = await client.get("/ui/", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    page = await client.get("/login", headers=HTML)
    assert page.status_code == 200
    assert '<input id="email"' in page.text


async def test_every_sign_in_gets_a_new_session_and_a_planted_cookie_is_not_adopted(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    planted = "portal_ses_" + "A" * 43
    plant(client, planted)
    first = session_cookie(await sign_in(client, mail, "alice@acme.test"))
    assert first != planted
    assert await Session.count().where(Session.token_hash == sha256(planted)) == 0

    # An attacker's own live session planted in the victim's browser is replaced, not adopted.
    mallory_token, mallory_session = await sessions.create_session(
        world["mallory"]["id"], auth_method="email_code"
    )
    plant(client, mallory_token)
    token = await csrf(client, "/ui/")
    challenge = challenge_of(await ask_code(client, "alice@acme.test", token))
    second_response = await enter_code(client, challenge, mail.last_code("alice@acme.test"), token)
    second = session_cookie(second_response)
    assert second not in {first, mallory_token}
    home = await client.get("/ui/", headers=HTML)
    assert "Signed in as alice@acme.test" in home.text
    alice_sessions = await sessions_of(world["alice"]["id"])
    assert len(alice_sessions) == 2
    assert alice_sessions[0]["id"] != alice_sessions[1]["id"]
    assert alice_sessions[1]["token_hash"] == sha256(second)
    replaced = await Session.select(Session.revoke_reason).where(Session.id == mallory_session).first()
    assert replaced == {"revoke_reason": "replaced"}


# --- development outbox -----------------------------------------------------------------------------------------


async def test_without_smtp_the_code_is_written_to_the_outbox(
    settings: Settings,
    db: Engine,
    policy: PolicyEngine,
    world: dict[str, Any],
    mail: Mailbox,
) -> None:
    outbox_settings = msgspec.structs.replace(settings, smtp_url=None)
    logged: list[logging.LogRecord] = []
    handler = ListHandler(logged)
    logging.getLogger("portal.mail").addHandler(handler)
    try:
        async with serve(create_app(outbox_settings, engine=db, policy=policy)) as client:
            challenge = challenge_of(await ask_code(client, "alice@acme.test"))
            files = sorted((Path(settings.data_dir) / "outbox").glob("*.eml"))
            assert len(files) == 1
            assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-alice@acme\.test\.eml", files[0].name)
            text = files[0].read_text()
            assert "Subject: Acme Cloud: your sign-in code" in text
            code = re.search(r"^\s+(\d{6})\s*$", text, re.MULTILINE)
            assert code is not None
            # The development outbox logs the code itself, so `make run` can be used from the console.
            assert [r.getMessage() for r in logged] == [
                f"mail to alice@acme.test written to {files[0]} (development outbox: sign-in code "
                f"{code.group(1)})"
            ]
            signed = await enter_code(client, challenge, code.group(1))
            assert signed.status_code == 303
            assert signed.headers["location"] == "/ui/"
    finally:
        logging.getLogger("portal.mail").removeHandler(handler)
    assert mail.received == []


# --- JIT join -----------------------------------------------------------------------------------------------------


async def test_allowed_domain_gets_a_code_and_an_offer_to_join(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    signed = await sign_in(client, mail, "dave@acme.test")
    assert signed.status_code == 303
    assert signed.headers["location"] == "/ui/join?return_to=%2Fui%2F"
    dave = await User.select().where(User.email == "dave@acme.test").first()
    assert dave is not None and dave["email_verified"] is True
    assert await Membership.count().where(Membership.user == dave["id"]) == 0

    page = await client.get(signed.headers["location"], headers=HTML)
    assert page.status_code == 200
    assert "Join Acme" in page.text
    assert "Globex" not in page.text
    assert 'href="/ui/">Not now</a>' in page.text
    response = await client.post(
        "/ui/join",
        data={
            "_csrf_token": csrf_from(page.text),
            "organization_id": world["acme"]["id"],
            "return_to": "/ui/",
        },
        headers=HTML,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"
    [membership] = await Membership.select().where(Membership.user == dave["id"]).output(load_json=True)
    assert membership["organization"] == world["acme"]["id"]
    assert membership["roles"] == ["member"]
    assert membership["source"] == "jit"
    assert membership["status"] == "active"
    [joined] = await audit("member.joined")
    assert joined["organization_id"] == world["acme"]["id"]
    assert joined["actor_id"] == dave["id"]
    assert joined["details"]["source"] == "jit"
    [stored] = await sessions_of(dave["id"])
    assert stored["active_organization"] == world["acme"]["id"]
    home = await client.get("/ui/", headers=HTML)
    assert "<h1>Acme</h1>" in home.text
    assert "You joined Acme." in home.text
    # Nothing left to offer.
    assert (await client.get("/ui/join", headers=HTML)).headers["location"] == "/ui/"


async def test_not_now_adds_nothing(client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox) -> None:
    signed = await sign_in(client, mail, "dave@acme.test", return_to="/ui/account/profile")
    assert signed.headers["location"] == "/ui/join?return_to=%2Fui%2Faccount%2Fprofile"
    page = await client.get(signed.headers["location"], headers=HTML)
    assert 'href="/ui/account/profile">Not now</a>' in page.text
    home = await client.get("/ui/", headers=HTML)
    assert home.status_code == 200
    assert "You are not in an organization yet" in home.text
    assert await Membership.count().where(Membership.source == "jit") == 0
    assert await audit("member.joined") == []


async def test_a_domain_verified_by_dns_is_still_only_offered(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    # Nobody joins an organization without an invitation or their own choice, verified domain or not.
    await Domain(
        organization=world["acme"]["id"],
        domain="acme.test",
        status="verified",
        verified_domain="acme.test",
        verification_token="t" * 32,
        verified_at=clock.utcnow(),
    ).save()
    signed = await sign_in(client, mail, "dave@acme.test")
    assert signed.headers["location"] == "/ui/join?return_to=%2Fui%2F"
    assert await Membership.count().where(Membership.source == "jit") == 0
    assert await audit("member.joined") == []


async def test_join_checks_the_organization_on_the_server(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], mail: Mailbox
) -> None:
    await sign_in(client, mail, "dave@acme.test")
    dave = await accounts.find_user("dave@acme.test")
    assert dave is not None
    token = await csrf(client, "/ui/join")
    for other in (world["globex"]["id"], world["initech"]["name"], "org_nope"):
        response = await client.post(
            "/ui/join", data={"_csrf_token": token, "organization_id": other}, headers=HTML
        )
        assert response.status_code == 404
    assert await Membership.count().where(Membership.user == dave["id"]) == 0
    # A user who has not proven the address is offered nothing and can join nothing.
    unproven = await accounts.create_user("erin@acme.test")
    session_token, _ = await sessions.create_session(unproven["id"], auth_method="test")
    plant(client, session_token)
    offer = await client.get("/ui/join", headers=HTML)
    assert offer.status_code == 303
    response = await client.post(
        "/ui/join", data={"_csrf_token": token, "organization_id": world["acme"]["id"]}, headers=HTML
    )
    assert response.status_code == 404
    assert await Membership.count().where(Membership.user == unproven["id"]) == 0


async def test_join_requires_sign_in(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    response = await client.get("/ui/join", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?return_to=/ui/join"


# --- the active organization --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["name", "id"])
async def test_organization_parameter_chooses_the_active_organization(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox, ref: str
) -> None:
    signed = await sign_in(client, mail, "carol@example.test", organization=world["globex"][ref])
    assert signed.headers["location"] == "/ui/"
    [stored] = await sessions_of(world["carol"]["id"])
    assert stored["active_organization"] == world["globex"]["id"]
    user = await User.select(User.last_organization).where(User.id == world["carol"]["id"]).first()
    assert user == {"last_organization": world["globex"]["id"]}
    assert "<h1>Globex</h1>" in (await client.get("/ui/", headers=HTML)).text


async def test_several_organizations_and_none_used_yet_go_to_the_chooser(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    # initech: the user is not a member there, so the parameter is ignored.
    signed = await sign_in(client, mail, "carol@example.test", organization="initech")
    assert signed.headers["location"] == "/ui/organizations?return_to=%2Fui%2F"
    [stored] = await sessions_of(world["carol"]["id"])
    assert stored["active_organization"] is None
    chooser = await client.get(signed.headers["location"], headers=HTML)
    assert "Acme" in chooser.text and "Globex" in chooser.text and "Initech" not in chooser.text


async def test_the_last_used_organization_is_chosen_again(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await User.update({User.last_organization: world["globex"]["id"]}).where(User.id == world["carol"]["id"])
    signed = await sign_in(client, mail, "carol@example.test")
    assert signed.headers["location"] == "/ui/"
    [stored] = await sessions_of(world["carol"]["id"])
    assert stored["active_organization"] == world["globex"]["id"]


async def test_a_last_used_organization_the_user_left_is_not_chosen(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await User.update({User.last_organization: world["initech"]["id"]}).where(User.id == world["carol"]["id"])
    signed = await sign_in(client, mail, "carol@example.test")
    assert signed.headers["location"].startswith("/ui/organizations")
    [stored] = await sessions_of(world["carol"]["id"])
    assert stored["active_organization"] is None


async def test_audit_records_success_failure_and_sign_out(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    challenge = challenge_of(await ask_code(client, "alice@acme.test"))
    code = mail.last_code("alice@acme.test")
    await enter_code(client, challenge, wrong(code))
    await enter_code(client, challenge, code)
    token = await csrf(client, "/ui/")
    await client.post("/logout", data={"_csrf_token": token}, headers=HTML)
    rows = await AuditEvent.select().where(
        AuditEvent.action.is_in(["login.failed", "login.succeeded", "logout"])
    )
    actions = sorted(row["action"] for row in rows)
    assert actions == ["login.failed", "login.succeeded", "logout"]
    assert all(row["ip"] == "127.0.0.1" for row in rows)


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/ui/", "/login?return_to=/ui/"),
        ("/ui/account/profile?tab=a%20b", "/login?return_to=/ui/account/profile%3Ftab%3Da%2520b"),
        ("/ui/organization/members/mem_%C3%A9", "/login?return_to=/ui/organization/members/mem_%C3%A9"),
    ],
)
async def test_signed_out_browsers_come_back_to_the_exact_path(
    client: httpx.AsyncClient, path: str, location: str
) -> None:
    response = await client.get(path, headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == location


async def test_with_smtp_the_code_is_never_logged(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    logged: list[logging.LogRecord] = []
    handler = ListHandler(logged)
    logging.getLogger("portal").addHandler(handler)
    try:
        await ask_code(client, "alice@acme.test")
        code = mail.last_code("alice@acme.test")
    finally:
        logging.getLogger("portal").removeHandler(handler)
    messages = [r.getMessage() for r in logged]
    assert "mail to alice@acme.test sent (Acme Cloud: your sign-in code)" in messages
    assert not any(code in m for m in messages)


async def test_the_code_mail_is_multipart_text_and_html(
    client: httpx.AsyncClient, world: dict[str, Any], mail: Mailbox
) -> None:
    await ask_code(client, "alice@acme.test")
    [message] = mail.to("alice@acme.test")
    assert message.get_content_type() == "multipart/alternative"
    code = mail.last_code("alice@acme.test")
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None
    page = html_part.get_content()
    assert f">{code}</p>" in page
    assert "<title>Acme Cloud: your sign-in code</title>" in page
    assert 'lang="en"' in page

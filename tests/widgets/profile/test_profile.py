"""The Profile widget: view and edit names (no language: nothing is translated yet), change the email address with a code."""

from __future__ import annotations

import html
import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, LoginChallenge, User
from portal.web.app import create_app
from portal.web.registry import WidgetRegistry
from tests.conftest import serve
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in
from widgets.profile import WIDGET, service
from widgets.profile.service import normalize_locale

HTML = {"accept": "text/html"}
URL = "/ui/account/profile"
EMAIL_URL = f"{URL}/email"
VERIFY_URL = f"{URL}/email/verify"
PROFILE_COLUMNS = ("email", "email_verified", "given_name", "family_name", "display_name", "locale")


# --- helpers -------------------------------------------------------------------------------------------


async def stored(user_id: str) -> dict[str, Any]:
    row = (
        await User.select(*(User._meta.get_column_by_name(c) for c in PROFILE_COLUMNS))
        .where(User.id == user_id)
        .first()
    )
    assert row is not None
    return cast(dict[str, Any], row)


async def audit_events(action: str) -> list[dict[str, Any]]:
    rows = (
        await AuditEvent.select()
        .where(AuditEvent.action == action)
        .order_by(AuditEvent.at)
        .output(load_json=True)
    )
    return cast(list[dict[str, Any]], rows)


def outbox(settings: Settings) -> list[EmailMessage]:
    folder = Path(settings.data_dir) / "outbox"
    if not folder.exists():
        return []
    return [
        cast(EmailMessage, message_from_bytes(path.read_bytes(), policy=policy.default))
        for path in sorted(folder.glob("*.eml"))
    ]


def mail_to(settings: Settings, address: str) -> list[EmailMessage]:
    return [m for m in outbox(settings) if m["To"] == address]


def code_sent_to(settings: Settings, address: str) -> str:
    messages = mail_to(settings, address)
    assert len(messages) >= 1, f"no mail to {address}"
    body = messages[-1].get_body(preferencelist=("plain",)).get_content()
    match = re.search(r"\b(\d{6})\b", body)
    assert match, body
    return match.group(1)


def field_error(page: str, field: str) -> str:
    """The message shown next to ``field`` (and asserted to be wired to it for assistive technology)."""
    match = re.search(
        rf'<span class="field-error" id="{field}-error"><span class="visually-hidden">Error: </span>(.*?)</span>',
        page,
        re.S,
    )
    assert match, f"no error shown for {field}"
    control = re.search(rf'<(?:input|select) id="{field}"[^>]*>', page)
    assert control, f"no control {field}"
    assert 'aria-invalid="true"' in control.group(0)
    described = re.search(r'aria-describedby="([^"]*)"', control.group(0))
    assert described and f"{field}-error" in described.group(1).split()
    return html.unescape(match.group(1)).strip()


def input_value(page: str, field: str) -> str:
    control = re.search(rf'<input id="{field}" name="{field}"[^>]*value="([^"]*)"', page)
    assert control, f"no input {field}"
    return html.unescape(control.group(1))


async def flash_after(client: httpx.AsyncClient, response: httpx.Response) -> str:
    """Follow a 303 and return the flash message the next page shows."""
    assert response.status_code == 303, response.text
    page = await client.get(response.headers["location"], headers=HTML)
    match = re.search(r'<div class="flash flash-(\w+)"[^>]*>(.*?)</div>', page.text, re.S)
    assert match, "no flash message"
    return f"{match.group(1)}: {html.unescape(match.group(2)).strip()}"


@pytest.fixture
async def ada(db: Engine) -> dict[str, Any]:
    user = await make_user("ada@example.test", given_name="Ada", family_name="Lovelace")
    await User.update({User.locale: "en-GB"}).where(User.id == user["id"])
    return await stored_with_id(user["id"])


async def stored_with_id(user_id: str) -> dict[str, Any]:
    return {"id": user_id, **await stored(user_id)}


def profile_form(**overrides: str) -> dict[str, str]:
    form = {"given_name": "Ada", "family_name": "Lovelace", "display_name": "Ada Lovelace"}
    form.update(overrides)
    return form


async def post_profile(client: httpx.AsyncClient, **overrides: str) -> httpx.Response:
    token = await csrf_token(client, URL)
    return await client.post(URL, data={"_csrf_token": token, **profile_form(**overrides)}, headers=HTML)


async def request_change(client: httpx.AsyncClient, new_email: str) -> httpx.Response:
    token = await csrf_token(client, URL)
    return await client.post(EMAIL_URL, data={"_csrf_token": token, "new_email": new_email}, headers=HTML)


def challenge_of(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    location = urlsplit(response.headers["location"])
    assert location.path == VERIFY_URL
    return parse_qs(location.query)["challenge_id"][0]


async def submit_code(client: httpx.AsyncClient, challenge_id: str, code: str) -> httpx.Response:
    token = await csrf_token(client, URL)
    return await client.post(
        VERIFY_URL, data={"_csrf_token": token, "challenge_id": challenge_id, "code": code}, headers=HTML
    )


# --- who may open it -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [URL, f"{VERIFY_URL}?challenge_id=chl_x"])
async def test_anonymous_browser_goes_to_login(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers=HTML)
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/login?return_to=")
    assert parse_qs(urlsplit(location).query)["return_to"] == [path]


async def test_anonymous_api_client_gets_401(client: httpx.AsyncClient) -> None:
    response = await client.get(URL, headers={"accept": "application/json"})
    assert response.status_code == 401
    assert response.json()["error"]["status"] == 401


@pytest.mark.parametrize("path", [URL, EMAIL_URL, VERIFY_URL])
async def test_anonymous_post_goes_to_login_and_changes_nothing(
    client: httpx.AsyncClient, ada: dict[str, Any], path: str
) -> None:
    await client.get(URL, headers=HTML)  # the redirect sets the CSRF cookie, as for any browser
    token = client.cookies["portal_csrf"]
    data = {"_csrf_token": token, **profile_form(given_name="Mallory"), "new_email": "m@example.test"}
    response = await client.post(path, data=data, headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?return_to={path}"
    assert (await stored(ada["id"]))["given_name"] == "Ada"
    assert await AuditEvent.count().where(AuditEvent.action.like("profile.%")) == 0
    api = await client.post(path, data=data, headers={"accept": "application/json"})
    assert api.status_code == 401


def test_every_profile_route_is_open_to_signed_in_users_only(app: Litestar) -> None:
    assert WIDGET.url == URL
    assert WIDGET.read_permission is None
    methods = set()
    for route in app.routes:
        if not route.path.startswith(URL):
            continue
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler, HTTPRouteHandler) and handler.http_methods != {"OPTIONS"}:
                assert handler.opt.get("authenticated") is True, route.path
                assert not handler.opt.get("public"), route.path
                methods |= {f"{m} {route.path}" for m in handler.http_methods}
    assert methods == {
        f"GET {URL}",
        f"POST {URL}",
        f"POST {EMAIL_URL}",
        f"GET {VERIFY_URL}",
        f"POST {VERIFY_URL}",
    }


async def test_home_and_nav_show_profile_to_a_user_without_organization(
    client: httpx.AsyncClient, ada: dict[str, Any]
) -> None:
    await sign_in(client, ada)
    home = await client.get("/ui/", headers=HTML)
    assert home.status_code == 200
    cards = home.text.split('id="account-heading"', 1)[1]
    assert f'<a href="{URL}"><strong>Profile</strong>' in cards
    nav = home.text.split('<nav class="sidenav"', 1)[1].split("</nav>", 1)[0]
    assert f'<a href="{URL}" >Profile</a>' in nav


async def test_home_and_nav_show_profile_to_a_member(client: httpx.AsyncClient, ada: dict[str, Any]) -> None:
    org = await make_org(display_name="Analytical Engines")
    await make_member(org, ada, roles=["member"])
    await sign_in(client, ada, org)
    home = await client.get("/ui/", headers=HTML)
    assert "<h1>Analytical Engines</h1>" in home.text
    assert f'<a href="{URL}"><strong>Profile</strong>' in home.text
    page = await client.get(URL, headers=HTML)
    nav = page.text.split('<nav class="sidenav"', 1)[1].split("</nav>", 1)[0]
    assert f'<a href="{URL}" aria-current="page">Profile</a>' in nav


# --- viewing and saving ------------------------------------------------------------------------------------


async def test_signed_in_user_sees_their_profile(client: httpx.AsyncClient, ada: dict[str, Any]) -> None:
    await make_user("someone.else@example.test", given_name="Charles")
    await sign_in(client, ada)
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    assert "<title>Profile · Portal</title>" in page.text
    assert '<span id="current-email">ada@example.test</span>' in page.text
    assert '<span class="badge ok">Verified</span>' in page.text
    assert input_value(page.text, "given_name") == "Ada"
    assert input_value(page.text, "family_name") == "Lovelace"
    assert input_value(page.text, "display_name") == "Ada Lovelace"
    # A language that would translate nothing is not offered, and the page says it is in English.
    assert 'id="locale"' not in page.text
    assert "Language" not in page.text
    assert '<html lang="en">' in page.text
    assert "Charles" not in page.text
    assert page.text.count('name="_csrf_token"') >= 3  # both forms and sign-out


async def test_unverified_email_says_so(client: httpx.AsyncClient, db: Engine) -> None:
    user = await make_user(verified=False)
    await sign_in(client, user)
    page = await client.get(URL, headers=HTML)
    assert '<span class="badge">Not verified</span>' in page.text
    assert "badge ok" not in page.text


async def test_names_are_escaped(client: httpx.AsyncClient, ada: dict[str, Any]) -> None:
    await User.update({User.given_name: "<script>alert(1)</script>"}).where(User.id == ada["id"])
    await sign_in(client, ada)
    page = await client.get(URL, headers=HTML)
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_save_stores_trimmed_values_and_audits_the_changes(
    client: httpx.AsyncClient, ada: dict[str, Any]
) -> None:
    org = await make_org()
    await make_member(org, ada)
    await sign_in(client, ada, org)
    response = await post_profile(
        client, given_name="  Augusta Ada ", family_name="King", display_name="", locale="pt-br"
    )  # a forged locale field is ignored
    assert response.status_code == 303
    assert response.headers["location"] == URL
    assert await flash_after(client, response) == "ok: Profile saved."
    row = await stored(ada["id"])
    assert row["given_name"] == "Augusta Ada"
    assert row["family_name"] == "King"
    assert row["display_name"] == "Augusta Ada King"  # derived from the names when left empty
    assert row["locale"] == "en-GB"  # unchanged: the form has no language field any more
    assert row["email"] == "ada@example.test"
    [event] = await audit_events("profile.updated")
    assert event["actor_id"] == ada["id"]
    assert event["target"] == ada["id"]
    assert event["organization_id"] == org["id"]
    assert event["ip"] == "127.0.0.1"
    assert event["details"]["fields"] == ["given_name", "family_name", "display_name"]
    assert event["details"]["changes"]["given_name"] == {"old": "Ada", "new": "Augusta Ada"}
    assert "locale" not in event["details"]["changes"]
    page = await client.get(URL, headers=HTML)
    assert input_value(page.text, "display_name") == "Augusta Ada King"
    assert '<html lang="en">' in page.text


async def test_only_changed_fields_are_audited(client: httpx.AsyncClient, ada: dict[str, Any]) -> None:
    await sign_in(client, ada)
    response = await post_profile(client, display_name="Countess of Lovelace")
    assert await flash_after(client, response) == "ok: Profile saved."
    [event] = await audit_events("profile.updated")
    assert event["details"]["fields"] == ["display_name"]
    assert event["details"]["changes"] == {
        "display_name": {"old": "Ada Lovelace", "new": "Countess of Lovelace"}
    }
    assert event["organization_id"] is None


async def test_nothing_changed_writes_no_audit_event(client: httpx.AsyncClient, ada: dict[str, Any]) -> None:
    await sign_in(client, ada)
    response = await post_profile(client, given_name=" Ada ")  # the same after trimming
    assert await flash_after(client, response) == "ok: Nothing changed."
    assert await audit_events("profile.updated") == []


BAD_INPUT = [
    ("given_name", "x" * 101, "Use at most 100 characters (this has 101)."),
    ("family_name", "é" * 101, "Use at most 100 characters (this has 101)."),
    ("display_name", "x" * 201, "Use at most 200 characters (this has 201)."),
    ("given_name", "Ada\nLovelace", "Remove control characters such as line breaks and tabs."),
    ("family_name", "Love\x00lace", "Remove control characters such as line breaks and tabs."),
    ("display_name", "Ada\tL", "Remove control characters such as line breaks and tabs."),
    ("display_name", "\u202eecalevoL", "Remove control characters such as line breaks and tabs."),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_INPUT)
async def test_bad_input_is_shown_next_to_the_field_and_nothing_is_saved(
    client: httpx.AsyncClient, ada: dict[str, Any], field: str, value: str, message: str
) -> None:
    await sign_in(client, ada)
    before = await stored(ada["id"])
    entered = {"given_name": "Augusta", "family_name": "King", "display_name": "A. King"}
    response = await post_profile(client, **{**entered, field: value})
    assert response.status_code == 400
    assert field_error(response.text, field) == message
    assert "There is a problem" in response.text
    # Only that field is marked; what the user typed is kept in every field.
    for other, kept in entered.items():
        if other != field:
            assert f'id="{other}-error"' not in response.text
            assert input_value(response.text, other) == kept
    assert input_value(response.text, field) == value
    assert await stored(ada["id"]) == before
    assert await audit_events("profile.updated") == []


async def test_several_bad_fields_are_all_reported(client: httpx.AsyncClient, ada: dict[str, Any]) -> None:
    await sign_in(client, ada)
    response = await post_profile(client, given_name="x" * 101, display_name="y\tz")
    assert response.status_code == 400
    assert field_error(response.text, "given_name").startswith("Use at most 100 characters")
    assert (
        field_error(response.text, "display_name")
        == "Remove control characters such as line breaks and tabs."
    )
    assert (await stored(ada["id"]))["given_name"] == "Ada"


async def test_post_without_csrf_token_is_refused(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any]
) -> None:
    await sign_in(client, ada)
    await client.get(URL, headers=HTML)  # has the CSRF cookie, but sends no token
    response = await client.post(URL, data=profile_form(given_name="Mallory"), headers=HTML)
    assert response.status_code == 403
    forged = await client.post(
        URL, data={"_csrf_token": "0" * 128, **profile_form(given_name="Mallory")}, headers=HTML
    )
    assert forged.status_code == 403
    email = await client.post(EMAIL_URL, data={"new_email": "m@example.test"}, headers=HTML)
    assert email.status_code == 403
    assert (await stored(ada["id"]))["given_name"] == "Ada"
    assert outbox(settings) == []
    assert await AuditEvent.count().where(AuditEvent.action.like("profile.%")) == 0


async def test_a_forged_user_id_changes_only_the_signed_in_user(
    client: httpx.AsyncClient, ada: dict[str, Any]
) -> None:
    charles = await make_user("charles@example.test", given_name="Charles", family_name="Babbage")
    charles_before = await stored(charles["id"])
    await sign_in(client, ada)
    token = await csrf_token(client, URL)
    data = {
        "_csrf_token": token,
        **profile_form(given_name="Hacked"),
        "user_id": charles["id"],
        "id": charles["id"],
        "email": "ada-took-over@example.test",
        "email_verified": "false",
    }
    response = await client.post(URL, data=data, headers=HTML)
    assert response.status_code == 303
    assert await stored(charles["id"]) == charles_before
    mine = await stored(ada["id"])
    assert mine["given_name"] == "Hacked"
    assert mine["email"] == "ada@example.test"
    assert mine["email_verified"] is True
    [event] = await audit_events("profile.updated")
    assert event["target"] == ada["id"]


# --- changing the email address ---------------------------------------------------------------------------


async def test_email_change_happy_path(client: httpx.AsyncClient, settings: Settings, db: Engine) -> None:
    user = await make_user("old@example.test", given_name="Ada", verified=False)
    await sign_in(client, user)
    response = await request_change(client, "  New@Example.TEST ")
    challenge_id = challenge_of(response)
    page = await client.get(response.headers["location"], headers=HTML)
    assert page.status_code == 200
    assert "We sent a 6-digit code to new@example.test." in page.text  # the flash
    assert "<strong>new@example.test</strong>" in page.text
    assert f'name="challenge_id" value="{challenge_id}"' in page.text
    # Nothing has changed yet; the code went to the new address only.
    assert (await stored(user["id"]))["email"] == "old@example.test"
    assert mail_to(settings, "old@example.test") == []
    [mail] = mail_to(settings, "new@example.test")
    assert "confirm your new email address" in mail["Subject"]
    code = code_sent_to(settings, "new@example.test")
    [requested] = await audit_events("profile.email_change_requested")
    assert requested["actor_id"] == user["id"]
    assert requested["details"]["old"] == "old@example.test"
    assert requested["details"]["new"] == "new@example.test"

    response = await submit_code(client, challenge_id, code[:3] + " " + code[3:])  # spaces are forgiven
    assert response.headers["location"] == URL
    assert await flash_after(client, response) == "ok: Your email address is now new@example.test."
    row = await stored(user["id"])
    assert row["email"] == "new@example.test"
    assert row["email_verified"] is True
    [changed] = await audit_events("profile.email_changed")
    assert changed["actor_id"] == user["id"]
    assert changed["target"] == user["id"]
    assert changed["details"] == {"old": "old@example.test", "new": "new@example.test"}
    # The previous address is told, without naming the new one.
    [notice] = mail_to(settings, "old@example.test")
    assert "new@example.test" not in notice.get_body(preferencelist=("plain",)).get_content()
    assert "new@example.test" not in notice.get_body(preferencelist=("html",)).get_content()
    page = await client.get(URL, headers=HTML)
    assert '<span id="current-email">new@example.test</span>' in page.text
    assert '<span class="badge ok">Verified</span>' in page.text
    # The code is single use.
    again = await submit_code(client, challenge_id, code)
    assert await flash_after(client, again) == (
        "error: That email change is no longer waiting for a code. "
        "Start again if you still want to change it."
    )


async def test_wrong_code_says_how_many_attempts_are_left(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any]
) -> None:
    await sign_in(client, ada)
    challenge_id = challenge_of(await request_change(client, "ada@new.example"))
    code = code_sent_to(settings, "ada@new.example")
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    response = await submit_code(client, challenge_id, wrong)
    assert response.status_code == 400
    assert field_error(response.text, "code") == "That code is not right. 4 attempts left."
    assert input_value(response.text, "code") == wrong
    assert (await stored(ada["id"]))["email"] == "ada@example.test"
    response = await submit_code(client, challenge_id, "12345")
    assert response.status_code == 400
    assert field_error(response.text, "code") == "Enter the 6-digit code from the email."
    response = await submit_code(client, challenge_id, code)
    assert response.status_code == 303
    assert (await stored(ada["id"]))["email"] == "ada@new.example"


async def test_too_many_wrong_codes_lock_the_change(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any]
) -> None:
    await sign_in(client, ada)
    challenge_id = challenge_of(await request_change(client, "ada@new.example"))
    code = code_sent_to(settings, "ada@new.example")
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    messages = [field_error((await submit_code(client, challenge_id, wrong)).text, "code") for _ in range(5)]
    assert messages[3] == "That code is not right. 1 attempt left."
    assert messages[4] == "Too many wrong codes. Send a new code."
    response = await submit_code(client, challenge_id, code)
    assert response.status_code == 400
    assert field_error(response.text, "code") == "Too many wrong codes. Send a new code."
    assert (await stored(ada["id"]))["email"] == "ada@example.test"


async def test_expired_code_is_refused(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any]
) -> None:
    await sign_in(client, ada)
    challenge_id = challenge_of(await request_change(client, "ada@new.example"))
    code = code_sent_to(settings, "ada@new.example")
    await LoginChallenge.update({LoginChallenge.expires_at: clock.utcnow()}).where(
        LoginChallenge.id == challenge_id
    )
    page = await client.get(f"{VERIFY_URL}?challenge_id={challenge_id}", headers=HTML)
    assert "has expired. Send a new code below." in page.text
    response = await submit_code(client, challenge_id, code)
    assert response.status_code == 400
    assert "This code has expired. Send a new code." in response.text
    assert (await stored(ada["id"]))["email"] == "ada@example.test"
    assert await audit_events("profile.email_changed") == []


async def test_someone_elses_challenge_is_refused_and_not_spent(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any]
) -> None:
    charles = await make_user("charles@example.test")
    await sign_in(client, charles)
    charles_challenge = challenge_of(await request_change(client, "charles@new.example"))
    code = code_sent_to(settings, "charles@new.example")

    await sign_in(client, ada)  # the same browser, now signed in as Ada
    page = await client.get(f"{VERIFY_URL}?challenge_id={charles_challenge}", headers=HTML)
    assert page.status_code == 303
    assert "charles@new.example" not in (await client.get(page.headers["location"], headers=HTML)).text
    # Even with the right code (read from Charles's mail), Ada cannot use Charles's challenge.
    response = await submit_code(client, charles_challenge, code)
    assert await flash_after(client, response) == (
        "error: That email change is no longer waiting for a code. "
        "Start again if you still want to change it."
    )
    assert (await stored(ada["id"]))["email"] == "ada@example.test"
    assert (await stored(charles["id"]))["email"] == "charles@example.test"
    row = await LoginChallenge.select().where(LoginChallenge.id == charles_challenge).first()
    assert row is not None
    assert row["attempts"] == 0 and row["consumed_at"] is None  # not even an attempt was spent
    assert await audit_events("profile.email_changed") == []
    # Unknown ids and login challenges are refused the same way.
    for bogus in ("chl_doesnotexist", "x" * 300, ""):
        response = await submit_code(client, bogus, code)
        assert response.status_code == 303
        assert response.headers["location"] == URL


async def test_email_in_use_is_refused_before_sending_a_code(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any]
) -> None:
    await make_user("taken@example.test")
    await sign_in(client, ada)
    response = await request_change(client, "Taken@example.test")
    assert response.status_code == 400
    assert field_error(response.text, "new_email") == "This email is in use by another account."
    assert input_value(response.text, "new_email") == "Taken@example.test"
    assert outbox(settings) == []
    assert await LoginChallenge.count() == 0
    assert await audit_events("profile.email_change_requested") == []


@pytest.mark.parametrize(
    ("new_email", "message"),
    [
        ("ada@example.test", "This is already your email address."),
        (" ADA@example.test ", "This is already your email address."),
        ("not-an-email", "Enter an email address like name@example.com."),
        ("", "Enter an email address like name@example.com."),
        ("ada\x00@evil.test", "Enter an email address like name@example.com."),
    ],
)
async def test_bad_new_email_is_refused(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any], new_email: str, message: str
) -> None:
    await sign_in(client, ada)
    response = await request_change(client, new_email)
    assert response.status_code == 400
    assert field_error(response.text, "new_email") == message
    assert outbox(settings) == []
    assert await LoginChallenge.count() == 0


async def test_email_taken_between_request_and_confirmation(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any]
) -> None:
    await sign_in(client, ada)
    challenge_id = challenge_of(await request_change(client, "contested@example.test"))
    code = code_sent_to(settings, "contested@example.test")
    await make_user("contested@example.test")  # someone else got there first
    response = await submit_code(client, challenge_id, code)
    assert response.status_code == 409
    assert field_error(response.text, "new_email") == (
        "contested@example.test is now in use by another account, so your email address was not changed."
    )
    assert (await stored(ada["id"]))["email"] == "ada@example.test"
    assert await audit_events("profile.email_changed") == []


async def test_requesting_codes_is_rate_limited(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any]
) -> None:
    await sign_in(client, ada)
    for n in range(5):
        assert (await request_change(client, f"ada{n}@new.example")).status_code == 303
    response = await request_change(client, "ada5@new.example")
    assert response.status_code == 429
    assert field_error(response.text, "new_email").startswith("Too many codes requested. Try again in ")
    assert mail_to(settings, "ada5@new.example") == []


# --- locale tags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("en", "en"),
        ("DE-ch", "de-CH"),
        ("pt-br", "pt-BR"),
        ("zh-hant-tw", "zh-Hant-TW"),
        ("es-419", "es-419"),
        ("sl-rozaj-biske", "sl-rozaj-biske"),
        ("de-DE-u-co-phonebk", "de-DE-u-co-phonebk"),
        ("en-US-x-twain", "en-US-x-twain"),
        ("x-whatever", "x-whatever"),
        ("i-klingon", "i-klingon"),
        (" fr ", "fr"),
    ],
)
def test_well_formed_locales(raw: str, canonical: str) -> None:
    assert normalize_locale(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "e",
        "english",
        "engl",
        "en_US",
        "en-",
        "-en",
        "en--US",
        "toolonglanguage",
        "de-CH-1",
        "en-a",
        "de-\u212aK",
        "日本",
    ],
)
def test_malformed_locales(raw: str) -> None:
    with pytest.raises(ValueError, match="language tag"):
        normalize_locale(raw)


async def test_losing_the_race_on_the_unique_email_index_is_refused_too(
    client: httpx.AsyncClient, settings: Settings, ada: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another account takes the address after our check: the database's unique index has the last word."""
    await sign_in(client, ada)
    challenge_id = challenge_of(await request_change(client, "contested@example.test"))
    code = code_sent_to(settings, "contested@example.test")
    await make_user("contested@example.test")

    async def not_taken(email: str, user_id: str) -> bool:
        return False

    monkeypatch.setattr(service, "_email_taken", not_taken)
    response = await submit_code(client, challenge_id, code)
    assert response.status_code == 409
    assert "is now in use by another account" in field_error(response.text, "new_email")
    assert (await stored(ada["id"]))["email"] == "ada@example.test"
    assert await audit_events("profile.email_changed") == []


async def test_mail_failure_is_reported_next_to_the_field(
    settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry, ada: dict[str, Any]
) -> None:
    broken = msgspec.structs.replace(settings, smtp_url="smtp://127.0.0.1:1")  # nothing listens there
    async with serve(create_app(broken, engine=db, policy=policy, registry=registry)) as client:
        await sign_in(client, ada)
        response = await request_change(client, "ada@new.example")
    assert response.status_code == 400
    assert (
        field_error(response.text, "new_email") == "We could not send the email. Try again in a few minutes."
    )
    assert (await stored(ada["id"]))["email"] == "ada@example.test"
    assert await audit_events("profile.email_change_requested") == []

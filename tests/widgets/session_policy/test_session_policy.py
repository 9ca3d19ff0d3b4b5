"""The Session policy widget: who may see and change it, validation, the preview of ended sessions, audit,
and that a saved policy is enforced from the next request."""

from __future__ import annotations

import html
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from piccolo.engine.base import Engine

from policy import Feature, Permission, PolicyEngine
from portal.auth import sessions
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Organization, Session
from portal.web.app import create_app
from tests.conftest import POLICY_DIR, FrozenClock, serve
from tests.factories import csrf_token, make_member, make_org, make_user
from widgets.session_policy import WIDGET, service

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
URL = "/ui/organization/session-policy"
MINUTE, HOUR, DAY = 60, 3600, 86400


# --- helpers -------------------------------------------------------------------------------------------


async def sign_in(client: httpx.AsyncClient, user: dict[str, Any], org: dict[str, Any] | None) -> str:
    """Sign the client in; returns the session id."""
    token, session_id = await sessions.create_session(
        user["id"], auth_method="test", organization_id=org["id"] if org else None
    )
    settings: Settings = client._transport.app.state.settings  # type: ignore[attr-defined]
    client.cookies.set(sessions.cookie_name(settings), token)
    return session_id


async def age(session_id: str, now: Any, *, created: float, idle: float) -> None:
    await Session.update(
        {
            Session.created_at: now - timedelta(seconds=created),
            Session.last_seen_at: now - timedelta(seconds=idle),
        }
    ).where(Session.id == session_id)


async def stored_policy(org: dict[str, Any]) -> tuple[str, int | None, int | None]:
    row = (
        await Organization.select(
            Organization.session_policy_source,
            Organization.session_absolute_timeout,
            Organization.session_idle_timeout,
        )
        .where(Organization.id == org["id"])
        .first()
    )
    assert row is not None
    return row["session_policy_source"], row["session_absolute_timeout"], row["session_idle_timeout"]


async def set_policy(org: dict[str, Any], source: str, absolute: int | None, idle: int | None) -> None:
    await Organization.update(
        {
            Organization.session_policy_source: source,
            Organization.session_absolute_timeout: absolute,
            Organization.session_idle_timeout: idle,
        }
    ).where(Organization.id == org["id"])


async def reason_of(session_id: str) -> str | None:
    row = await Session.select(Session.revoke_reason).where(Session.id == session_id).first()
    assert row is not None
    return cast(str | None, row["revoke_reason"])


async def audit_events() -> list[dict[str, Any]]:
    rows = (
        await AuditEvent.select()
        .where(AuditEvent.action == "session_policy.updated")
        .order_by(AuditEvent.at)
        .output(load_json=True)
    )
    return cast(list[dict[str, Any]], rows)


def policy_form(**overrides: str) -> dict[str, str]:
    form = {
        "source": "custom",
        "absolute_value": "8",
        "absolute_unit": "hours",
        "idle_value": "30",
        "idle_unit": "minutes",
    }
    form.update(overrides)
    return form


async def post_policy(
    client: httpx.AsyncClient, headers: dict[str, str] = HTML, **fields: str
) -> httpx.Response:
    token = await csrf_token(client, URL)
    return await client.post(URL, data={"_csrf_token": token, **fields}, headers=headers)


def field_error(page: str, field: str) -> str:
    """The message next to ``field``, asserted to be wired to the control for assistive technology."""
    match = re.search(
        rf'<span class="field-error" id="{field}-error"><span class="visually-hidden">Error: </span>(.*?)</span>',
        page,
        re.S,
    )
    assert match, f"no error shown for {field}"
    control = re.search(rf'<(?:input|select|fieldset)[^>]* id="{field}"[^>]*>', page)
    assert control, f"no control {field}"
    assert 'aria-invalid="true"' in control.group(0)
    described = re.search(r'aria-describedby="([^"]*)"', control.group(0))
    assert described and f"{field}-error" in described.group(1).split()
    return html.unescape(match.group(1)).strip()


def flash_of(page: str) -> str:
    match = re.search(r'<div class="flash flash-(\w+)"[^>]*>(.*?)</div>', page, re.S)
    assert match, "no flash message"
    return f"{match.group(1)}: {html.unescape(match.group(2)).strip()}"


def cell(page: str, kind: str, label: str) -> str:
    row = page.split(f'<tr id="row-{kind}">', 1)[1].split("</tr>", 1)[0]
    match = re.search(rf'<td data-label="{label}">(.*?)</td>', row, re.S)
    assert match, f"no {label} cell for {kind}"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", match.group(1))).split())


@pytest.fixture
async def world(db: Engine) -> dict[str, Any]:
    acme = await make_org("acme", "Acme", features=[Feature.SESSION_POLICY])
    globex = await make_org("globex", "Globex", features=[Feature.SESSION_POLICY])
    plain = await make_org("plain", "Plain")  # without the session_policy feature
    alice = await make_user("alice@acme.test", given_name="Alice")
    bob = await make_user("bob@acme.test")
    carol = await make_user("carol@plain.test")
    gina = await make_user("gina@globex.test")
    await make_member(acme, alice, ["admin"])
    await make_member(acme, bob, ["member"])
    await make_member(plain, carol, ["admin"])
    await make_member(globex, gina, ["admin"])
    return {
        "acme": acme,
        "globex": globex,
        "plain": plain,
        "alice": alice,
        "bob": bob,
        "carol": carol,
        "gina": gina,
    }


# --- who may open it (the hostile matrix) ----------------------------------------------------------------


def test_the_widget_and_its_routes_declare_permission_and_feature(app: Litestar) -> None:
    assert (WIDGET.key, WIDGET.url, WIDGET.feature) == ("session_policy", URL, Feature.SESSION_POLICY)
    assert WIDGET.read_permission is Permission.SESSION_POLICY_READ
    assert WIDGET.manage_permissions == (Permission.SESSION_POLICY_MANAGE,)
    declared = {}
    for route in app.routes:
        if route.path != URL:
            continue
        for handler in getattr(route, "route_handlers", ()):
            if isinstance(handler, HTTPRouteHandler) and handler.http_methods != {"OPTIONS"}:
                declared[tuple(sorted(handler.http_methods))] = (
                    handler.opt["permission"],
                    handler.opt["feature"],
                )
    assert declared == {
        ("GET",): (Permission.SESSION_POLICY_READ, Feature.SESSION_POLICY),
        ("POST",): (Permission.SESSION_POLICY_MANAGE, Feature.SESSION_POLICY),
    }


async def test_anonymous_browser_goes_to_login_and_api_gets_401(client: httpx.AsyncClient) -> None:
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 303
    assert page.headers["location"] == f"/login?return_to={URL}"
    assert (await client.get(URL, headers=JSON)).status_code == 401


async def test_anonymous_post_changes_nothing(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await client.get(URL, headers=HTML)  # sets the CSRF cookie, as for any browser
    data = {"_csrf_token": client.cookies["portal_csrf"], **policy_form()}
    response = await client.post(URL, data=data, headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?return_to={URL}"
    assert (await client.post(URL, data=data, headers=JSON)).status_code == 401
    assert await stored_policy(world["acme"]) == ("application", None, None)


@pytest.mark.parametrize(
    ("who", "org", "reason", "shown"),
    [
        ("carol", "acme", "not_member", "not a member of this organization"),
        ("bob", "acme", "missing_permission", "sk_org_session_policy_read"),
        ("carol", "plain", "feature_disabled", "Session policy is not enabled"),
    ],
    ids=["non-member", "member-without-permission", "organization-without-feature"],
)
async def test_denied_users_get_403_naming_why_and_change_nothing(
    client: httpx.AsyncClient, world: dict[str, Any], who: str, org: str, reason: str, shown: str
) -> None:
    await sign_in(client, world[who], world[org])
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 403
    assert shown in html.unescape(page.text)
    api = await client.get(URL, headers=JSON)
    assert api.json()["error"]["reason"] == reason
    token = await csrf_token(client, "/ui/")  # the sign-out form of any page
    response = await client.post(URL, data={"_csrf_token": token, **policy_form()}, headers=JSON)
    assert response.status_code == 403
    assert response.json()["error"]["reason"] == reason
    assert await stored_policy(world[org]) == ("application", None, None)
    assert await audit_events() == []


async def test_widget_is_in_the_navigation_only_where_it_may_be_opened(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    assert f'href="{URL}"' in (await client.get("/ui/", headers=HTML)).text
    await sign_in(client, world["bob"], world["acme"])
    assert f'href="{URL}"' not in (await client.get("/ui/", headers=HTML)).text
    await sign_in(client, world["carol"], world["plain"])
    assert f'href="{URL}"' not in (await client.get("/ui/", headers=HTML)).text


async def test_a_forged_organization_id_in_the_form_is_ignored(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_policy(client, **policy_form(), organization_id=world["globex"]["id"])
    assert response.status_code == 303
    assert await stored_policy(world["acme"]) == ("custom", 8 * HOUR, 30 * MINUTE)
    assert await stored_policy(world["globex"]) == ("application", None, None)
    assert [e["organization_id"] for e in await audit_events()] == [world["acme"]["id"]]


async def test_read_only_role_sees_the_values_without_the_form(
    settings: Settings, db: Engine, world: dict[str, Any], tmp_path: Path
) -> None:
    # The shipped `member` role cannot read the policy; an app owner's `auditor` role can only read it.
    policies = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, policies)
    (policies / "roles.csv").write_text("p, auditor, sk_org_session_policy_read\n")
    auditor_policy = PolicyEngine.from_dir(policies)
    await set_policy(world["acme"], "custom", 8 * HOUR, 30 * MINUTE)
    dana = await make_user("dana@acme.test")
    await make_member(world["acme"], dana, ["auditor"])
    async with serve(create_app(settings, engine=db, policy=auditor_policy)) as client:
        await sign_in(client, dana, world["acme"])
        page = await client.get(URL, headers=HTML)
        assert page.status_code == 200
        assert cell(page.text, "absolute", "In force").startswith("8 hours")
        assert cell(page.text, "idle", "In force").startswith("30 minutes")
        assert f'action="{URL}"' not in page.text
        assert 'name="absolute_value"' not in page.text
        assert "sk_org_session_policy_manage" in page.text
        token = await csrf_token(client, URL)
        response = await client.post(
            URL, data={"_csrf_token": token, **policy_form(absolute_value="1")}, headers=JSON
        )
        assert response.status_code == 403
        assert response.json()["error"]["missing"] == "sk_org_session_policy_manage"
    assert await stored_policy(world["acme"]) == ("custom", 8 * HOUR, 30 * MINUTE)


# --- what it shows ---------------------------------------------------------------------------------------


async def test_application_defaults_are_shown_side_by_side_with_the_effective_values(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = (await client.get(URL, headers=HTML)).text
    assert "<strong>Application defaults</strong>" in page
    assert cell(page, "absolute", "Application default") == "7 days"
    assert cell(page, "absolute", "This organization") == "Inherited"
    assert cell(page, "absolute", "In force") == "7 days application default"
    assert cell(page, "idle", "In force") == "1 day application default"
    assert re.search(r'id="source-application" name="source" value="application" checked', page)
    assert "1 active session</span>" in page  # alice's own
    assert "<style" not in page and "<script>" not in page and " style=" not in page


async def test_the_stricter_value_applies_per_timeout(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    # Longer absolute than the app's 7 days (the app default wins), shorter idle (the organization wins).
    await set_policy(world["acme"], "custom", 30 * DAY, 2 * HOUR)
    await sign_in(client, world["alice"], world["acme"])
    page = (await client.get(URL, headers=HTML)).text
    assert cell(page, "absolute", "This organization") == (
        "30 days Longer than the default, so the default applies."
    )
    assert cell(page, "absolute", "In force") == "7 days application default"
    assert cell(page, "idle", "This organization") == "2 hours"
    assert cell(page, "idle", "In force") == "2 hours organization"
    # The form shows the organization's own values.
    assert re.search(r'id="absolute_value" name="absolute_value"[^>]*value="30"', page)
    assert re.search(r'<option value="days" selected>days</option>', page)


# --- saving ----------------------------------------------------------------------------------------------


async def test_admin_saves_custom_timeouts_audited_with_old_and_new(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_policy(client, **policy_form())
    assert response.status_code == 303 and response.headers["location"] == URL
    assert await stored_policy(world["acme"]) == ("custom", 8 * HOUR, 30 * MINUTE)
    page = await client.get(URL, headers=HTML)
    assert flash_of(page.text) == "ok: Session policy saved. It applies from each session's next request."
    assert cell(page.text, "absolute", "In force") == "8 hours organization"
    assert "Last changed" in page.text and "by Alice" in page.text
    [event] = await audit_events()
    assert event["actor_id"] == world["alice"]["id"]
    assert event["organization_id"] == event["target"] == world["acme"]["id"]
    assert event["details"]["old"] == {
        "source": "application",
        "absolute_timeout": None,
        "idle_timeout": None,
    }
    assert event["details"]["new"] == {"source": "custom", "absolute_timeout": 28800, "idle_timeout": 1800}
    assert event["details"]["effective_old"] == {"absolute": 7 * DAY, "idle": DAY}
    assert event["details"]["effective_new"] == {"absolute": 28800, "idle": 1800}
    assert event["details"]["sessions_ended"] == 0
    assert event["ip"] == "127.0.0.1"


async def test_back_to_application_defaults_clears_the_custom_values(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await set_policy(world["acme"], "custom", 8 * HOUR, 30 * MINUTE)
    await sign_in(client, world["alice"], world["acme"])
    # The numbers are ignored with the application defaults, even nonsense ones.
    response = await post_policy(client, **policy_form(source="application", absolute_value="x"))
    assert response.status_code == 303
    assert await stored_policy(world["acme"]) == ("application", None, None)
    [event] = await audit_events()
    assert event["details"]["new"] == {
        "source": "application",
        "absolute_timeout": None,
        "idle_timeout": None,
    }


async def test_saving_the_same_policy_changes_nothing(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await set_policy(world["acme"], "custom", 8 * HOUR, 30 * MINUTE)
    await sign_in(client, world["alice"], world["acme"])
    response = await post_policy(client, **policy_form(absolute_value="480", absolute_unit="minutes"))
    assert response.status_code == 303
    assert flash_of((await client.get(URL, headers=HTML)).text) == "ok: Nothing changed."
    assert await audit_events() == []


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"source": "forever"}, "source", "Choose the application defaults or custom timeouts."),
        ({"absolute_value": ""}, "absolute_value", "Enter the absolute timeout, for example 8 hours."),
        ({"absolute_value": "eight"}, "absolute_value", "Enter a whole number, such as 8."),
        ({"absolute_value": "1.5"}, "absolute_value", "Enter a whole number, such as 8."),
        ({"absolute_value": "-3"}, "absolute_value", "Enter a whole number, such as 8."),
        (
            {"absolute_value": "4", "absolute_unit": "minutes"},
            "absolute_value",
            "The absolute timeout must be at least 5 minutes.",
        ),
        # Looser than the app default (7 days absolute, 1 day idle): it would never apply, so it is refused.
        (
            {"absolute_value": "8", "absolute_unit": "days"},
            "absolute_value",
            "The absolute timeout can be at most 7 days, the application default: an organization can only "
            "shorten it.",
        ),
        (
            {"absolute_value": "9" * 40},
            "absolute_value",
            "The absolute timeout can be at most 7 days, the application default: an organization can only "
            "shorten it.",
        ),
        ({"absolute_unit": "weeks"}, "absolute_unit", "Choose minutes, hours or days."),
        ({"idle_value": "0"}, "idle_value", "The idle timeout must be at least 5 minutes."),
        (
            {"absolute_value": "2", "absolute_unit": "days", "idle_value": "25", "idle_unit": "hours"},
            "idle_value",
            "The idle timeout can be at most 1 day, the application default: an organization can only "
            "shorten it.",
        ),
        (
            {"idle_value": "9", "idle_unit": "hours"},
            "idle_value",
            "The idle timeout cannot be longer than the absolute timeout (8 hours).",
        ),
    ],
)
async def test_bad_input_is_shown_next_to_its_field_and_saves_nothing(
    client: httpx.AsyncClient, world: dict[str, Any], fields: dict[str, str], field: str, message: str
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_policy(client, **policy_form(**fields))
    assert response.status_code == 400
    assert field_error(response.text, field) == message
    assert "There is a problem" in response.text
    # What was typed is shown again.
    if "absolute_value" in fields and len(fields["absolute_value"]) < 20:
        assert f'value="{html.escape(fields["absolute_value"])}"' in response.text
    assert await stored_policy(world["acme"]) == ("application", None, None)
    assert await audit_events() == []


async def test_bad_input_from_an_api_client_is_a_json_400_naming_fields(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_policy(client, JSON, **policy_form(absolute_value="", idle_value="x"))
    assert response.status_code == 400
    fields = {f["key"]: f["message"] for f in response.json()["error"]["fields"]}
    assert set(fields) == {"absolute_value", "idle_value"}


# --- the preview: sessions a change would end -----------------------------------------------------------


async def test_a_change_that_ends_sessions_asks_first_then_ends_them(
    client: httpx.AsyncClient, world: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    now = frozen_clock.now
    own = await sign_in(client, world["alice"], world["acme"])
    idle_bob = (
        await sessions.create_session(
            world["bob"]["id"], auth_method="test", organization_id=world["acme"]["id"]
        )
    )[1]
    old_bob = (
        await sessions.create_session(
            world["bob"]["id"], auth_method="test", organization_id=world["acme"]["id"]
        )
    )[1]
    busy_bob = (
        await sessions.create_session(
            world["bob"]["id"], auth_method="test", organization_id=world["acme"]["id"]
        )
    )[1]
    # In another organization: the same ages, not affected by acme's policy.
    globex_gina = (
        await sessions.create_session(
            world["gina"]["id"], auth_method="test", organization_id=world["globex"]["id"]
        )
    )[1]
    await age(idle_bob, now, created=3 * HOUR, idle=2 * HOUR)  # idle past 1 hour
    await age(old_bob, now, created=9 * HOUR, idle=0)  # older than 8 hours
    await age(busy_bob, now, created=2 * HOUR, idle=5 * MINUTE)
    await age(globex_gina, now, created=9 * HOUR, idle=2 * HOUR)
    await age(own, now, created=HOUR, idle=0)

    page = (await client.get(URL, headers=HTML)).text
    assert "5 active sessions</span>" not in page and "4 active sessions</span>" in page

    change = policy_form(absolute_value="8", absolute_unit="hours", idle_value="1", idle_unit="hours")
    response = await post_policy(client, **change)
    assert response.status_code == 200
    assert "<h1>Confirm the new session policy</h1>" in response.text
    assert "This ends 2 active sessions now</h2>" in response.text
    assert "including yours" not in response.text
    assert await stored_policy(world["acme"]) == ("application", None, None)
    assert [await reason_of(s) for s in (idle_bob, old_bob, busy_bob, globex_gina)] == [None] * 4

    token = await csrf_token(client, URL)
    response = await client.post(
        URL, data={"_csrf_token": token, **change, "confirm": "yes", "confirmed_count": "2"}, headers=HTML
    )
    assert response.status_code == 303
    assert await stored_policy(world["acme"]) == ("custom", 8 * HOUR, HOUR)
    # Ended at once, with the reason a request would record.
    assert [await reason_of(s) for s in (idle_bob, old_bob, busy_bob, globex_gina, own)] == [
        "idle",
        "absolute",
        None,
        None,
        None,
    ]
    page = await client.get(URL, headers=HTML)
    assert flash_of(page.text).endswith("2 active sessions ended.")
    [event] = await audit_events()
    assert event["details"]["sessions_ended"] == 2


async def test_the_preview_says_when_the_admins_own_session_ends(
    client: httpx.AsyncClient, world: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    now = frozen_clock.now
    own = await sign_in(client, world["alice"], world["acme"])
    await age(own, now, created=3 * HOUR, idle=0)
    change = policy_form(absolute_value="2", absolute_unit="hours", idle_value="1", idle_unit="hours")
    response = await post_policy(client, **change)
    assert "This ends 1 active session now, including yours</h2>" in response.text
    assert "You will be signed out too." in response.text
    assert "Save and end 1 session</button>" in response.text

    token = await csrf_token(client, URL)
    response = await client.post(
        URL, data={"_csrf_token": token, **change, "confirm": "yes", "confirmed_count": "1"}, headers=HTML
    )
    assert response.status_code == 303
    assert await reason_of(own) == "absolute"
    after = await client.get(URL, headers=HTML)
    assert after.status_code == 303 and after.headers["location"].startswith("/login")


async def test_confirming_again_when_more_sessions_would_end_than_shown(
    client: httpx.AsyncClient, world: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    now = frozen_clock.now
    await sign_in(client, world["alice"], world["acme"])
    for _ in range(3):
        _, session_id = await sessions.create_session(
            world["bob"]["id"], auth_method="test", organization_id=world["acme"]["id"]
        )
        await age(session_id, now, created=2 * HOUR, idle=2 * HOUR)
    change = policy_form(idle_value="1", idle_unit="hours")
    token = await csrf_token(client, URL)
    response = await client.post(
        URL, data={"_csrf_token": token, **change, "confirm": "yes", "confirmed_count": "2"}, headers=HTML
    )
    assert response.status_code == 200
    assert "This ends 3 active sessions now</h2>" in response.text
    assert "More sessions would end than when you looked (2)" in response.text
    assert 'name="confirmed_count" value="3"' in response.text
    assert await stored_policy(world["acme"]) == ("application", None, None)


async def test_change_the_values_goes_back_to_the_form_with_them(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    change = policy_form(absolute_value="3", absolute_unit="days")
    response = await post_policy(client, **change, confirm="edit", confirmed_count="4")
    assert response.status_code == 200
    assert re.search(r'id="absolute_value" name="absolute_value"[^>]*value="3"', response.text)
    assert await stored_policy(world["acme"]) == ("application", None, None)


async def test_an_api_client_gets_409_until_it_confirms(
    client: httpx.AsyncClient, world: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    own = await sign_in(client, world["alice"], world["acme"])
    await age(own, frozen_clock.now, created=2 * HOUR, idle=0)
    change = policy_form(absolute_value="1", absolute_unit="hours", idle_value="5", idle_unit="minutes")
    response = await post_policy(client, JSON, **change)
    assert response.status_code == 409
    assert response.json()["error"]["ending"] == 1 and response.json()["error"]["ends_own"] is True
    assert await stored_policy(world["acme"]) == ("application", None, None)


# --- enforcement: a saved policy applies from the next request ------------------------------------------


async def test_a_saved_stricter_idle_timeout_applies_from_the_next_request(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    bob_client = httpx.AsyncClient(transport=client._transport, base_url=str(client.base_url))
    try:
        bob = await sign_in(bob_client, world["bob"], world["acme"])
        await sign_in(client, world["alice"], world["acme"])
        # Under the app defaults (idle 1 day) three idle hours are fine.
        frozen_clock.advance(hours=3)
        assert (await bob_client.get("/ui/", headers=HTML)).status_code == 200

        response = await post_policy(client, **policy_form(idle_value="2", idle_unit="hours"))
        assert response.status_code == 303  # nobody has been idle 2 hours: saved without a preview
        assert await reason_of(bob) is None

        frozen_clock.advance(hours=1, minutes=59)
        assert (await bob_client.get("/ui/", headers=HTML)).status_code == 200
        frozen_clock.advance(hours=2)
        response = await bob_client.get("/ui/", headers=HTML)
        assert response.status_code == 303 and response.headers["location"].startswith("/login")
        assert await reason_of(bob) == "idle"
    finally:
        await bob_client.aclose()


async def test_a_saved_policy_is_enforced_on_the_next_request_before_any_sweep(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    # The policy is changed behind the widget's back (no sweep runs): the request path enforces it.
    token, session_id = await sessions.create_session(
        world["bob"]["id"], auth_method="test", organization_id=world["acme"]["id"]
    )
    client.cookies.set(sessions.cookie_name(settings), token)
    frozen_clock.advance(minutes=45)
    assert (await client.get("/ui/", headers=HTML)).status_code == 200
    await set_policy(world["acme"], "custom", HOUR, 30 * MINUTE)
    frozen_clock.advance(minutes=20)  # 65 minutes old, 20 idle: the new absolute timeout has run out
    response = await client.get("/ui/", headers=HTML)
    assert response.status_code == 303
    assert await reason_of(session_id) == "absolute"


# --- service units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text", "form"),
    [
        (7 * DAY, "7 days", ("7", "days")),
        (DAY + 12 * HOUR, "1 day 12 hours", ("36", "hours")),
        (90 * MINUTE, "1 hour 30 minutes", ("90", "minutes")),
        (MINUTE, "1 minute", ("1", "minutes")),
        (90, "1 minute 30 seconds", ("2", "minutes")),
    ],
)
def test_durations_read_naturally(seconds: int, text: str, form: tuple[str, str]) -> None:
    assert service.describe(seconds) == text
    assert service.split(seconds) == form


@pytest.fixture
async def long_defaults_client(settings: Settings, db: Engine, policy: PolicyEngine):  # type: ignore[no-untyped-def]
    import msgspec

    roomy = msgspec.structs.replace(
        settings, session_absolute_timeout=400 * DAY, session_idle_timeout=100 * DAY
    )
    async with serve(create_app(roomy, engine=db, policy=policy)) as client:
        yield client


async def test_the_hard_limits_apply_when_the_app_default_is_longer(
    long_defaults_client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    client = long_defaults_client
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert "From 5 minutes to 365 days." in page.text
    response = await post_policy(client, **policy_form(absolute_value="366", absolute_unit="days"))
    assert response.status_code == 400
    assert field_error(response.text, "absolute_value") == "The absolute timeout can be at most 365 days."
    ok = await post_policy(client, **policy_form(absolute_value="300", absolute_unit="days"))
    assert ok.status_code == 303
    assert await stored_policy(world["acme"]) == ("custom", 300 * DAY, 30 * MINUTE)


async def test_the_hint_names_the_app_default_as_the_limit(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert "From 5 minutes to 7 days (the application default: you can only shorten it)." in page.text
    assert "From 5 minutes to 1 day (the application default), and not longer" in page.text
    assert "365 days" not in page.text

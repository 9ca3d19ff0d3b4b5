"""The Organization settings widget: read-only and editable views, validation, audit, the hostile matrix."""

from __future__ import annotations

import html
import re
from typing import Any, cast

import httpx
import pytest
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.auth import accounts
from portal.core.tables import AuditEvent, Domain, Organization
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
URL = "/ui/organization/settings"


@pytest.fixture
async def world(db: Engine, policy: PolicyEngine) -> dict[str, Any]:
    acme = await make_org("acme", "Acme")
    globex = await make_org("globex", "Globex")
    alice = await make_user("alice@acme.test", given_name="Alice")
    bob = await make_user("bob@acme.test", given_name="Bob")
    ghost = await make_user("ghost@acme.test")
    outsider = await make_user("olga@elsewhere.test")
    await make_member(acme, alice, ["admin"])
    await make_member(acme, bob, ["member"])
    await make_member(acme, ghost, ["ghost"])  # a role the policy does not define: grants nothing
    await make_member(globex, outsider, ["admin"])
    return {"acme": acme, "globex": globex, "alice": alice, "bob": bob, "ghost": ghost, "outsider": outsider}


async def stored(org_id: str) -> dict[str, Any]:
    row = await (
        Organization.select(Organization.name, Organization.display_name, Organization.allowed_email_domains)
        .where(Organization.id == org_id)
        .first()
        .output(load_json=True)
    )
    assert row is not None
    return cast(dict[str, Any], row)


async def audit_events(action: str) -> list[dict[str, Any]]:
    return cast(
        list[dict[str, Any]],
        await AuditEvent.select()
        .where(AuditEvent.action == action)
        .order_by(AuditEvent.at)
        .output(load_json=True),
    )


def field_error(page: str, field: str) -> str:
    """The message shown next to ``field``, asserted to be wired to it for assistive technology."""
    match = re.search(
        rf'<span class="field-error" id="{field}-error"><span class="visually-hidden">Error: </span>(.*?)</span>',
        page,
        re.S,
    )
    assert match, f"no error shown for {field}"
    control = re.search(rf'<(?:input|textarea|select) id="{field}"[^>]*>', page)
    assert control, f"no control {field}"
    assert 'aria-invalid="true"' in control.group(0)
    return html.unescape(match.group(1)).strip()


async def flash_after(client: httpx.AsyncClient, response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    page = await client.get(response.headers["location"], headers=HTML)
    match = re.search(r'<div class="flash flash-(\w+)"[^>]*>(.*?)</div>', page.text, re.S)
    assert match, "no flash message"
    return f"{match.group(1)}: {html.unescape(match.group(2)).strip()}"


def form(**overrides: str) -> dict[str, str]:
    values = {"name": "acme", "display_name": "Acme", "allowed_email_domains": ""}
    values.update(overrides)
    return values


async def post_settings(
    client: httpx.AsyncClient, headers: dict[str, str] = HTML, **overrides: str
) -> httpx.Response:
    token = await csrf_token(client, "/ui/")
    return await client.post(URL, data={"_csrf_token": token, **form(**overrides)}, headers=headers)


# --- the hostile matrix (STYLE.md): these widgets need no feature, so the permission is what is tested -----


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_anonymous_browser_goes_to_login_and_api_gets_401(
    client: httpx.AsyncClient, world: dict[str, Any], method: str
) -> None:
    token = await csrf_token(client, "/login")
    data = {"_csrf_token": token, **form()} if method == "POST" else None
    page = await client.request(method, URL, data=data, headers=HTML)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?return_to=/ui/organization/settings"
    api = await client.request(method, URL, data=data, headers=JSON)
    assert api.status_code == 401
    assert await stored(world["acme"]["id"]) == {
        "name": "acme",
        "display_name": "Acme",
        "allowed_email_domains": [],
    }


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_non_member_gets_403_not_member(
    client: httpx.AsyncClient, world: dict[str, Any], method: str
) -> None:
    # A session pointing at an organization the user is not in (never was, or was removed from).
    await sign_in(client, world["outsider"], world["acme"])
    token = await csrf_token(client, "/ui/")
    data = {"_csrf_token": token, **form(display_name="Pwned")} if method == "POST" else None
    response = await client.request(method, URL, data=data, headers=JSON)
    assert response.status_code == 403
    assert response.json()["error"]["reason"] == "not_member"
    assert (await stored(world["acme"]["id"]))["display_name"] == "Acme"


async def test_member_without_read_permission_gets_403_naming_it(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["ghost"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 403
    assert "sk_org_settings_read" in page.text
    api = await client.get(URL, headers=JSON)
    assert api.json()["error"]["missing"] == "sk_org_settings_read"


async def test_member_without_manage_permission_cannot_save(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["bob"], world["acme"])
    response = await post_settings(client, JSON, display_name="Bob's Acme")
    assert response.status_code == 403
    assert response.json()["error"]["reason"] == "missing_permission"
    assert response.json()["error"]["missing"] == "sk_org_settings_manage"
    assert (await stored(world["acme"]["id"]))["display_name"] == "Acme"
    assert await audit_events("settings.updated") == []


async def test_forged_organization_id_changes_only_the_active_organization(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    """Another organization's id in the form (the 404 case of the matrix): the session's organization is the
    only one this widget can touch."""
    await sign_in(client, world["alice"], world["acme"])
    token = await csrf_token(client, "/ui/")
    response = await client.post(
        URL,
        data={
            "_csrf_token": token,
            "organization_id": world["globex"]["id"],
            **form(display_name="Acme Inc"),
        },
        headers=HTML,
    )
    assert response.status_code == 303
    assert (await stored(world["globex"]["id"]))["display_name"] == "Globex"
    assert (await stored(world["acme"]["id"]))["display_name"] == "Acme Inc"


# --- reading --------------------------------------------------------------------------------------------


async def test_read_only_member_sees_values_without_forms(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await Organization.update({Organization.allowed_email_domains: ["acme.test"]}).where(
        Organization.id == world["acme"]["id"]
    )
    await sign_in(client, world["bob"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    assert '<dd id="current-display-name">Acme</dd>' in page.text
    assert "<code>acme.test</code>" in page.text
    assert 'action="/ui/organization/settings"' not in page.text
    assert "Save settings" not in page.text
    assert 'href="/ui/organization/settings" aria-current="page"' in page.text


async def test_admin_sees_the_form_with_current_values_and_verified_badges(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    acme = world["acme"]["id"]
    await Organization.update({Organization.allowed_email_domains: ["acme.test", "acme-corp.test"]}).where(
        Organization.id == acme
    )
    await Domain(organization=acme, domain="acme.test", status="verified", verification_token="t").save()
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    assert 'action="/ui/organization/settings"' in page.text
    assert re.search(
        r'<textarea id="allowed_email_domains"[^>]*>acme.test\nacme-corp.test</textarea>', page.text
    )
    assert '<code>acme.test</code> <span class="badge ok">Verified</span>' in page.text
    assert "<code>acme-corp.test</code>" not in page.text  # not verified: only in the form
    # The form is the only place the values are shown (no card repeating them above it).
    assert 'id="current-display-name"' not in page.text
    assert page.text.count("acme-corp.test") == 1


# --- saving ---------------------------------------------------------------------------------------------


async def test_save_normalizes_and_deduplicates_domains_and_audits(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_settings(
        client,
        name="  Acme-Corp ",
        display_name="  Acme   Corporation ",
        allowed_email_domains="Acme.TEST.\nacme.test, münchen.example.com,  exemple.fr\n\n",
    )
    assert await flash_after(client, response) == "ok: Organization settings saved."
    assert await stored(world["acme"]["id"]) == {
        "name": "acme-corp",
        "display_name": "Acme Corporation",
        "allowed_email_domains": ["acme.test", "exemple.fr", "xn--mnchen-3ya.example.com"],
    }
    [event] = await audit_events("settings.updated")
    assert event["organization_id"] == world["acme"]["id"]
    assert event["actor_id"] == world["alice"]["id"]
    assert event["target"] == world["acme"]["id"]
    assert event["ip"] == "127.0.0.1"
    assert set(event["details"]["fields"]) == {"name", "display_name", "allowed_email_domains"}
    assert event["details"]["changes"]["name"] == {"old": "acme", "new": "acme-corp"}


async def test_nothing_changed_is_said_and_not_audited(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_settings(client)
    assert await flash_after(client, response) == "ok: Nothing changed."
    assert await audit_events("settings.updated") == []


@pytest.mark.parametrize(
    ("domains", "message"),
    [
        ("gmail.com", "gmail.com is a free email provider"),
        ("co.uk", "co.uk is a public suffix"),
        ("com", "com is a public suffix"),
        ("https://acme.test/", "Enter a domain name only"),
        ("alice@acme.test", "Enter a domain name only"),
        ("10.0.0.1", "not an IP address"),
        ("acme..test", "is not a valid domain name"),
    ],
)
async def test_refused_domains_are_explained_next_to_the_field_and_nothing_is_saved(
    client: httpx.AsyncClient, world: dict[str, Any], domains: str, message: str
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_settings(
        client, display_name="Changed", allowed_email_domains=f"acme.test\n{domains}"
    )
    assert response.status_code == 400
    assert message in field_error(response.text, "allowed_email_domains")
    # What was typed stays in the field, so it can be corrected.
    assert f"acme.test\n{html.escape(domains)}</textarea>" in response.text
    assert await stored(world["acme"]["id"]) == {
        "name": "acme",
        "display_name": "Acme",
        "allowed_email_domains": [],
    }
    assert await audit_events("settings.updated") == []


async def test_every_bad_field_is_reported_at_once(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_settings(
        client, name="Not a slug!", display_name="  ", allowed_email_domains="gmail.com"
    )
    assert response.status_code == 400
    assert "lowercase letters, digits and hyphens" in field_error(response.text, "name")
    assert field_error(response.text, "display_name") == "Enter the name people see."
    assert "free email provider" in field_error(response.text, "allowed_email_domains")
    assert 'class="error-summary"' in response.text


async def test_api_client_gets_json_errors_naming_fields(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_settings(client, JSON, display_name="x" * 201, allowed_email_domains="yahoo.com")
    assert response.status_code == 400
    fields = {f["key"]: f["message"] for f in response.json()["error"]["fields"]}
    assert set(fields) == {"display_name", "allowed_email_domains"}
    assert "at most 200" in fields["display_name"]


async def test_taken_name_is_refused(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_settings(client, name="globex")
    assert response.status_code == 400
    assert field_error(response.text, "name") == "Another organization already uses this name."
    assert (await stored(world["acme"]["id"]))["name"] == "acme"


async def test_control_characters_in_display_name_are_refused(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_settings(client, display_name="Acme\u202eevil")
    assert response.status_code == 400
    assert "control characters" in field_error(response.text, "display_name")


async def test_allowed_domains_feed_the_jit_join_offer(
    client: httpx.AsyncClient, world: dict[str, Any], policy: PolicyEngine
) -> None:
    """Domains saved here are what the hosted login offers to join by (DESIGN §4)."""
    from portal.auth import login

    await sign_in(client, world["alice"], world["acme"])
    await post_settings(client, allowed_email_domains="Initech.TEST")
    newcomer = await accounts.create_user("nina@initech.test", verified=True)
    offers = await login.jit_offers(newcomer)
    assert [o["id"] for o in offers] == [world["acme"]["id"]]
    await post_settings(client, allowed_email_domains="")
    assert await login.jit_offers(newcomer) == []


# --- issue 16 §4: domains split on commas and lines; each bad entry on its own; IDN in Unicode -----------


async def test_a_phrase_is_one_bad_entry_and_each_bad_entry_gets_its_own_line(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post_settings(client, allowed_email_domains="not a domain")
    assert response.status_code == 400
    assert field_error(response.text, "allowed_email_domains") == "'not a domain' is not a valid domain name."

    response = await post_settings(
        client, allowed_email_domains="acme.test, gmail.com\nhttps://x.test/\n10.0.0.1,not a domain"
    )
    assert response.status_code == 400
    lines = field_error(response.text, "allowed_email_domains").split("<br>")
    assert lines == [
        "gmail.com is a free email provider: it cannot belong to one organization.",
        "https://x.test/: Enter a domain name only, like example.com (no scheme, path or @).",
        "10.0.0.1: Enter a domain name, not an IP address.",
        "'not a domain' is not a valid domain name.",
    ]
    api = await post_settings(client, JSON, allowed_email_domains="gmail.com,co.uk")
    [field] = api.json()["error"]["fields"]
    assert field["message"].split("\n") == [
        "gmail.com is a free email provider: it cannot belong to one organization.",
        "co.uk is a public suffix: nobody can own all of it.",
    ]
    assert (await stored(world["acme"]["id"]))["allowed_email_domains"] == []


async def test_idn_domains_are_shown_in_unicode_and_saved_in_idna(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    acme = world["acme"]["id"]
    await sign_in(client, world["alice"], world["acme"])
    response = await post_settings(client, allowed_email_domains="Bücher.example")
    assert response.status_code == 303
    assert (await stored(acme))["allowed_email_domains"] == ["xn--bcher-kva.example"]
    page = await client.get(URL, headers=HTML)
    assert re.search(r'<textarea id="allowed_email_domains"[^>]*>bücher.example</textarea>', page.text)
    assert "xn--bcher-kva" not in page.text
    # Saving the page as shown changes nothing.
    again = await post_settings(client, allowed_email_domains="bücher.example")
    assert await flash_after(client, again) == "ok: Nothing changed."

    await sign_in(client, world["bob"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert "<code>bücher.example</code>" in page.text and "xn--" not in page.text


async def test_messages_have_one_place_above_the_title(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    failed = await post_settings(client, name="Bad Name!")
    main = failed.text.split('<main id="main" tabindex="-1">', 1)[1]
    # The error summary comes first in <main>, before the title, and takes the focus.
    assert main.index('class="error-summary"') < main.index("<h1>")
    assert re.search(r'<div class="error-summary" role="alert"[^>]* tabindex="-1" autofocus>', main)
    saved = await post_settings(client, display_name="Acme Two")
    page = await client.get(saved.headers["location"], headers=HTML)
    main = page.text.split('<main id="main" tabindex="-1">', 1)[1]
    assert main.index('class="flash flash-ok"') < main.index("<h1>")

"""The Domains widget: the hostile matrix, adding (and refusing) domains, "Verify now" with the embedded job
queue against a loopback DNS server, "Try again", delete, and the feature switched off."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any, cast

import httpx
import msgspec
import pytest
from litestar import Litestar
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Domain, Organization
from portal.jobs import InlineQueue
from portal.web.app import create_app
from portal.web.registry import WidgetRegistry
from tests.conftest import serve
from tests.dnsserver import Mode, Zone
from tests.factories import make_member, make_org, make_user, sign_in, sign_in_link
from widgets.domains import WIDGET, service
from widgets.domains.verification import record_name, record_value

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
URL = "/ui/organization/domains"
FEATURE = "domain_verification"


# --- helpers -------------------------------------------------------------------------------------------


async def token_for(client: httpx.AsyncClient) -> str:
    """A CSRF token from the home page (open to every signed-in user, whatever their permissions)."""
    page = await client.get("/ui/", headers=HTML)
    assert page.status_code == 200, page.status_code
    match = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


async def post(
    client: httpx.AsyncClient, path: str, data: dict[str, str] | None = None, headers: dict[str, str] = HTML
) -> httpx.Response:
    return await client.post(
        path, data={"_csrf_token": await token_for(client), **(data or {})}, headers=headers
    )


async def flash_after(client: httpx.AsyncClient, response: httpx.Response) -> str:
    """Follow a 303 and return the flash message the next page shows."""
    assert response.status_code == 303, response.text
    page = await client.get(response.headers["location"], headers=HTML)
    match = re.search(r'<div class="flash flash-(\w+)"[^>]*>(.*?)</div>', page.text, re.S)
    assert match, "no flash message"
    return f"{match.group(1)}: {html.unescape(match.group(2)).strip()}"


def field_error(page: str) -> str:
    match = re.search(
        r'<span class="field-error" id="domain-error"><span class="visually-hidden">Error: </span>(.*?)</span>',
        page,
        re.S,
    )
    assert match, "no error shown for the domain field"
    control = re.search(r'<input id="domain"[^>]*>', page, re.S)
    assert control and 'aria-invalid="true"' in control.group(0)
    assert "domain-error" in control.group(0)
    return html.unescape(match.group(1)).strip()


def card(page: str, domain_id: str) -> str:
    """The HTML of one domain's card, whitespace collapsed, tags kept."""
    match = re.search(rf'<article class="panel domain-card" id="{domain_id}".*?</article>', page, re.S)
    assert match, f"no card for {domain_id}"
    return " ".join(match.group(0).split())


def text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


async def rows(org_id: str) -> list[dict[str, Any]]:
    return cast(
        list[dict[str, Any]],
        await Domain.select().where(Domain.organization == org_id).order_by(Domain.domain),
    )


async def audit(action: str) -> list[dict[str, Any]]:
    return cast(
        list[dict[str, Any]],
        await AuditEvent.select()
        .where(AuditEvent.action == action)
        .order_by(AuditEvent.at)
        .output(load_json=True),
    )


async def add_row(org: dict[str, Any], domain: str, **values: Any) -> dict[str, Any]:
    now = clock.utcnow()
    row = Domain(
        organization=org["id"],
        domain=domain,
        verification_token=values.pop("verification_token", "t" * 32),
        pending_since=now,
        created_at=now,
        **values,
    )
    await row.save()
    return cast(dict[str, Any], await Domain.select().where(Domain.id == row.id).first())


def jobs_of(app: Litestar) -> InlineQueue:
    queue = app.state.jobs
    assert isinstance(queue, InlineQueue)
    return queue


@pytest.fixture
async def world(db: Engine, policy: PolicyEngine) -> dict[str, Any]:
    acme = await make_org("acme", "Acme", features=[FEATURE])
    globex = await make_org("globex", "Globex", features=[FEATURE])
    initech = await make_org("initech", "Initech", features=[])
    people: dict[str, Any] = {"acme": acme, "globex": globex, "initech": initech}
    for name, org, roles in (
        ("alice", acme, ["admin"]),
        ("bob", acme, ["member"]),
        ("dave", acme, ["ghost"]),  # a role the policy does not define: no permissions at all
        ("carol", globex, ["admin"]),
        ("erin", initech, ["admin"]),
    ):
        user = await make_user(f"{name}@{org['name']}.test")
        await make_member(org, user, roles)
        people[name] = user
    return people


# --- the hostile matrix ----------------------------------------------------------------------------------


ROUTES = [("GET", ""), ("POST", ""), ("POST", "/{id}/verify"), ("POST", "/{id}/delete")]


async def call(client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "GET":
        return await client.get(path, headers=headers)
    return await post(client, path, {"domain": "new.example.com"}, headers=headers)


@pytest.fixture
async def acme_domain(world: dict[str, Any]) -> dict[str, Any]:
    return await add_row(world["acme"], "acme.example.com")


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_anonymous(
    client: httpx.AsyncClient, acme_domain: dict[str, Any], method: str, suffix: str
) -> None:
    path = URL + suffix.format(id=acme_domain["id"])
    if method == "GET":
        page = await client.get(path, headers=HTML)
        assert page.status_code == 303
        assert page.headers["location"].startswith("/login?return_to=/ui/organization/domains")
        api = await client.get(path, headers=JSON)
    else:
        # A valid CSRF token (from the public login page), so that the guard is what refuses.
        login = await client.get("/login", headers=HTML)
        token = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
        assert token
        data = {"_csrf_token": token.group(1), "domain": "new.example.com"}
        page = await client.post(path, data=data, headers=HTML)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        api = await client.post(path, data=data, headers=JSON)
    assert api.status_code == 401
    assert [r["status"] for r in await rows(acme_domain["organization"])] == ["pending"]


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_non_member(
    client: httpx.AsyncClient, world: dict[str, Any], acme_domain: dict[str, Any], method: str, suffix: str
) -> None:
    # Carol's session has Acme as its active organization, but she is not (or no longer) a member.
    await sign_in(client, world["carol"], world["acme"])
    response = await call(client, method, URL + suffix.format(id=acme_domain["id"]), JSON)
    assert response.status_code == 403
    assert response.json()["error"]["reason"] == "not_member"
    assert [r["status"] for r in await rows(world["acme"]["id"])] == ["pending"]


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_member_without_the_permission(
    client: httpx.AsyncClient, world: dict[str, Any], acme_domain: dict[str, Any], method: str, suffix: str
) -> None:
    # Dave holds no permission at all; Bob (member) may read but not manage.
    user, missing = (world["dave"], "sk_org_settings_read") if method == "GET" else (world["bob"], None)
    missing = missing or "sk_org_settings_manage"
    await sign_in(client, user, world["acme"])
    response = await call(client, method, URL + suffix.format(id=acme_domain["id"]), HTML)
    assert response.status_code == 403
    assert missing in response.text
    api = await call(client, method, URL + suffix.format(id=acme_domain["id"]), JSON)
    assert api.json()["error"] | {"reason": "missing_permission", "missing": missing} == api.json()["error"]
    assert [r["domain"] for r in await rows(world["acme"]["id"])] == ["acme.example.com"]


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_organization_without_the_feature(
    client: httpx.AsyncClient, world: dict[str, Any], method: str, suffix: str
) -> None:
    initech_domain = await add_row(world["initech"], "initech.example.com")
    await sign_in(client, world["erin"], world["initech"])
    response = await call(client, method, URL + suffix.format(id=initech_domain["id"]), HTML)
    assert response.status_code == 403
    assert "Domain verification is not enabled for this organization" in response.text
    api = await call(client, method, URL + suffix.format(id=initech_domain["id"]), JSON)
    assert api.json()["error"]["reason"] == "feature_disabled"
    assert api.json()["error"]["missing"] == FEATURE
    assert [r["status"] for r in await rows(world["initech"]["id"])] == ["pending"]


async def test_without_the_feature_the_widget_is_hidden(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["erin"], world["initech"])
    home = await client.get("/ui/", headers=HTML)
    assert home.status_code == 200
    assert f'href="{URL}"' not in home.text
    client.cookies.clear()
    await sign_in(client, world["alice"], world["acme"])
    home = await client.get("/ui/", headers=HTML)
    # The navigation (sidebar, and its folded copy for phone-sized screens) and the home card.
    assert home.text.count(f'href="{URL}"') == 3
    assert WIDGET.description in home.text


@pytest.mark.parametrize("action", ["verify", "delete"])
async def test_another_organizations_domain_is_not_found(
    client: httpx.AsyncClient, world: dict[str, Any], acme_domain: dict[str, Any], action: str
) -> None:
    await sign_in(client, world["carol"], world["globex"])
    response = await post(client, f"{URL}/{acme_domain['id']}/{action}")
    assert response.status_code == 404
    assert "acme.example.com" not in response.text
    api = await post(client, f"{URL}/{acme_domain['id']}/{action}", headers=JSON)
    assert api.status_code == 404
    assert api.json()["error"]["status"] == 404
    assert (await post(client, f"{URL}/dom_doesnotexist/{action}")).status_code == 404
    [row] = await rows(world["acme"]["id"])
    assert row["status"] == "pending" and row["check_requested_at"] is None
    assert await audit("domain.deleted") == [] and await audit("domain.verify_requested") == []
    page = await client.get(URL, headers=HTML)
    assert "acme.example.com" not in page.text


# --- the hostile matrix, setup-link principal (issue 14) ---------------------------------------------------


async def link_call(client: httpx.AsyncClient, method: str, path: str) -> httpx.Response:
    """As :func:`call`, with the CSRF token from the Domains page (a setup-link session has no home page)."""
    if method == "GET":
        return await client.get(path, headers=JSON)
    page = await client.get(URL, headers=HTML)
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token, "no CSRF token on the Domains page"
    data = {"_csrf_token": token.group(1), "domain": "new.example.com"}
    return await client.post(path, data=data, headers={**JSON, "x-csrftoken": data["_csrf_token"]})


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_setup_link_session_for_domains_works_like_an_administrator(
    client: httpx.AsyncClient, world: dict[str, Any], acme_domain: dict[str, Any], method: str, suffix: str
) -> None:
    link_id = await sign_in_link(client, world["acme"], "domain_verification")
    response = await link_call(client, method, URL + suffix.format(id=acme_domain["id"]))
    assert response.status_code == (200 if method == "GET" else 303), response.text
    if method == "POST" and suffix == "":
        [added] = await audit("domain.added")
        assert added["actor_id"] == link_id and added["details"]["actor"] == "IT admin via setup link"


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_setup_link_session_for_another_intent_is_refused_naming_it(
    client: httpx.AsyncClient, world: dict[str, Any], acme_domain: dict[str, Any], method: str, suffix: str
) -> None:
    await sign_in_link(client, world["acme"], "domain_verification")
    page = await client.get(URL, headers=HTML)
    token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert token
    client.cookies.delete("portal_setup")
    await Organization.update({Organization.features: [FEATURE, "sso"]}).where(
        Organization.id == world["acme"]["id"]
    )
    await sign_in_link(client, world["acme"], "sso")
    path = URL + suffix.format(id=acme_domain["id"])
    data = {"_csrf_token": token.group(1), "domain": "new.example.com"}
    if method == "GET":
        response = await client.get(path, headers=JSON)
    else:
        response = await client.post(path, data=data, headers=JSON)
    assert response.status_code == 403
    assert response.json()["error"]["intent"] == "sso"
    assert [r["domain"] for r in await rows(world["acme"]["id"])] == ["acme.example.com"]


@pytest.mark.parametrize("action", ["verify", "delete"])
async def test_setup_link_session_of_another_organization_finds_nothing(
    client: httpx.AsyncClient, world: dict[str, Any], acme_domain: dict[str, Any], action: str
) -> None:
    await sign_in_link(client, world["globex"], "domain_verification")
    response = await link_call(client, "POST", f"{URL}/{acme_domain['id']}/{action}")
    assert response.status_code == 404
    [row] = await rows(world["acme"]["id"])
    assert row["status"] == "pending" and row["check_requested_at"] is None
    page = await client.get(URL, headers=HTML)
    assert "acme.example.com" not in page.text


async def test_setup_link_session_without_the_feature_is_refused(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    # The feature is switched off after the link was opened (no link is made without it).
    await sign_in_link(client, world["acme"], "domain_verification")
    await Organization.update({Organization.features: []}).where(Organization.id == world["acme"]["id"])
    api = await client.get(URL, headers=JSON)
    assert api.status_code == 403
    assert api.json()["error"]["reason"] == "feature_disabled" and api.json()["error"]["missing"] == FEATURE


# --- adding --------------------------------------------------------------------------------------------


async def test_admin_adds_a_domain_and_sees_the_record_to_publish(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post(client, URL, {"domain": "  Sub.Example.COM. "})
    assert response.headers["location"].startswith(URL + "#dom_")
    assert await flash_after(client, response) == (
        "ok: sub.example.com added. Publish the TXT record below, then choose Verify now."
    )
    [row] = await rows(world["acme"]["id"])
    assert row["domain"] == "sub.example.com"
    assert row["status"] == "pending" and row["verified_domain"] is None
    assert re.fullmatch(r"[a-z2-7]{32}", row["verification_token"])
    assert row["pending_since"] is not None and row["check_requested_at"] is None
    page = await client.get(URL, headers=HTML)
    box = card(page.text, row["id"])
    assert f'<code id="{row["id"]}-record-name">_portal-verification.sub.example.com</code>' in box
    assert (
        f'<code id="{row["id"]}-record-value">portal-verification={row["verification_token"]}</code>' in box
    )
    assert f'data-copy="{row["id"]}-record-value"' in box
    assert "Not checked yet." in text(box) and "Verify now" in box
    assert '<script src="/static/copy.js" defer></script>' in page.text
    [event] = await audit("domain.added")
    assert event["actor_id"] == world["alice"]["id"] and event["organization_id"] == world["acme"]["id"]
    assert event["target"] == row["id"] and event["details"] == {"domain": "sub.example.com"}
    assert event["ip"] == "127.0.0.1"


async def test_internationalized_domain_is_stored_in_ascii_and_shown_in_unicode(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    await post(client, URL, {"domain": "Bücher.example"})
    [row] = await rows(world["acme"]["id"])
    assert row["domain"] == "xn--bcher-kva.example"
    box = card((await client.get(URL, headers=HTML)).text, row["id"])
    assert ">bücher.example</h3>" in box
    assert "_portal-verification.xn--bcher-kva.example" in box


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "Enter a domain name, like example.com."),
        ("co.uk", "co.uk is a public suffix: nobody can own all of it."),
        ("com", "com is a public suffix: nobody can own all of it."),
        ("gmail.com", "gmail.com is a free email provider: it cannot belong to one organization."),
        ("192.0.2.1", "Enter a domain name, not an IP address."),
        ("[2001:db8::1]", "Enter a domain name, not an IP address."),
        ("https://example.com/login", "Enter a domain name only, like example.com (no scheme, path or @)."),
        ("ex ample.com", "'ex ample.com' is not a valid domain name."),
        ("-bad-.example.com", "'-bad-.example.com' is not a valid domain name."),
        ("a" * 2000 + ".com", "Enter a domain name of at most 253 characters."),
    ],
)
async def test_refused_domains_say_why_and_save_nothing(
    client: httpx.AsyncClient, world: dict[str, Any], raw: str, message: str
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post(client, URL, {"domain": raw})
    assert response.status_code == 400
    assert field_error(response.text) == message
    assert response.text.count("<title>Error: Domains") == 1
    assert await rows(world["acme"]["id"]) == []
    assert await audit("domain.added") == []


async def test_json_client_gets_the_reason_by_field(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await post(client, URL, {"domain": "gmail.com"}, headers=JSON)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == [
        {
            "key": "domain",
            "message": "gmail.com is a free email provider: it cannot belong to one organization.",
        }
    ]


async def test_the_same_domain_twice_is_refused(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    await post(client, URL, {"domain": "example.com"})
    again = await post(client, URL, {"domain": "EXAMPLE.com"})
    assert again.status_code == 400
    assert field_error(again.text) == "example.com is already in your list."
    assert len(await rows(world["acme"]["id"])) == 1


async def test_a_domain_verified_by_another_organization_cannot_be_added(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await add_row(world["globex"], "example.com", status="verified", verified_domain="example.com")
    await sign_in(client, world["alice"], world["acme"])
    response = await post(client, URL, {"domain": "example.com"})
    assert response.status_code == 409
    assert field_error(response.text) == f"example.com: {service.TAKEN}"
    assert await rows(world["acme"]["id"]) == []


async def test_pending_claims_of_other_organizations_do_not_block_adding(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await add_row(world["globex"], "example.com")
    await sign_in(client, world["alice"], world["acme"])
    assert (await post(client, URL, {"domain": "example.com"})).status_code == 303
    assert [r["domain"] for r in await rows(world["acme"]["id"])] == ["example.com"]


async def test_an_organization_holds_a_bounded_number_of_domains(
    client: httpx.AsyncClient, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_DOMAINS", 2)
    await sign_in(client, world["alice"], world["acme"])
    for name in ("one.example.com", "two.example.com"):
        assert (await post(client, URL, {"domain": name})).status_code == 303
    third = await post(client, URL, {"domain": "three.example.com"})
    assert third.status_code == 400
    assert field_error(third.text) == "An organization can have at most 2 domains."


# --- reading -------------------------------------------------------------------------------------------


async def test_member_sees_domains_and_records_without_forms(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    pending = await add_row(
        world["acme"],
        "pending.example.com",
        failure_reason="No TXT record found yet.",
        last_checked_at=clock.utcnow(),
    )
    verified = await add_row(
        world["acme"],
        "verified.example.com",
        status="verified",
        verified_domain="verified.example.com",
        verified_at=clock.utcnow(),
    )
    failed = await add_row(world["acme"], "failed.example.com", status="failed", failure_reason="Too late.")
    await add_row(world["globex"], "globex.example.com")
    await sign_in(client, world["bob"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    assert "<form" not in page.text.split('<main id="main"', 1)[1]
    assert "Verify now" not in page.text and "Delete" not in page.text and "Try again" not in page.text
    assert "Only members who can manage the organization's settings" in page.text
    assert "globex.example.com" not in page.text  # tenant check
    assert "Pending" in card(page.text, pending["id"])
    assert "Not verified yet: No TXT record found yet." in text(card(page.text, pending["id"]))
    assert "Verified on" in text(card(page.text, verified["id"]))
    assert "Failed: Too late." in text(card(page.text, failed["id"]))
    assert record_name("pending.example.com") in page.text


async def test_empty_list(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert "No domains yet. Add one above" in page.text


# --- "Verify now" with the embedded queue and a loopback DNS server --------------------------------------


async def test_verify_now_checks_at_once_and_the_page_shows_the_result(
    client: httpx.AsyncClient, app: Litestar, world: dict[str, Any], zone: Zone
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    await post(client, URL, {"domain": "example.com"})
    [row] = await rows(world["acme"]["id"])
    name = record_name("example.com")

    # Nothing published yet: the check says so, and the domain stays pending.
    response = await post(client, f"{URL}/{row['id']}/verify")
    assert response.headers["location"] == f"{URL}#{row['id']}"
    await jobs_of(app).drain()
    # The result is in before the page loads: no "Checking…" banner that would stay untrue (issue 16).
    after = await client.get(response.headers["location"], headers=HTML)
    assert "flash-pending" not in after.text and "Checking the TXT record of" not in after.text
    box = text(card((await client.get(URL, headers=HTML)).text, row["id"]))
    assert "Not verified yet: No TXT record found: the record name does not exist in DNS yet." in box
    assert "Last checked" in box
    [row] = await rows(world["acme"]["id"])
    assert row["status"] == "pending" and row["last_checked_at"] is not None

    # The admin publishes the record (a wrong one first), mid-test.
    zone.publish(name, "portal-verification=typo")
    await post(client, f"{URL}/{row['id']}/verify")
    await jobs_of(app).drain()
    box = text(card((await client.get(URL, headers=HTML)).text, row["id"]))
    assert "but its value does not match" in box

    zone.publish(name, "v=spf1 -all", record_value(row["verification_token"]))
    await post(client, f"{URL}/{row['id']}/verify")
    await jobs_of(app).drain()
    page = await client.get(URL, headers=HTML)
    box = card(page.text, row["id"])
    assert '<span class="badge ok">Verified</span>' in box
    assert "Verified on" in text(box) and "Verify now" not in box
    [row] = await rows(world["acme"]["id"])
    assert row["status"] == "verified" and row["verified_domain"] == "example.com"
    assert row["verified_at"] is not None and row["failure_reason"] is None
    requested = await audit("domain.verify_requested")
    assert [e["actor_id"] for e in requested] == [world["alice"]["id"]] * 3
    [verified] = await audit("domain.verified")
    assert verified["actor_id"] is None and verified["organization_id"] == world["acme"]["id"]
    assert verified["details"] == {"domain": "example.com"}

    # Verified: nothing more to check.
    again = await post(client, f"{URL}/{row['id']}/verify")
    assert await flash_after(client, again) == "error: example.com is already verified."


async def test_page_waits_for_a_queued_check_and_a_timeout_is_a_retry(
    client: httpx.AsyncClient, app: Litestar, world: dict[str, Any], zone: Zone
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    row = await add_row(world["acme"], "slow.example.com")
    zone.set_mode(record_name("slow.example.com"), Mode.SILENT)
    await post(client, f"{URL}/{row['id']}/verify")
    # The check is waiting for DNS: the page says so and asks the browser to refresh the list.
    page = await client.get(URL, headers=HTML)
    assert re.search(r'<section id="domain-list"[^>]*data-refresh="2000"', page.text)
    box = card(page.text, row["id"])
    assert "data-queued" in box and "Checking the TXT record now" in box
    assert '<script src="/static/refresh.js" defer></script>' in page.text
    # Pressing again while it runs queues nothing more.
    again = await post(client, f"{URL}/{row['id']}/verify")
    assert await flash_after(client, again) == "ok: A check of slow.example.com is already queued."
    await jobs_of(app).drain()
    page = await client.get(URL, headers=HTML)
    assert "data-refresh" not in page.text
    box = text(card(page.text, row["id"]))
    assert "Not verified yet: DNS did not answer in time; we will retry." in box
    [row] = await rows(world["acme"]["id"])
    assert row["status"] == "pending"
    assert await audit("domain.failed") == []


async def test_a_check_that_never_reports_is_shown_as_waiting_for_a_worker(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    asked = clock.utcnow() - timedelta(minutes=6)
    row = await add_row(world["acme"], "example.com", check_requested_at=asked)
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert "data-refresh" not in page.text
    box = text(card(page.text, row["id"]))
    assert "Check not done yet. It was asked for at" in box
    assert "runs when a background worker is available" in box
    await Domain.update({Domain.check_requested_at: clock.utcnow()}).where(Domain.id == row["id"])
    page = await client.get(URL, headers=HTML)
    assert "data-refresh" in page.text and "Checking the TXT record now" in page.text


async def test_try_again_restarts_the_window_of_a_failed_domain(
    client: httpx.AsyncClient, app: Litestar, world: dict[str, Any], zone: Zone
) -> None:
    long_ago = clock.utcnow() - timedelta(days=5)
    row = await add_row(
        world["acme"], "late.example.com", status="failed", failure_reason="Not verified in time."
    )
    await Domain.update({Domain.pending_since: long_ago, Domain.created_at: long_ago}).where(
        Domain.id == row["id"]
    )
    await sign_in(client, world["alice"], world["acme"])
    assert "Try again" in card((await client.get(URL, headers=HTML)).text, row["id"])
    zone.publish(record_name("late.example.com"), record_value(row["verification_token"]))
    response = await post(client, f"{URL}/{row['id']}/verify")
    await jobs_of(app).drain()
    # Verified before the page loads: the "pending again… Checking…" banner would be untrue, so none.
    after = await client.get(response.headers["location"], headers=HTML)
    assert "flash-pending" not in after.text
    [row] = await rows(world["acme"]["id"])
    assert row["status"] == "verified"
    assert row["pending_since"] > long_ago
    [event] = await audit("domain.verify_requested")
    assert event["details"] == {"domain": "late.example.com", "restarted": True}


async def test_try_again_is_refused_once_another_organization_owns_the_domain(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    row = await add_row(world["acme"], "example.com", status="failed", failure_reason=service.TAKEN)
    await add_row(world["globex"], "example.com", status="verified", verified_domain="example.com")
    await sign_in(client, world["alice"], world["acme"])
    response = await post(client, f"{URL}/{row['id']}/verify")
    assert await flash_after(client, response) == f"error: example.com: {service.TAKEN}"
    [row] = await rows(world["acme"]["id"])
    assert row["status"] == "failed"


class BrokenQueue(InlineQueue):
    async def enqueue(self, name: str, *args: Any, job_id: str | None = None) -> bool:
        raise ConnectionError("redis is down")


async def test_when_the_queue_is_down_the_request_is_withdrawn(
    settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry, world: dict[str, Any]
) -> None:
    app = create_app(settings, engine=db, policy=policy, registry=registry, jobs=BrokenQueue(settings))
    row = await add_row(world["acme"], "example.com")
    async with serve(app) as client:
        await sign_in(client, world["alice"], world["acme"])
        response = await post(client, f"{URL}/{row['id']}/verify")
        assert await flash_after(client, response) == (
            "error: Could not start a check of example.com: the job queue is unavailable. Try again shortly."
        )
        page = await client.get(URL, headers=HTML)
        assert "Checking the TXT record now" not in page.text
    [row] = await rows(world["acme"]["id"])
    assert row["check_requested_at"] is None


# --- deleting ------------------------------------------------------------------------------------------


async def test_delete_frees_a_verified_domain_for_another_organization(
    client: httpx.AsyncClient, app: Litestar, world: dict[str, Any], zone: Zone
) -> None:
    acme_row = await add_row(
        world["acme"],
        "example.com",
        status="verified",
        verified_domain="example.com",
        verified_at=clock.utcnow(),
    )
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert "another organization could then verify it" in card(page.text, acme_row["id"])
    response = await post(client, f"{URL}/{acme_row['id']}/delete")
    assert await flash_after(client, response) == "ok: example.com deleted."
    assert await rows(world["acme"]["id"]) == []
    [event] = await audit("domain.deleted")
    assert event["details"] == {"domain": "example.com", "status": "verified"}
    assert event["actor_id"] == world["alice"]["id"]

    client.cookies.clear()
    await sign_in(client, world["carol"], world["globex"])
    assert (await post(client, URL, {"domain": "example.com"})).status_code == 303
    [globex_row] = await rows(world["globex"]["id"])
    zone.publish(record_name("example.com"), record_value(globex_row["verification_token"]))
    await post(client, f"{URL}/{globex_row['id']}/verify")
    await jobs_of(app).drain()
    [globex_row] = await rows(world["globex"]["id"])
    assert globex_row["status"] == "verified"


@pytest.fixture
async def signed_in_admin(client: httpx.AsyncClient, world: dict[str, Any]) -> httpx.AsyncClient:
    await sign_in(client, world["alice"], world["acme"])
    return client


async def test_forged_organization_id_in_the_form_is_ignored(
    signed_in_admin: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    response = await post(
        signed_in_admin, URL, {"domain": "example.com", "organization_id": world["globex"]["id"]}
    )
    assert response.status_code == 303
    assert [r["domain"] for r in await rows(world["acme"]["id"])] == ["example.com"]
    assert await rows(world["globex"]["id"]) == []


def test_settings_reject_a_nameserver_that_is_not_an_address(settings: Settings) -> None:
    from portal.core.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=r"PORTAL_DNS_NAMESERVERS: 'dns.example' is not an IP address"):
        load_settings({"PORTAL_DNS_NAMESERVERS": "127.0.0.1, dns.example"})
    loaded = load_settings({"PORTAL_DNS_NAMESERVERS": "127.0.0.1, ::1", "PORTAL_DNS_PORT": "5353"})
    assert loaded.dns_nameservers == ["127.0.0.1", "::1"] and loaded.dns_port == 5353
    assert msgspec.structs.replace(settings, dns_nameservers=[]).dns_nameservers == []

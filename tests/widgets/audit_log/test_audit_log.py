"""The Audit log widget: the hostile matrix, entries in words, filters, cursor pages, CSV export."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.handlers.http_handlers import HTTPRouteHandler
from piccolo.engine.base import Engine

from policy import Feature, Permission, PolicyEngine
from portal.core.tables import AuditEvent, Membership
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in
from widgets.audit_log import WIDGET, service

pytestmark = pytest.mark.db
HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
URL = "/ui/organization/audit-log"
EXPORT = f"{URL}/export.csv"


@pytest.fixture
async def world(db: Engine) -> dict[str, Any]:
    acme = await make_org("acme", "Acme", features=[Feature.AUDIT_LOG])
    globex = await make_org("globex", "Globex", features=[Feature.AUDIT_LOG])
    plain = await make_org("plain", "Plain")  # without the audit_log feature
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


async def event(
    org: dict[str, Any],
    action: str,
    *,
    actor: dict[str, Any] | None = None,
    target: str = "",
    at: datetime | None = None,
    **details: Any,
) -> str:
    row = AuditEvent(
        organization_id=org["id"],
        actor_id=actor["id"] if actor else None,
        action=action,
        target=target,
        details=details,
        ip="203.0.113.7",
        at=at or datetime.now(UTC),
    )
    await row.save()
    return str(row.id)


def sentences(page: str) -> list[str]:
    return [
        html.unescape(s).strip() for s in re.findall(r'<td class="audit-sentence">(.*?)</td>', page, re.S)
    ]


def field_error(page: str, field: str) -> str:
    match = re.search(
        rf'<span class="field-error" id="{field}-error"><span class="visually-hidden">Error: </span>(.*?)</span>',
        page,
    )
    assert match, f"no error shown for {field}"
    control = re.search(rf'<(?:input|select) id="{field}"[^>]*>', page)
    assert control and 'aria-invalid="true"' in control.group(0)
    return html.unescape(match.group(1))


# --- the hostile matrix ---------------------------------------------------------------------------------------


def test_the_widget_and_its_routes_declare_permission_and_feature(
    app: Litestar, policy: PolicyEngine
) -> None:
    assert (WIDGET.key, WIDGET.url, WIDGET.feature, WIDGET.read_permission) == (
        "audit_log",
        URL,
        Feature.AUDIT_LOG,
        Permission.AUDIT_READ,
    )
    declared = {}
    for route in app.routes:
        if route.path in (URL, EXPORT):
            for handler in getattr(route, "route_handlers", ()):
                if isinstance(handler, HTTPRouteHandler) and handler.http_methods != {"OPTIONS"}:
                    declared[route.path] = (handler.opt["permission"], handler.opt["feature"])
    assert declared == {
        URL: (Permission.AUDIT_READ, Feature.AUDIT_LOG),
        EXPORT: (Permission.AUDIT_READ, Feature.AUDIT_LOG),
    }
    # The shipped policy: admin holds it, member does not, and it needs the audit_log feature.
    assert policy.decide(["admin"], ["audit_log"], Permission.AUDIT_READ).allowed
    assert not policy.decide(["member"], ["audit_log"], Permission.AUDIT_READ).allowed
    assert (
        policy.decide(["admin"], [], Permission.AUDIT_READ).describe()
        == "denied: feature_disabled (audit_log)"
    )


@pytest.mark.parametrize("path", [URL, EXPORT])
async def test_anonymous_browser_goes_to_login_and_api_gets_401(client: httpx.AsyncClient, path: str) -> None:
    page = await client.get(path, headers=HTML)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login?return_to=")
    assert (await client.get(path, headers=JSON)).status_code == 401


@pytest.mark.parametrize(
    ("who", "org", "reason", "shown"),
    [
        ("carol", "acme", "not_member", "not a member of this organization"),
        ("bob", "acme", "missing_permission", "sk_org_audit_read"),
        (
            "carol",
            "plain",
            "feature_disabled",
            "Audit log is not enabled for this organization (feature audit_log)",
        ),
    ],
    ids=["non-member", "member-without-permission", "organization-without-feature"],
)
@pytest.mark.parametrize("path", [URL, EXPORT])
async def test_denied_users_get_403_naming_why(
    client: httpx.AsyncClient, world: dict[str, Any], who: str, org: str, reason: str, shown: str, path: str
) -> None:
    await event(world["acme"], "member.removed", actor=world["alice"], email="secret@acme.test")
    await sign_in(client, world[who], world[org])
    page = await client.get(path, headers=HTML)
    assert page.status_code == 403
    assert shown in html.unescape(page.text)
    assert "secret@acme.test" not in page.text
    assert (await client.get(path, headers=JSON)).json()["error"]["reason"] == reason


async def test_entries_of_another_organization_never_show_whatever_the_query(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    theirs = await event(world["globex"], "member.removed", actor=world["gina"], email="spy@globex.test")
    await event(world["acme"], "member.removed", actor=world["alice"], email="bob@acme.test")
    await sign_in(client, world["alice"], world["acme"])
    # A cursor built from the other organization's newest entry, an organization_id in the query: ignored.
    cursor = service.encode_cursor(datetime.now(UTC) + timedelta(days=1), theirs)
    for query in ("", f"?organization_id={world['globex']['id']}", f"?cursor={cursor}"):
        page = await client.get(URL + query, headers=HTML)
        assert page.status_code == 200
        assert "spy@globex.test" not in page.text and theirs not in page.text
        exported = await client.get(EXPORT + query, headers=HTML)
        assert "spy@globex.test" not in exported.text
    assert "alice@acme.test removed bob@acme.test" in sentences((await client.get(URL, headers=HTML)).text)


async def test_the_widget_is_in_the_navigation_only_where_it_may_be_opened(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    assert f'href="{URL}"' in (await client.get("/ui/", headers=HTML)).text
    await sign_in(client, world["bob"], world["acme"])
    assert f'href="{URL}"' not in (await client.get("/ui/", headers=HTML)).text
    await sign_in(client, world["carol"], world["plain"])
    assert f'href="{URL}"' not in (await client.get("/ui/", headers=HTML)).text


# --- what it shows -------------------------------------------------------------------------------------------


async def test_real_changes_read_as_sentences(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    acme, alice, bob = world["acme"], world["alice"], world["bob"]
    await sign_in(client, alice, acme)
    token = await csrf_token(client, "/ui/organization/members")
    [bob_member] = await Membership.select().where(Membership.user == bob["id"])
    removed = await client.post(
        f"/ui/organization/members/{bob_member['id']}/remove",
        data={"_csrf_token": token, "confirm": "yes"},
        headers=HTML,
    )
    assert removed.status_code == 303, removed.text
    changed = await client.post(
        "/ui/organization/settings",
        data={"_csrf_token": token, "name": "acme", "display_name": "Acme Corp", "allowed_email_domains": ""},
        headers=HTML,
    )
    assert changed.status_code == 303
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    shown = sentences(page.text)
    assert shown[:2] == [
        "alice@acme.test changed the organization's display name from “Acme” to “Acme Corp”",
        "alice@acme.test removed bob@acme.test",
    ]
    assert "The portal added bob@acme.test as member" in shown
    assert "The portal added alice@acme.test as admin" in shown


@pytest.mark.parametrize(
    ("action", "details", "target", "expected"),
    [
        (
            "member.roles_changed",
            {"email": "bob@acme.test", "old": ["member"], "new": ["admin"]},
            "",
            "alice@acme.test changed the roles of bob@acme.test from member to admin",
        ),
        (
            "member.invited",
            {"roles": ["member"]},
            "dan@acme.test",
            "alice@acme.test invited dan@acme.test as member",
        ),
        (
            "invitation.revoked",
            {"email": "dan@acme.test"},
            "inv_1",
            "alice@acme.test revoked the invitation to dan@acme.test",
        ),
        (
            "invitation.accepted",
            {"email": "dan@acme.test", "roles": ["member"]},
            "inv_1",
            "dan@acme.test accepted the invitation and joined as member",
        ),
        ("domain.added", {"domain": "acme.test"}, "dom_1", "alice@acme.test added the domain acme.test"),
        ("domain.verified", {"domain": "acme.test"}, "dom_1", "The domain acme.test was verified"),
        (
            "session_policy.updated",
            {
                "old": {"source": "application"},
                "new": {"source": "custom", "absolute_timeout": 86400, "idle_timeout": 3600},
                "sessions_ended": 2,
            },
            "",
            "alice@acme.test changed the session policy from the app defaults to absolute 1 day, idle 1 hour, ending 2 sessions",
        ),
        (
            "login.succeeded",
            {"method": "email_code"},
            "alice@acme.test",
            "alice@acme.test signed in (email code)",
        ),
        ("sessions.revoked_others", {"count": 3}, "", "alice@acme.test signed out 3 other sessions"),
        (
            "webhook.endpoint_disabled",
            {"url": "https://app.example/hooks"},
            "whe_1",
            "The webhook endpoint https://app.example/hooks was disabled after failing for 5 days",
        ),
        ("something.new", {}, "x", "alice@acme.test: something.new (x)"),
    ],
)
async def test_each_action_has_a_sentence(
    client: httpx.AsyncClient,
    world: dict[str, Any],
    action: str,
    details: dict[str, Any],
    target: str,
    expected: str,
) -> None:
    await event(world["acme"], action, actor=world["alice"], target=target, **details)
    await sign_in(client, world["alice"], world["acme"])
    assert sentences((await client.get(f"{URL}?actor=alice", headers=HTML)).text)[0] == expected


@pytest.mark.parametrize("action", sorted(service.SENTENCES))
def test_every_known_action_reads_well_even_without_details(action: str) -> None:
    text = service.describe(action, "alice@acme.test", "bob@acme.test", {})
    assert "None" not in text and "{" not in text and ": " + action.split(".")[0] not in text
    assert text[0].isupper() or text.startswith("alice@acme.test")


async def test_filters_by_actor_action_and_dates(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    acme, alice, bob = world["acme"], world["alice"], world["bob"]
    base = datetime(2026, 11, 10, 12, tzinfo=UTC)
    await event(acme, "domain.added", actor=alice, at=base, domain="one.test")
    await event(acme, "domain.added", actor=bob, at=base + timedelta(days=1), domain="two.test")
    await event(acme, "domain.deleted", actor=alice, at=base + timedelta(days=2), domain="one.test")
    await sign_in(client, alice, acme)

    async def shown(query: str) -> list[str]:
        page = await client.get(f"{URL}?{query}", headers=HTML)
        assert page.status_code == 200
        return [s for s in sentences(page.text) if ".test" in s and "domain" in s]

    assert await shown("actor=BOB@acme") == ["bob@acme.test added the domain two.test"]
    assert await shown("action=domain.deleted") == ["alice@acme.test deleted the domain one.test"]
    assert await shown("since=2026-11-11&until=2026-11-11") == ["bob@acme.test added the domain two.test"]
    assert await shown("actor=alice&action=domain.added&until=2026-11-10") == [
        "alice@acme.test added the domain one.test"
    ]
    assert await shown("actor=nobody") == []
    dana = await make_user("dana_x@acme.test")
    await event(acme, "domain.added", actor=dana, at=base, domain="three.test")
    assert await shown("actor=dana_x") == ["dana_x@acme.test added the domain three.test"]
    page = await client.get(f"{URL}?actor=nobody", headers=HTML)
    assert "No entries match these filters." in page.text


async def test_bad_filters_are_shown_next_to_their_field(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(f"{URL}?since=yesterday&action=drop.table&until=2026-01-01", headers=HTML)
    assert page.status_code == 400
    assert field_error(page.text, "since") == "Enter a date like 2026-12-03."
    assert field_error(page.text, "action") == "Choose an action from the list."
    page = await client.get(f"{URL}?since=2026-02-01&until=2026-01-01", headers=HTML)
    assert field_error(page.text, "until") == "The last day is before the first day."
    api = await client.get(f"{URL}?since=nope", headers=JSON)
    assert api.status_code == 400 and api.json()["error"]["fields"] == [
        {"key": "since", "message": "Enter a date like 2026-12-03."}
    ]
    exported = await client.get(f"{EXPORT}?until=31/12/2026", headers=JSON)
    assert exported.status_code == 400 and exported.json()["error"]["fields"][0]["key"] == "until"
    page = await client.get(f"{URL}?cursor=not-a-cursor", headers=HTML)
    assert page.status_code == 400 and "This page link is not valid any more" in page.text


async def test_cursor_pages_walk_every_entry_once(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    acme, alice = world["acme"], world["alice"]
    same_moment = datetime(2026, 11, 20, 9, tzinfo=UTC)
    for i in range(service.PAGE_SIZE + 7):
        # Several entries share a timestamp: the id breaks the tie, so none is skipped or repeated.
        await event(
            acme, "domain.added", actor=alice, at=same_moment + timedelta(seconds=i // 3), domain=f"d{i}.test"
        )
    await sign_in(client, alice, acme)
    seen: list[str] = []
    url: str | None = f"{URL}?action=domain.added"
    pages = 0
    while url:
        page = await client.get(url, headers=HTML)
        assert page.status_code == 200
        seen += sentences(page.text)
        match = re.search(r'<a href="([^"]+)" rel="next">Older entries</a>', page.text)
        url = html.unescape(match.group(1)) if match else None
        if url:
            assert "action=domain.added" in url  # the filters travel with the cursor
        pages += 1
    assert pages == 2
    assert len(seen) == len(set(seen)) == service.PAGE_SIZE + 7
    newest = {f"alice@acme.test added the domain d{service.PAGE_SIZE + n}.test" for n in (4, 5, 6)}
    assert set(seen[:3]) == newest  # newest first (the last three share their second)


async def test_csv_export_has_the_same_filters_and_neutralizes_formulas(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    acme, alice = world["acme"], world["alice"]
    await event(acme, "domain.added", actor=alice, domain='=HYPERLINK("http://evil")')
    await event(acme, "logout", actor=alice)
    await sign_in(client, alice, acme)
    exported = await client.get(f"{EXPORT}?action=domain.added", headers=HTML)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.headers["content-disposition"].startswith('attachment; filename="audit-log-acme-')
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["action"] for r in rows] == ["domain.added"]
    assert rows[0]["actor"] == "alice@acme.test"
    assert rows[0]["entry"] == 'alice@acme.test added the domain =HYPERLINK("http://evil")'
    assert rows[0]["ip"] == "203.0.113.7"
    assert '"domain": "=HYPERLINK' in rows[0]["details"]
    everything = list(csv.DictReader(io.StringIO((await client.get(EXPORT, headers=HTML)).text)))
    assert {r["action"] for r in everything} >= {"domain.added", "logout", "member.added"}
    page = await client.get(f"{URL}?action=domain.added", headers=HTML)
    assert 'href="/ui/organization/audit-log/export.csv?action=domain.added"' in page.text

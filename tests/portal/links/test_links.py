"""Setup links (issue 14): one-time URLs that open a session limited to one organization and one intent."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler

from portal.cli import main
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Domain, Organization, SetupLink
from portal.links import service
from portal.web.guard import UNAUTHENTICATED_PREFIXES
from tests.conftest import POLICY_DIR, FrozenClock
from tests.factories import csrf_token, sign_in, sign_in_link

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
DOMAINS = "/ui/organization/domains"


def token_of(url: str) -> str:
    return url.rsplit("/setup/", 1)[1]


async def open_url(client: httpx.AsyncClient, url: str) -> httpx.Response:
    return await client.get("/setup/" + token_of(url), headers=HTML)


# --- creating, listing, revoking ---------------------------------------------------------------------------


async def test_create_returns_a_one_time_url_and_stores_only_its_hash(
    settings: Settings, world: dict[str, Any]
) -> None:
    created = await service.create_link(settings, world["acme"]["id"], "domain_verification", ttl=300)
    assert created.url.startswith("http://localhost:8000/setup/portal_lnk_")
    token = token_of(created.url)
    rows = await SetupLink.select().where(SetupLink.id == created.id)
    assert len(rows) == 1
    stored = " ".join(str(v) for v in rows[0].values())
    assert token not in stored
    assert rows[0]["token_hash"] == service.hash_secret(token)
    assert rows[0]["intent"] == "domain_verification"
    assert (rows[0]["expires_at"] - rows[0]["created_at"]).total_seconds() == 300


@pytest.mark.parametrize(
    ("intent", "ttl", "field", "message"),
    [
        ("billing", None, "intent", "'billing' is not an intent; use one of sso, scim, domain_verification."),
        ("sso", 10, "ttl", "must be between 1 minute and 7 days (got 10 seconds)."),
        ("sso", 8 * 86400, "ttl", "must be between 1 minute and 7 days (got 691200 seconds)."),
    ],
)
async def test_create_refuses_bad_input_and_saves_nothing(
    settings: Settings, world: dict[str, Any], intent: str, ttl: int | None, field: str, message: str
) -> None:
    with pytest.raises(service.InvalidInput) as caught:
        await service.create_link(settings, world["acme"]["id"], intent, ttl=ttl)
    assert (caught.value.field, caught.value.message) == (field, message)
    assert await SetupLink.count() == 0


async def test_create_for_an_unknown_organization_is_refused(
    settings: Settings, world: dict[str, Any]
) -> None:
    with pytest.raises(service.InvalidInput) as caught:
        await service.create_link(settings, "org_nope", "sso")
    assert caught.value.field == "organization"


@pytest.fixture
def run(database_url: str, tmp_path: Any, world: dict[str, Any]):  # type: ignore[no-untyped-def]
    env = {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
        "PORTAL_PUBLIC_URL": "https://portal.example.com",
        "PORTAL_SECRET_KEY": "k" * 40,
    }

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_cli_create_list_revoke(run, world: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("link", "create", "acme", "--intent", "sso", "--ttl", "5m")
    assert code == 0, err
    url = out.strip()
    assert re.fullmatch(r"https://portal\.example\.com/setup/portal_lnk_[A-Za-z0-9_-]{43}", url)
    link_id = re.search(r"id: (lnk_\S+)", err).group(1)  # type: ignore[union-attr]
    assert "not shown again" in err

    code, out, _ = run("link", "list", "acme")
    assert code == 0
    assert link_id in out and "sso" in out and "pending" in out
    assert token_of(url) not in out

    code, out, _ = run("link", "revoke", link_id)
    assert code == 0 and f"revoked {link_id}" in out
    code, out, _ = run("link", "list", "acme")
    assert "revoked" in out
    code, _, err = run("link", "revoke", link_id)
    assert code == 1 and "no setup link" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("link", "create", "acme", "--intent", "billing"),
            "'billing' is not one of 'sso', 'scim', 'domain_verification'",
        ),
        (("link", "create", "acme", "--intent", "sso", "--ttl", "soon"), "'soon' is not a duration"),
        (
            ("link", "create", "acme", "--intent", "sso", "--ttl", "30s"),
            "must be between 1 minute and 7 days",
        ),
        (("link", "create", "nope", "--intent", "sso"), "no organization 'nope'"),
        (
            ("link", "create", "bare", "--intent", "scim"),
            "SCIM provisioning is not enabled for this organization",
        ),
        (("link", "list", "nope"), "no organization 'nope'"),
    ],
)
def test_cli_bad_input(run, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run(*args)
    assert code != 0
    assert message in err
    assert "portal_lnk_" not in out


# --- opening ---------------------------------------------------------------------------------------------


async def test_opening_lands_on_the_intent_widget_with_a_limited_session(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    created = await service.create_link(settings, world["acme"]["id"], "domain_verification")
    opened = await open_url(client, created.url)
    assert opened.status_code == 303
    assert opened.headers["location"] == DOMAINS
    cookie = next(c for c in opened.headers.get_list("set-cookie") if c.startswith("portal_setup="))
    assert "HttpOnly" in cookie and "Max-Age=3600" in cookie
    page = await client.get(DOMAINS, headers=HTML)
    assert page.status_code == 200
    assert "IT admin via setup link" in page.text
    assert "<h1>Domains</h1>" in page.text or ">Domains<" in page.text
    # No account: no profile, security, organization switcher, or other widgets in the navigation.
    assert "/ui/account/profile" not in page.text and "/ui/account/security" not in page.text
    assert "/ui/organizations/switch" not in page.text
    assert "/ui/organization/settings" not in page.text and "/ui/organization/members" not in page.text
    # Its stylesheets load (a page in a frame without them would be unreadable).
    for stylesheet in ("/brand.css", "/static/portal.css"):
        assert (await client.get(stylesheet)).status_code == 200, stylesheet
    # The home is the widget.
    home = await client.get("/ui/", headers=HTML)
    assert home.status_code == 303 and home.headers["location"] == DOMAINS
    audit = await AuditEvent.select().where(AuditEvent.action == "setup_link.opened").output(load_json=True)
    assert len(audit) == 1 and audit[0]["actor_id"] == created.id
    assert audit[0]["details"]["actor"] == "IT admin via setup link"


async def test_a_link_opens_once(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    created = await service.create_link(settings, world["acme"]["id"], "domain_verification")
    assert (await open_url(client, created.url)).status_code == 303
    again = httpx.AsyncClient(transport=client._transport, base_url=client.base_url)
    second = await open_url(again, created.url)
    assert second.status_code == 410
    assert "This setup link was already used" in second.text
    assert "Nobody was signed in." in second.text
    assert not any(c.startswith("portal_setup=") for c in second.headers.get_list("set-cookie"))
    api = await again.get("/setup/" + token_of(created.url), headers=JSON)
    assert api.status_code == 410 and api.json()["error"]["reason"] == "used"


async def test_reopening_in_the_session_it_opened_goes_back_to_the_widget(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    # An app that reloads the page holding the frame sends the browser to the same URL again.
    created = await service.create_link(settings, world["acme"]["id"], "domain_verification")
    assert (await open_url(client, created.url)).status_code == 303
    again = await open_url(client, created.url)
    assert again.status_code == 303 and again.headers["location"] == DOMAINS
    other = await service.create_link(settings, world["acme"]["id"], "domain_verification")
    await service.open_link(settings, token_of(other.url))
    used_elsewhere = await open_url(client, other.url)
    assert used_elsewhere.status_code == 410


async def test_expired_link_gets_a_clear_page(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    created = await service.create_link(settings, world["acme"]["id"], "scim", ttl=300)
    frozen_clock.advance(seconds=301)
    page = await open_url(client, created.url)
    assert page.status_code == 410
    assert "This setup link has expired" in page.text
    assert not page.headers.get_list("set-cookie") or not any(
        c.startswith("portal_setup=") for c in page.headers.get_list("set-cookie")
    )
    row = await SetupLink.select(SetupLink.opened_at).where(SetupLink.id == created.id).first()
    assert row["opened_at"] is None


async def test_revoked_link_gets_a_clear_page(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    created = await service.create_link(settings, world["acme"]["id"], "sso")
    assert await service.revoke_link(created.id, organization_id=world["acme"]["id"])
    page = await open_url(client, created.url)
    assert page.status_code == 410 and "This setup link was revoked" in page.text


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t[:20],
        lambda t: t.replace("portal_lnk_", "portal_ses_"),
        lambda t: "x" * 300,
    ],
    ids=["one-character", "truncated", "other-prefix", "oversize"],
)
async def test_tampered_link_is_not_valid(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], mangle: Any
) -> None:
    created = await service.create_link(settings, world["acme"]["id"], "domain_verification")
    page = await client.get("/setup/" + mangle(token_of(created.url)), headers=HTML)
    assert page.status_code == 404
    assert "This setup link is not valid" in page.text
    assert not any(c.startswith("portal_setup=") for c in page.headers.get_list("set-cookie"))
    # The real link still works.
    assert (await open_url(client, created.url)).status_code == 303


async def test_session_lasts_at_most_the_configured_ttl(
    client: httpx.AsyncClient, world: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    await sign_in_link(client, world["acme"])
    assert (await client.get(DOMAINS, headers=HTML)).status_code == 200
    frozen_clock.advance(seconds=3599)
    assert (await client.get(DOMAINS, headers=HTML)).status_code == 200
    frozen_clock.advance(seconds=1)
    gone = await client.get(DOMAINS, headers=HTML)
    assert gone.status_code == 303 and gone.headers["location"].startswith("/login")


async def test_revoking_the_link_ends_its_session(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    link_id = await sign_in_link(client, world["acme"])
    assert (await client.get(DOMAINS, headers=HTML)).status_code == 200
    assert await service.revoke_link(link_id)
    assert (await client.get(DOMAINS, headers=JSON)).status_code == 401
    rows = await service.list_links(world["acme"]["id"])
    assert [r["status"] for r in rows] == ["revoked"]


async def test_revoke_is_scoped_to_the_organization(world: dict[str, Any], settings: Settings) -> None:
    created = await service.create_link(settings, world["acme"]["id"], "sso")
    assert not await service.revoke_link(created.id, organization_id=world["globex"]["id"])
    assert (await service.list_links(world["acme"]["id"]))[0]["status"] == "pending"
    assert await service.list_links(world["globex"]["id"]) == []


async def test_sign_out_ends_the_session(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in_link(client, world["acme"])
    token = await csrf_token(client, DOMAINS)
    out = await client.post("/logout", data={"_csrf_token": token}, headers=HTML)
    assert out.status_code == 200 and "You are signed out" in out.text
    assert any(c.startswith("portal_setup=") and "Max-Age=0" in c for c in out.headers.get_list("set-cookie"))
    client.cookies.clear()
    rows = await service.list_links(world["acme"]["id"])
    assert rows[0]["status"] == "ended"


async def test_changes_are_audited_as_the_it_admin(
    client: httpx.AsyncClient, world: dict[str, Any], settings: Settings
) -> None:
    link_id = await sign_in_link(client, world["acme"])
    token = await csrf_token(client, DOMAINS)
    added = await client.post(
        f"{DOMAINS}", data={"_csrf_token": token, "domain": "acme-example.com"}, headers=HTML
    )
    assert added.status_code == 303, added.text
    rows = await Domain.select().where(Domain.organization == world["acme"]["id"])
    assert [r["domain"] for r in rows] == ["acme-example.com"]
    audit = await AuditEvent.select().where(AuditEvent.action == "domain.added").output(load_json=True)
    assert len(audit) == 1
    assert audit[0]["actor_id"] == link_id and audit[0]["organization_id"] == world["acme"]["id"]
    assert audit[0]["details"]["actor"] == "IT admin via setup link"
    assert service.describe_actor(audit[0]["actor_id"]) == "IT admin via setup link"


@pytest.mark.parametrize("intent", list(service.INTENTS))
async def test_no_link_for_an_organization_without_the_feature(
    settings: Settings, world: dict[str, Any], intent: str
) -> None:
    with pytest.raises(service.InvalidInput) as caught:
        await service.create_link(settings, world["bare"]["id"], intent)
    assert caught.value.field == "intent"
    assert f"(feature {intent})" in caught.value.message
    assert await SetupLink.count() == 0


async def test_organization_without_the_feature_gets_403_naming_it(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    # The feature is switched off after the link was opened.
    await sign_in_link(client, world["acme"])
    await Organization.update({Organization.features: ["sso"]}).where(Organization.id == world["acme"]["id"])
    page = await client.get(DOMAINS, headers=JSON)
    assert page.status_code == 403
    assert page.json()["error"]["missing"] == "domain_verification"


async def test_ids_of_another_organization_are_not_found(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    other = Domain(organization=world["globex"]["id"], domain="globex.test", verification_token="t" * 32)
    await other.save()
    await sign_in_link(client, world["acme"])
    token = await csrf_token(client, DOMAINS)
    response = await client.post(f"{DOMAINS}/{other.id}/delete", data={"_csrf_token": token}, headers=JSON)
    assert response.status_code == 404
    assert await Domain.exists().where(Domain.id == other.id)


async def test_link_session_wins_over_an_account_session_in_the_same_browser(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    await sign_in_link(client, world["acme"], "scim")
    profile = await client.get("/ui/account/profile", headers=JSON)
    assert profile.status_code == 403
    assert profile.json()["error"]["intent"] == "scim"


# --- the hostile matrix row: a setup-link session on every route outside its intent -----------------------


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def every_route(app: Litestar) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not isinstance(handler, HTTPRouteHandler):
                continue
            if route.path.startswith(UNAUTHENTICATED_PREFIXES):
                continue  # health checks, static files, organization brand files: no session is even loaded
            for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                found.append((method, concrete(route.path)))
    return sorted(set(found))


@pytest.mark.parametrize("intent", list(service.INTENTS))
async def test_every_route_outside_the_intent_is_403_naming_it(
    client: httpx.AsyncClient, app: Litestar, world: dict[str, Any], intent: str
) -> None:
    await sign_in_link(client, world["acme"], "domain_verification")
    token = await csrf_token(client, DOMAINS)  # a CSRF token, so that POSTs reach the guard
    client.cookies.delete(service.cookie_name(app.state.settings))
    await sign_in_link(client, world["acme"], intent)
    grant_url = service.INTENTS[intent].url
    routes = every_route(app)
    assert len(routes) > 30
    checked = []
    for method, path in routes:
        if path == grant_url or path.startswith(grant_url + "/") or path.startswith("/setup/"):
            continue
        if path in {"/ui", "/ui/", "/logout", "/brand.css"}:
            continue
        response = await client.request(
            method,
            path,
            headers={**JSON, "x-csrftoken": token},
            data={"_csrf_token": token} if method != "GET" else None,
        )
        assert response.status_code == 403, f"{method} {path}: {response.status_code} {response.text[:200]}"
        error = response.json()["error"]
        assert error["intent"] == intent and error["reason"] == "outside_intent", f"{method} {path}"
        assert f"(intent {intent})" in error["detail"]
        checked.append(path)
    for must in (
        "/ui/organization/settings",
        "/ui/organization/members",
        "/ui/account/profile",
        "/ui/account/security",
        "/ui/organizations/switch",
        "/login",
        "/oauth/authorize",
    ):
        assert any(p.startswith(must) for p in checked), must
    if intent != "domain_verification":
        assert any(p.startswith(DOMAINS) for p in checked)
    page = await client.get("/ui/organization/members", headers=HTML)
    assert page.status_code == 403
    assert f"(intent {intent})" in page.text
    assert "Switch organization" not in page.text


# --- housekeeping and leaks --------------------------------------------------------------------------------


async def test_dead_links_are_purged_after_30_days(
    settings: Settings, world: dict[str, Any], frozen_clock: FrozenClock
) -> None:
    from portal.jobs import InlineQueue, JobContext, registered_crons
    from portal.links.jobs import purge_setup_links

    org = world["acme"]["id"]
    await service.create_link(settings, org, "sso", ttl=600)  # never opened
    revoked = await service.create_link(settings, org, "sso", ttl=600)
    await service.revoke_link(revoked.id)
    used = await service.create_link(settings, org, "sso", ttl=600)
    await service.open_link(settings, token_of(used.url))
    context = JobContext(settings, InlineQueue(settings))
    frozen_clock.advance(days=29)
    fresh = await service.create_link(settings, org, "scim", ttl=600)
    assert await purge_setup_links(context) == 0
    frozen_clock.advance(days=1, hours=2)
    assert await purge_setup_links(context) == 3
    assert [r["id"] for r in await service.list_links(org)] == [fresh.id]
    assert "purge_setup_links" in {c.name for c in registered_crons()}


async def test_the_token_stays_out_of_logs_and_caches(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    created = await service.create_link(settings, world["acme"]["id"], "sso")
    with caplog.at_level("INFO", logger="portal.request"):
        opened = await open_url(client, created.url)
        client.cookies.clear()
        again = await open_url(client, created.url)
    assert opened.headers["cache-control"] == "no-store" and again.headers["cache-control"] == "no-store"
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("portal"))
    assert "GET /setup/<token> 303" in logged and "GET /setup/<token> 410" in logged
    assert token_of(created.url) not in logged

"""The /ui/ shell: home, organization chooser and switcher, session timeouts, sign-out, branding."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
from piccolo.engine.base import Engine

from policy import Feature, PolicyEngine
from portal.auth import accounts, sessions
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Session, User
from portal.web.app import create_app
from tests.conftest import serve

HTML = {"accept": "text/html"}


async def sign_in(client: httpx.AsyncClient, settings: Settings, user_id: str, org_id: str | None) -> str:
    token, session_id = await sessions.create_session(user_id, auth_method="test", organization_id=org_id)
    client.cookies.set(sessions.cookie_name(settings), token)
    return session_id


def csrf_from(html: str) -> str:
    return html.split('name="_csrf_token" value="', 1)[1].split('"', 1)[0]


@pytest.fixture
async def world(db: Engine, policy: PolicyEngine) -> dict[str, Any]:
    acme = await accounts.create_organization("acme", "Acme", features=[f.value for f in Feature])
    globex = await accounts.create_organization("globex", "Globex")
    initech = await accounts.create_organization("initech", "Initech")
    alice = await accounts.create_user("alice@acme.test", given_name="Alice")
    loner = await accounts.create_user("loner@example.test", given_name="Lone")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    await accounts.add_member(globex["id"], alice["id"], ["member"], known_roles=policy.roles)
    return {"acme": acme, "globex": globex, "initech": initech, "alice": alice, "loner": loner}


async def test_home_shows_the_active_organization_and_the_switcher(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    await sign_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    page = await client.get("/ui/", headers=HTML)
    assert page.status_code == 200
    assert "<h1>Acme</h1>" in page.text
    assert 'id="switch-organization"' in page.text
    assert "Globex" in page.text
    assert "Initech" not in page.text  # not a member
    assert 'action="/logout"' in page.text


async def test_switch_organization(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    session_id = await sign_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    token = csrf_from((await client.get("/ui/", headers=HTML)).text)
    response = await client.post(
        "/ui/organizations/switch",
        data={"_csrf_token": token, "organization_id": world["globex"]["id"], "return_to": "//evil.example"},
        headers=HTML,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"
    stored = await Session.select(Session.active_organization).where(Session.id == session_id).first()
    assert stored == {"active_organization": world["globex"]["id"]}
    user = await User.select(User.last_organization).where(User.id == world["alice"]["id"]).first()
    assert user == {"last_organization": world["globex"]["id"]}
    assert "<h1>Globex</h1>" in (await client.get("/ui/", headers=HTML)).text
    events = await AuditEvent.select().where(AuditEvent.action == "organization.switched")
    assert len(events) == 1
    assert events[0]["actor_id"] == world["alice"]["id"]


async def test_switch_to_an_organization_the_user_is_not_in_is_404(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    session_id = await sign_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    token = csrf_from((await client.get("/ui/", headers=HTML)).text)
    response = await client.post(
        "/ui/organizations/switch",
        data={"_csrf_token": token, "organization_id": world["initech"]["id"]},
        headers=HTML,
    )
    assert response.status_code == 404
    stored = await Session.select(Session.active_organization).where(Session.id == session_id).first()
    assert stored == {"active_organization": world["acme"]["id"]}


async def test_switch_without_csrf_token_is_refused(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    session_id = await sign_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    await client.get("/ui/", headers=HTML)
    response = await client.post(
        "/ui/organizations/switch", data={"organization_id": world["globex"]["id"]}, headers=HTML
    )
    assert response.status_code == 403
    stored = await Session.select(Session.active_organization).where(Session.id == session_id).first()
    assert stored == {"active_organization": world["acme"]["id"]}


async def test_chooser_lists_only_my_organizations(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    await sign_in(client, settings, world["alice"]["id"], None)
    home = await client.get("/ui/", headers=HTML)
    assert home.status_code == 303
    assert home.headers["location"] == "/ui/organizations"
    page = await client.get("/ui/organizations", headers=HTML)
    assert "Acme" in page.text and "Globex" in page.text
    assert "Initech" not in page.text


async def test_user_without_organization_sees_only_account_widgets(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    await sign_in(client, settings, world["loner"]["id"], None)
    page = await client.get("/ui/", headers=HTML)
    assert page.status_code == 200
    assert "You are not in an organization yet" in page.text
    assert "/ui/organization/" not in page.text


@pytest.mark.parametrize(
    ("age", "idle", "reason"),
    [
        (timedelta(hours=2), timedelta(minutes=5), None),
        (timedelta(days=8), timedelta(minutes=5), "absolute"),
        (timedelta(hours=30), timedelta(hours=25), "idle"),
    ],
)
async def test_app_default_timeouts_are_enforced_on_every_request(
    client: httpx.AsyncClient,
    settings: Settings,
    world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    age: timedelta,
    idle: timedelta,
    reason: str | None,
) -> None:
    session_id = await sign_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    now = clock.utcnow()
    await Session.update({Session.created_at: now - age, Session.last_seen_at: now - idle}).where(
        Session.id == session_id
    )
    response = await client.get("/ui/", headers=HTML)
    stored = (
        await Session.select(Session.revoke_reason, Session.last_seen_at)
        .where(Session.id == session_id)
        .first()
    )
    assert stored is not None
    if reason is None:
        assert response.status_code == 200
        assert stored["revoke_reason"] is None
        assert stored["last_seen_at"] >= now - timedelta(seconds=5)  # touched (older than a minute)
    else:
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login")
        assert stored["revoke_reason"] == reason


async def test_last_seen_is_written_at_most_once_a_minute(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    session_id = await sign_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    seen = clock.utcnow() - timedelta(seconds=20)
    await Session.update({Session.last_seen_at: seen}).where(Session.id == session_id)
    await client.get("/ui/", headers=HTML)
    stored = await Session.select(Session.last_seen_at).where(Session.id == session_id).first()
    assert stored is not None
    assert abs((stored["last_seen_at"] - seen).total_seconds()) < 0.01


async def test_branding_comes_from_settings(
    settings: Settings, db: Engine, policy: PolicyEngine, world: dict[str, Any]
) -> None:
    branded = msgspec.structs.replace(
        settings, brand_name="Acme Cloud", brand_primary_color="#aa3300", brand_logo_url="/static/x.svg"
    )
    async with serve(create_app(branded, engine=db, policy=policy)) as client:
        css = await client.get("/brand.css")
        assert css.text.strip() == ":root { --brand: #aa3300; }"
        assert css.headers["content-type"].startswith("text/css")
        await sign_in(client, branded, world["alice"]["id"], world["acme"]["id"])
        page = await client.get("/ui/", headers=HTML)
    assert "Acme Cloud" in page.text
    assert 'src="/static/x.svg"' in page.text
    assert "<style" not in page.text and "<script>" not in page.text and " style=" not in page.text


async def test_sign_out_on_https_clears_the_host_cookie_with_its_attributes(
    settings: Settings, db: Engine, policy: PolicyEngine, world: dict[str, Any]
) -> None:
    secure = msgspec.structs.replace(settings, public_url="https://portal.example.com")
    async with serve(create_app(secure, engine=db, policy=policy), "https://portal.example.com") as client:
        session_id = await sign_in(client, secure, world["alice"]["id"], world["acme"]["id"])
        assert sessions.cookie_name(secure) == "__Host-portal_session"
        page = await client.get("/ui/", headers=HTML)
        response = await client.post("/logout", data={"_csrf_token": csrf_from(page.text)}, headers=HTML)
    assert response.status_code == 303
    cleared = [c for c in response.headers.get_list("set-cookie") if c.startswith("__Host-portal_session=")]
    assert len(cleared) == 1
    assert "Secure" in cleared[0] and "Max-Age=0" in cleared[0] and "Path=/" in cleared[0]
    stored = await Session.select(Session.revoke_reason).where(Session.id == session_id).first()
    assert stored == {"revoke_reason": "logout"}

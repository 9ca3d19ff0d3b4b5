"""The one guard: every route declares what it needs, and the status contract of STYLE.md holds."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, get, post
from litestar.handlers import HTTPRouteHandler
from piccolo.engine.base import Engine

from policy import Feature, Permission, PolicyEngine
from portal.auth import accounts, sessions
from portal.core.settings import Settings
from portal.web.app import create_app
from portal.web.guard import require_auth
from portal.web.registry import Section, Widget, WidgetRegistry, discover
from tests.conftest import serve

ALL_FEATURES = [f.value for f in Feature]


@get(
    "/ui/organization/test-sso",
    opt={"permission": Permission.SSO_READ, "feature": Feature.SSO},
    sync_to_thread=False,
)
def sso_page(request: Request[Any, Any, Any]) -> dict[str, str]:
    auth = require_auth(request)
    assert auth.organization is not None
    return {"organization": auth.organization["id"]}


@post(
    "/ui/organization/test-sso",
    opt={"permission": Permission.SSO_MANAGE, "feature": Feature.SSO},
    sync_to_thread=False,
)
def sso_manage() -> dict[str, str]:
    return {"ok": "yes"}


@get("/ui/organization/undeclared", sync_to_thread=False)
def undeclared() -> str:
    return "nobody should see this"


def test_every_route_is_public_or_declares_what_it_needs(settings: Settings, policy: PolicyEngine) -> None:
    """Walk every route of the real app (with every discovered widget): none may be left undeclared."""
    app = create_app(settings, policy=policy, registry=discover())
    offenders = []
    checked = 0
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not isinstance(handler, HTTPRouteHandler) or handler.http_methods == {"OPTIONS"}:
                continue  # automatic OPTIONS answers are refused by the guard anyway
            opt = handler.opt
            checked += 1
            declared = (
                opt.get("public") or opt.get("authenticated") or isinstance(opt.get("permission"), Permission)
            )
            if not declared:
                offenders.append(f"{sorted(handler.http_methods)} {route.path}")
    assert checked >= 6
    assert offenders == []


def test_the_walk_would_catch_an_undeclared_route(settings: Settings, policy: PolicyEngine) -> None:
    widget = Widget("bad", "Bad", "/ui/organization/undeclared", Section.ACCOUNT, handlers=(undeclared,))
    app = create_app(settings, policy=policy, registry=WidgetRegistry([widget]))
    handlers = [
        h
        for r in app.routes
        for h in getattr(r, "route_handlers", ())
        if r.path == "/ui/organization/undeclared"
    ]
    assert handlers
    assert not any(
        h.opt.get("public") or h.opt.get("authenticated") or h.opt.get("permission") for h in handlers
    )


@pytest.fixture
def registry() -> WidgetRegistry:
    return WidgetRegistry(
        [
            Widget(
                "test-sso",
                "Test SSO",
                "/ui/organization/test-sso",
                Section.ORGANIZATION,
                read_permission=Permission.SSO_READ,
                manage_permissions=(Permission.SSO_MANAGE,),
                feature=Feature.SSO,
                handlers=(sso_page, sso_manage),
            ),
            Widget(
                "undeclared",
                "Undeclared",
                "/ui/organization/undeclared",
                Section.ACCOUNT,
                handlers=(undeclared,),
            ),
        ]
    )


async def signed_in(client: httpx.AsyncClient, settings: Settings, user_id: str, org_id: str | None) -> str:
    token, session_id = await sessions.create_session(user_id, auth_method="test", organization_id=org_id)
    client.cookies.set(sessions.cookie_name(settings), token)
    return session_id


@pytest.fixture
async def world(db: Engine, policy: PolicyEngine) -> dict[str, Any]:
    acme = await accounts.create_organization("acme", "Acme", features=ALL_FEATURES)
    globex = await accounts.create_organization("globex", "Globex", features=[])
    alice = await accounts.create_user("alice@acme.test")
    bob = await accounts.create_user("bob@acme.test")
    carol = await accounts.create_user("carol@globex.test")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    await accounts.add_member(acme["id"], bob["id"], ["member"], known_roles=policy.roles)
    await accounts.add_member(globex["id"], carol["id"], ["admin"], known_roles=policy.roles)
    return {"acme": acme, "globex": globex, "alice": alice, "bob": bob, "carol": carol}


HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}


async def test_anonymous_browser_goes_to_login_with_return_to(client: httpx.AsyncClient) -> None:
    response = await client.get("/ui/organization/test-sso?tab=x", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?return_to=/ui/organization/test-sso%3Ftab%3Dx"


async def test_anonymous_api_client_gets_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/ui/organization/test-sso", headers=JSON)
    assert response.status_code == 401
    assert response.json()["error"]["status"] == 401


async def test_undeclared_route_fails_closed_even_when_signed_in(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    await signed_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    response = await client.get("/ui/organization/undeclared", headers=HTML)
    assert response.status_code == 403
    assert "nobody should see this" not in response.text
    assert "declares no permission" in response.text


async def test_admin_with_feature_is_allowed(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    await signed_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    response = await client.get("/ui/organization/test-sso", headers=JSON)
    assert response.status_code == 200
    assert response.json() == {"organization": world["acme"]["id"]}


async def test_member_without_permission_gets_403_naming_it(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    await signed_in(client, settings, world["bob"]["id"], world["acme"]["id"])
    page = await client.get("/ui/organization/test-sso", headers=HTML)
    assert page.status_code == 403
    assert "sk_org_sso_read" in page.text
    api = await client.get("/ui/organization/test-sso", headers=JSON)
    assert api.json()["error"]["reason"] == "missing_permission"
    assert api.json()["error"]["missing"] == "sk_org_sso_read"


async def test_organization_without_the_feature_gets_403_naming_it(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    await signed_in(client, settings, world["carol"]["id"], world["globex"]["id"])
    page = await client.get("/ui/organization/test-sso", headers=HTML)
    assert page.status_code == 403
    assert "Single sign-on is not enabled" in page.text
    api = await client.get("/ui/organization/test-sso", headers=JSON)
    assert api.json()["error"]["reason"] == "feature_disabled"
    assert api.json()["error"]["missing"] == "sso"


async def test_non_member_gets_403_not_member(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    # A session whose active organization is one the user does not belong to (e.g. removed since).
    await signed_in(client, settings, world["carol"]["id"], world["acme"]["id"])
    api = await client.get("/ui/organization/test-sso", headers=JSON)
    assert api.status_code == 403
    assert api.json()["error"]["reason"] == "not_member"


async def test_post_is_guarded_by_the_manage_permission(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], app: Litestar
) -> None:
    await signed_in(client, settings, world["bob"]["id"], world["acme"]["id"])
    page = await client.get("/ui/", headers=HTML)
    token = page.text.split('name="_csrf_token" value="', 1)[1].split('"', 1)[0]
    response = await client.post("/ui/organization/test-sso", data={"_csrf_token": token}, headers=JSON)
    assert response.status_code == 403
    assert response.json()["error"]["missing"] == "sk_org_sso_manage"


async def test_navigation_and_cards_follow_the_same_decisions(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    await signed_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    admin_home = await client.get("/ui/", headers=HTML)
    assert 'href="/ui/organization/test-sso"' in admin_home.text
    client.cookies.clear()
    await signed_in(client, settings, world["bob"]["id"], world["acme"]["id"])
    member_home = await client.get("/ui/", headers=HTML)
    assert member_home.status_code == 200
    assert 'href="/ui/organization/test-sso"' not in member_home.text


async def test_revoked_expired_and_tampered_cookies_lead_to_login(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], db: Engine
) -> None:
    session_id = await signed_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    assert (await client.get("/ui/", headers=HTML)).status_code == 200
    await sessions.revoke(session_id, "user")
    response = await client.get("/ui/", headers=HTML)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")
    client.cookies.set(sessions.cookie_name(settings), "portal_ses_" + "x" * 43)
    assert (await client.get("/ui/", headers=HTML)).status_code == 303
    client.cookies.set(sessions.cookie_name(settings), "%00" * 500)
    assert (await client.get("/ui/", headers=HTML)).status_code == 303


async def test_guard_runs_with_policy_from_app_state(
    settings: Settings, db: Engine, world: dict[str, Any], registry: WidgetRegistry, tmp_path: Any
) -> None:
    """An app-owner policy where `member` also reads SSO is honoured by the guard without code changes."""
    import shutil

    from tests.conftest import POLICY_DIR

    custom = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, custom)
    with (custom / "policy.csv").open("a") as f:
        f.write("p, member, sk_org_sso_read\n")
    app = create_app(settings, engine=db, policy=PolicyEngine.from_dir(custom), registry=registry)
    async with serve(app) as client:
        await signed_in(client, settings, world["bob"]["id"], world["acme"]["id"])
        response = await client.get("/ui/organization/test-sso", headers=JSON)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("idle", "You were signed out because you were inactive for too long."),
        ("absolute", "Your session reached its maximum length and ended."),
        ("user", "This session was signed out from another browser or device."),
    ],
)
async def test_a_session_ended_elsewhere_lands_on_login_with_the_reason(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], reason: str, message: str
) -> None:
    session_id = await signed_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    await sessions.revoke(session_id, reason)
    response = await client.get("/ui/organization/test-sso", headers=HTML)
    assert response.headers["location"] == f"/login?return_to=/ui/organization/test-sso&ended={reason}"
    page = await client.get(response.headers["location"], headers=HTML)
    assert f'<p class="flash flash-ok" role="status">{message}' in page.text


async def test_a_session_that_runs_out_on_this_request_says_so(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any], frozen_clock: Any
) -> None:
    await signed_in(client, settings, world["alice"]["id"], world["acme"]["id"])
    frozen_clock.advance(seconds=settings.session_idle_timeout + 1)
    response = await client.get("/ui/", headers=HTML)
    assert response.headers["location"] == "/login?return_to=/ui/&ended=idle"


async def test_no_explanation_for_unknown_cookies_or_reasons(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    client.cookies.set(sessions.cookie_name(settings), "portal_ses_" + "x" * 43)
    response = await client.get("/ui/", headers=HTML)
    assert response.headers["location"] == "/login?return_to=/ui/"
    page = await client.get("/login?ended=<script>", headers=HTML)
    assert page.status_code == 200 and "flash-ok" not in page.text


async def test_error_pages_keep_the_shell_and_offer_switching_only_with_somewhere_to_go(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    # Bob is a member of Acme only: a 403 there keeps the header and navigation, and no "Switch organization".
    await signed_in(client, settings, world["bob"]["id"], world["acme"]["id"])
    page = await client.get("/ui/organization/test-sso", headers=HTML)
    assert page.status_code == 403
    assert 'aria-label="Portal"' in page.text and "Account menu for" in page.text
    assert "<h1>Not allowed</h1>" in page.text
    assert "Switch organization" not in page.text
    # Alice, also a member of Globex, is offered the switch.
    await accounts.add_member(world["globex"]["id"], world["alice"]["id"], ["member"], known_roles=["member"])
    await signed_in(client, settings, world["alice"]["id"], world["globex"]["id"])
    page = await client.get("/ui/organization/test-sso", headers=HTML)
    assert page.status_code == 403 and "Switch organization" in page.text
    # Anonymous: the plain page.
    client.cookies.clear()
    anonymous = await client.get("/no-such-page", headers=HTML)
    assert anonymous.status_code == 404 and 'aria-label="Portal"' not in anonymous.text

"""The hostile matrix for every /api/v1 route: no key, a wrong key, a revoked key, a key without the route's
scope, a key bound to another organization, another organization's object ids, and success with what is
stored (each change audited with the key's id as its actor)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from litestar import Litestar
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.api import keys
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Domain, Invitation, Membership, Organization, Session, User
from portal.web.app import create_app
from portal.web.registry import WidgetRegistry
from tests.conftest import free_port, serve
from tests.portal.api.support import World, call, make_key, make_world

pytestmark = pytest.mark.db

Check = Callable[[World, httpx.Response], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scope: str
    status: int
    body: Callable[[World], Any] | None = None
    check: Check | None = None
    #: Path ids (besides organization_id) that name another organization's object when swapped.
    object_ids: tuple[str, ...] = ()
    #: What a key bound to the other organization gets: 404, or 403 (creating what a bound key cannot).
    bound_status: int = 404
    query: dict[str, str] = field(default_factory=dict)

    @property
    def writes(self) -> bool:
        return self.method != "GET"

    def url(self, ids: dict[str, str]) -> str:
        path = self.path.format(**ids)
        if self.query:
            path += "?" + "&".join(f"{k}={v.format(**ids)}" for k, v in self.query.items())
        return path

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


async def _org_listed(world: World, response: httpx.Response) -> None:
    ids = {o["id"] for o in response.json()["data"]}
    assert {world.org["id"], world.other["id"]} <= ids


async def _org_created(world: World, response: httpx.Response) -> None:
    assert await Organization.exists().where(Organization.name == "fresh-org")
    assert response.json()["name"] == "fresh-org"


async def _org_renamed(world: World, response: httpx.Response) -> None:
    row = (
        await Organization.select(Organization.display_name).where(Organization.id == world.org["id"]).first()
    )
    assert row["display_name"] == "Renamed Org"


async def _org_deleted(world: World, response: httpx.Response) -> None:
    assert not await Organization.exists().where(Organization.id == world.org["id"])
    assert await Organization.exists().where(Organization.id == world.other["id"])


async def _users_listed(world: World, response: httpx.Response) -> None:
    assert world.ids["user_id"] in {u["id"] for u in response.json()["data"]}


async def _user_created(world: World, response: httpx.Response) -> None:
    assert await User.exists().where(User.email == "fresh@example.test")


def shows(key: str, name: str) -> Check:
    async def check(world: World, response: httpx.Response) -> None:
        assert response.json()[key] == world.ids[name]

    return check


def lists(name: str, key: str = "id") -> Check:
    async def check(world: World, response: httpx.Response) -> None:
        assert world.ids[name] in {item[key] for item in response.json()["data"]}
        assert world.other_ids[name] not in {item[key] for item in response.json()["data"]}

    return check


async def _member_added(world: World, response: httpx.Response) -> None:
    row = (
        await Membership.select()
        .where((Membership.organization == world.org["id"]) & (Membership.user == world.other_ids["user_id"]))
        .first()
        .output(load_json=True)
    )
    assert row is not None and row["roles"] == ["member"] and row["source"] == "api"


async def _roles_changed(world: World, response: httpx.Response) -> None:
    row = (
        await Membership.select(Membership.roles)
        .where(Membership.id == world.ids["membership_id"])
        .first()
        .output(load_json=True)
    )
    assert row["roles"] == ["admin"]


async def _member_removed(world: World, response: httpx.Response) -> None:
    assert not await Membership.exists().where(Membership.id == world.ids["membership_id"])
    assert await Membership.exists().where(Membership.id == world.other_ids["membership_id"])


async def _invited(world: World, response: httpx.Response) -> None:
    row = (
        await Invitation.select()
        .where((Invitation.organization == world.org["id"]) & (Invitation.email == "fresh@example.test"))
        .first()
    )
    assert row is not None and row["invited_by"] is None and len(row["token_hash"]) == 64
    assert [i["email"] for i in response.json()["data"]] == ["fresh@example.test"]


async def _invitation_revoked(world: World, response: httpx.Response) -> None:
    row = (
        await Invitation.select(Invitation.revoked_at)
        .where(Invitation.id == world.ids["invitation_id"])
        .first()
    )
    assert row["revoked_at"] is not None


async def _resent(world: World, response: httpx.Response) -> None:
    events = await AuditEvent.select(AuditEvent.target).where(AuditEvent.action == "invitation.resent")
    assert [e["target"] for e in events] == [world.ids["invitation_id"]]
    assert (
        response.json()["data"]["id"] == world.ids["invitation_id"] and response.json()["delivered"] is True
    )


async def _roles_listed(world: World, response: httpx.Response) -> None:
    roles = {r["key"]: r["permissions"] for r in response.json()["data"]}
    assert set(roles) == {"admin", "member"} and len(roles["admin"]) >= 12
    assert roles["member"] == ["sk_org_settings_read", "sk_org_users_read"]


async def _domain_added(world: World, response: httpx.Response) -> None:
    assert await Domain.exists().where(
        (Domain.organization == world.org["id"]) & (Domain.domain == "fresh.example.org")
    )
    assert response.json()["record_name"] == "_portal-verification.fresh.example.org"


async def _check_requested(world: World, response: httpx.Response) -> None:
    row = await Domain.select(Domain.check_requested_at).where(Domain.id == world.ids["domain_id"]).first()
    assert row["check_requested_at"] is not None


async def _domain_deleted(world: World, response: httpx.Response) -> None:
    assert not await Domain.exists().where(Domain.id == world.ids["domain_id"])


async def _sessions_listed(world: World, response: httpx.Response) -> None:
    assert [s["id"] for s in response.json()["data"]] == [world.ids["session_id"]]


async def _session_revoked(world: World, response: httpx.Response) -> None:
    row = (
        await Session.select(Session.revoked_at, Session.revoke_reason)
        .where(Session.id == world.ids["session_id"])
        .first()
    )
    assert row["revoked_at"] is not None and row["revoke_reason"] == "api"


async def _session_switched(world: World, response: httpx.Response) -> None:
    row = (
        await Session.select(Session.active_organization).where(Session.id == world.ids["session_id"]).first()
    )
    assert row["active_organization"] == world.org["id"]
    assert response.json()["active_organization_id"] == world.org["id"]


async def _events_listed(world: World, response: httpx.Response) -> None:
    events = response.json()["data"]
    assert events and {e["organization_id"] for e in events} == {world.org["id"]}


ORG = "/organizations/{organization_id}"
ROUTES = [
    Route("GET", "/organizations", "organizations:read", 200, check=_org_listed, bound_status=200),
    Route("POST", "/organizations", "organizations:write", 201, body=lambda w: {"name": "fresh-org"}, check=_org_created, bound_status=403),
    Route("GET", ORG, "organizations:read", 200, check=shows("id", "organization_id")),
    Route("PATCH", ORG, "organizations:write", 200, body=lambda w: {"display_name": "Renamed Org"}, check=_org_renamed),
    Route("DELETE", ORG, "organizations:write", 204, check=_org_deleted),
    Route("GET", "/users", "users:read", 200, check=_users_listed, bound_status=200),
    Route("POST", "/users", "users:write", 201, body=lambda w: {"email": "fresh@example.test"}, check=_user_created, bound_status=403),
    Route("GET", "/users/{user_id}", "users:read", 200, check=shows("id", "user_id")),
    Route("GET", ORG + "/memberships", "memberships:read", 200, check=lists("membership_id")),
    Route("POST", ORG + "/memberships", "memberships:write", 201, body=lambda w: {"user_id": w.other_ids["user_id"], "roles": ["member"]}, check=_member_added),
    Route("GET", ORG + "/memberships/{membership_id}", "memberships:read", 200, check=shows("id", "membership_id"), object_ids=("membership_id",)),
    Route("PATCH", ORG + "/memberships/{membership_id}", "memberships:write", 200, body=lambda w: {"roles": ["admin"]}, check=_roles_changed, object_ids=("membership_id",)),
    Route("DELETE", ORG + "/memberships/{membership_id}", "memberships:write", 204, check=_member_removed, object_ids=("membership_id",)),
    Route("GET", ORG + "/invitations", "invitations:read", 200, check=lists("invitation_id")),
    Route("POST", ORG + "/invitations", "invitations:write", 201, body=lambda w: {"emails": ["fresh@example.test"], "roles": ["member"]}, check=_invited),
    Route("DELETE", ORG + "/invitations/{invitation_id}", "invitations:write", 204, check=_invitation_revoked, object_ids=("invitation_id",)),
    Route("POST", ORG + "/invitations/{invitation_id}/resend", "invitations:write", 200, check=_resent, object_ids=("invitation_id",)),
    Route("GET", "/roles", "memberships:read", 200, check=_roles_listed, bound_status=200),
    Route("GET", ORG + "/domains", "domains:read", 200, check=lists("domain_id")),
    Route("POST", ORG + "/domains", "domains:write", 201, body=lambda w: {"domain": "fresh.example.org"}, check=_domain_added),
    Route("GET", ORG + "/domains/{domain_id}", "domains:read", 200, check=shows("id", "domain_id"), object_ids=("domain_id",)),
    Route("POST", ORG + "/domains/{domain_id}/verify", "domains:write", 202, check=_check_requested, object_ids=("domain_id",)),
    Route("DELETE", ORG + "/domains/{domain_id}", "domains:write", 204, check=_domain_deleted, object_ids=("domain_id",)),
    Route("GET", "/sessions", "sessions:read", 200, check=_sessions_listed, query={"user_id": "{user_id}"}),
    Route("DELETE", "/sessions/{session_id}", "sessions:write", 204, check=_session_revoked),
    Route("PUT", "/sessions/{session_id}/active-organization", "sessions:write", 200, body=lambda w: {"organization_id": w.org["id"]}, check=_session_switched),
    Route("GET", "/audit-events", "audit_events:read", 200, check=_events_listed, query={"organization_id": "{organization_id}"}),
]  # fmt: skip


def test_every_api_route_is_in_the_matrix() -> None:
    from portal.api import routes

    declared = {
        (method, path.replace(":str", ""))
        for handler in routes.HANDLERS
        for path in handler.paths
        for method in handler.http_methods
    }
    assert declared == {(r.method, r.path) for r in ROUTES}
    assert {h.opt["scope"] for h in routes.HANDLERS} <= set(keys.SCOPES)


@pytest.fixture
def api_app(settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry) -> Litestar:
    # "Verify now" runs its check in the web process: point DNS at a closed loopback port so it ends fast.
    quiet = msgspec_replace(settings, dns_nameservers=["127.0.0.1"], dns_port=free_port(), dns_timeout=0.2)
    return create_app(quiet, engine=db, policy=policy, registry=registry)


def msgspec_replace(settings: Settings, **changes: Any) -> Settings:
    import msgspec

    return msgspec.structs.replace(settings, **changes)


@pytest.fixture
async def client(api_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(api_app) as test_client:
        yield test_client


@pytest.fixture
async def world(db: Engine) -> World:
    return await make_world()


async def _events() -> int:
    return int(await AuditEvent.count())


async def _send(
    client: httpx.AsyncClient,
    route: Route,
    world: World,
    key: str | None,
    ids: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    body = route.body(world) if route.body else None
    kwargs = {**kwargs}
    if body is not None:
        kwargs["json"] = body
    return await call(client, route.method, route.url(ids or world.ids), key, **kwargs)


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_no_key_wrong_key_and_revoked_key_get_401(
    client: httpx.AsyncClient, world: World, route: Route
) -> None:
    _id, revoked = await make_key(revoked=True)
    before = await _events()
    for key in (None, "portal_sk_" + "x" * 43, "Basic abc", revoked):
        response = await _send(client, route, world, key)
        assert response.status_code == 401, (key, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["status"] == 401
    assert await _events() == before


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_key_without_the_scope_gets_403_naming_it(
    client: httpx.AsyncClient, world: World, route: Route
) -> None:
    _id, key = await make_key([s for s in keys.SCOPES if s != route.scope])
    before = await _events()
    response = await _send(client, route, world, key)
    assert response.status_code == 403, response.text
    assert response.json()["missing_scope"] == route.scope
    assert route.scope in response.json()["detail"]
    assert await _events() == before


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_key_bound_to_another_organization(
    client: httpx.AsyncClient, world: World, route: Route
) -> None:
    _id, key = await make_key(organization=world.other["id"])
    before = await _events()
    response = await _send(client, route, world, key)
    assert response.status_code == route.bound_status, response.text
    if route.bound_status == 200 and route.path != "/roles":
        listed = {item["id"] for item in response.json()["data"]}
        assert not listed & {world.org["id"], world.ids["user_id"]}
    if route.writes:
        assert await _events() == before


@pytest.mark.parametrize("route", [r for r in ROUTES if r.object_ids], ids=str)
async def test_object_ids_of_another_organization_are_404(
    client: httpx.AsyncClient, world: World, route: Route
) -> None:
    _id, key = await make_key()
    before = await _events()
    swapped = {**world.ids, **{name: world.other_ids[name] for name in route.object_ids}}
    response = await _send(client, route, world, key, ids=swapped)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await _events() == before
    # ... and the other organization's object is untouched.
    if route.check and route.writes:
        other = World(org=world.other, other=world.org, ids=world.other_ids, other_ids=world.ids)
        with pytest.raises(AssertionError):
            await route.check(other, response)


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_success_and_what_is_stored(client: httpx.AsyncClient, world: World, route: Route) -> None:
    key_id, key = await make_key()
    response = await _send(client, route, world, key)
    assert response.status_code == route.status, response.text
    assert route.check is not None
    await route.check(world, response)
    if route.writes:
        audited = await AuditEvent.select(AuditEvent.action).where(AuditEvent.actor_id == key_id)
        assert audited, f"{route} wrote no audit event with the key as actor"
    assert response.headers["ratelimit-policy"] == '"per-key";q=600;w=60'

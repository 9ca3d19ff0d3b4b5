"""The hostile matrix (STYLE.md) for every Members route: anonymous, non-member, member without the
permission, another organization's id, success. These widgets need no organization feature: the permission
is what is tested in that row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from policy import Permission
from tests.factories import csrf_token, sign_in
from tests.widgets.members.support import HTML, JSON, post, snapshot


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    permission: Permission
    data: dict[str, Any] | None = None
    #: Status of a successful call by an admin.
    ok: int = 303

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    def url(self, ids: dict[str, str]) -> str:
        return self.path.format(**ids)


ROUTES = [
    Route("GET", "/ui/organization/members", Permission.USERS_READ, ok=200),
    Route(
        "POST",
        "/ui/organization/members/invitations",
        Permission.USERS_INVITE,
        {"emails": "newcomer@acme.test", "roles": "member"},
    ),
    Route("POST", "/ui/organization/members/invitations/{invitation}/resend", Permission.USERS_INVITE),
    Route("POST", "/ui/organization/members/invitations/{invitation}/revoke", Permission.USERS_INVITE),
    Route("GET", "/ui/organization/members/{member}", Permission.USERS_READ, ok=200),
    Route(
        "POST", "/ui/organization/members/{member}/roles", Permission.USERS_ROLE_CHANGE, {"roles": "admin"}
    ),
    Route("GET", "/ui/organization/members/{member}/remove", Permission.USERS_DELETE, ok=200),
    Route("POST", "/ui/organization/members/{member}/remove", Permission.USERS_DELETE, {"confirm": "yes"}),
]
WITH_IDS = [r for r in ROUTES if "{" in r.path]


def acme_ids(world: dict[str, Any]) -> dict[str, str]:
    return {"member": world["m"]["bob"]["id"], "invitation": world["acme_invitation"]}


def globex_ids(world: dict[str, Any]) -> dict[str, str]:
    return {"member": world["m"]["gus"]["id"], "invitation": world["globex_invitation"]}


async def call(
    client: httpx.AsyncClient,
    route: Route,
    ids: dict[str, str],
    headers: dict[str, str],
    token_page: str = "/ui/",
) -> httpx.Response:
    if route.method == "GET":
        return await client.get(route.url(ids), headers=headers)
    return await post(client, route.url(ids), route.data, headers=headers, token_page=token_page)


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_anonymous(client: httpx.AsyncClient, world: dict[str, Any], route: Route) -> None:
    before = await snapshot()
    page = await call(client, route, acme_ids(world), HTML, token_page="/login")
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login?return_to=/ui/organization/members")
    api = await call(client, route, acme_ids(world), JSON, token_page="/login")
    assert api.status_code == 401
    assert await snapshot() == before


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_non_member(client: httpx.AsyncClient, world: dict[str, Any], route: Route) -> None:
    # A session whose active organization is one the user is not in (e.g. removed since).
    await sign_in(client, world["olga"], world["acme"])
    before = await snapshot()
    response = await call(client, route, acme_ids(world), JSON)
    assert response.status_code == 403
    assert response.json()["error"]["reason"] == "not_member"
    assert await snapshot() == before


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_member_without_the_permission(
    client: httpx.AsyncClient, world: dict[str, Any], route: Route
) -> None:
    # `member` reads but manages nothing; `ghost` holds a role the policy does not define (grants nothing).
    who = "ghost" if route.permission is Permission.USERS_READ else "bob"
    await sign_in(client, world[who], world["acme"])
    before = await snapshot()
    response = await call(client, route, acme_ids(world), JSON)
    assert response.status_code == 403
    assert response.json()["error"]["reason"] == "missing_permission"
    assert response.json()["error"]["missing"] == route.permission.value
    page = await call(client, route, acme_ids(world), HTML)
    assert page.status_code == 403
    assert route.permission.value in page.text
    assert await snapshot() == before


@pytest.mark.parametrize("route", WITH_IDS, ids=str)
async def test_another_organizations_id_is_404(
    client: httpx.AsyncClient, world: dict[str, Any], route: Route
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    before = await snapshot()
    response = await call(client, route, globex_ids(world), JSON)
    assert response.status_code == 404
    page = await call(client, route, globex_ids(world), HTML)
    assert page.status_code == 404
    assert "Gus" not in page.text and "gil@globex.test" not in page.text
    assert await snapshot() == before


@pytest.mark.parametrize("route", WITH_IDS, ids=str)
@pytest.mark.parametrize("forged", ["mem_doesnotexist000000000", "inv_x", "' OR 1=1 --", "%00", "x" * 300])
async def test_forged_ids_are_404(
    client: httpx.AsyncClient, world: dict[str, Any], route: Route, forged: str
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    before = await snapshot()
    response = await call(client, route, {"member": forged, "invitation": forged}, JSON)
    assert response.status_code == 404
    assert await snapshot() == before


@pytest.mark.parametrize("route", ROUTES, ids=str)
async def test_success(client: httpx.AsyncClient, world: dict[str, Any], route: Route) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await call(client, route, acme_ids(world), HTML)
    assert response.status_code == route.ok, response.text
    if route.ok == 303:
        assert response.headers["location"].startswith("/ui/organization/members")


async def test_post_without_csrf_token_is_refused(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    await csrf_token(client, "/ui/")
    before = await snapshot()
    response = await client.post(
        f"/ui/organization/members/{world['m']['bob']['id']}/remove", data={}, headers=JSON
    )
    assert response.status_code == 403
    assert await snapshot() == before

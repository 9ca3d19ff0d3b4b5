"""The SCIM widget: the hostile matrix on every route, creating a directory (token shown once), rotation with
overlap, revocation, group → role mapping, the request log and the self-test."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from policy import Feature, PolicyEngine
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Membership, ScimDirectory, ScimToken
from portal.scim import service as scim
from portal.web.app import create_app
from tests.conftest import POLICY_DIR, serve
from tests.factories import make_member, make_org, make_user, sign_in
from tests.portal.scim.conftest import group_body, make_directory, user_body

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
URL = "/ui/organization/scim"


@pytest.fixture
def policy(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    """The shipped policy plus a read-only role for SCIM."""
    directory = tmp_path_factory.mktemp("policy")
    for path in Path(POLICY_DIR).iterdir():
        shutil.copy(path, directory / path.name)
    (directory / "zz_scim.csv").write_text(
        "p, scim_reader, sk_org_scim_read\np, scim_reader, sk_org_users_read\n"
    )
    return PolicyEngine.from_dir(directory)


@pytest.fixture
def app(settings: Settings, db: Any, policy: PolicyEngine) -> Litestar:
    return create_app(settings, engine=db, policy=policy)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as test_client:
        yield test_client


@pytest.fixture
async def world(db: Any) -> dict[str, Any]:
    acme = await make_org("acme", features=[Feature.SCIM])
    globex = await make_org("globex", features=[Feature.SCIM])
    plain = await make_org("plain")
    people = {}
    for key, org, roles in (
        ("alice", acme, ["admin"]),
        ("bob", acme, ["member"]),
        ("rita", acme, ["scim_reader"]),
        ("gina", globex, ["admin"]),
        ("paul", plain, ["admin"]),
    ):
        user = await make_user(f"{key}@{org['name']}.test")
        await make_member(org, user, roles)
        people[key] = user
    directory, token = await make_directory(acme)
    other, other_token = await make_directory(globex, "Globex Entra")
    return {
        "acme": acme,
        "globex": globex,
        "plain": plain,
        **people,
        "directory": directory,
        "token": token,
        "other": other,
        "other_token": other_token,
    }


async def csrf(client: httpx.AsyncClient) -> str:
    page = await client.get("/ui/", headers=HTML)
    match = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert match, page.status_code
    return match.group(1)


async def post(
    client: httpx.AsyncClient, path: str, data: dict[str, Any] | None = None, headers: dict[str, str] = HTML
) -> httpx.Response:
    return await client.post(path, data={"_csrf_token": await csrf(client), **(data or {})}, headers=headers)


def text(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


ROUTES = [
    ("GET", ""),
    ("POST", ""),
    ("GET", "/{id}"),
    ("POST", "/{id}/rotate"),
    ("POST", "/{id}/revoke"),
    ("POST", "/{id}/groups/scg_x"),
    ("POST", "/{id}/self-test"),
]


async def call(client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "GET":
        return await client.get(path, headers=headers)
    return await post(client, path, {"name": "New", "provider": "okta"}, headers)


async def state(world: dict[str, Any]) -> tuple[int, int]:
    """What a refused request must not change: directories and tokens."""
    return await ScimDirectory.count(), await ScimToken.count()


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_anonymous(client: httpx.AsyncClient, world: dict[str, Any], method: str, suffix: str) -> None:
    before = await state(world)
    path = URL + suffix.format(id=world["directory"].id)
    if method == "GET":
        page = await client.get(path, headers=HTML)
        assert page.status_code == 303 and page.headers["location"].startswith(
            "/login?return_to=/ui/organization/scim"
        )
        assert (await client.get(path, headers=JSON)).status_code == 401
    else:
        login = await client.get("/login", headers=HTML)
        token = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
        assert token
        page = await client.post(path, data={"_csrf_token": token.group(1)}, headers=HTML)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert (
            await client.post(path, data={"_csrf_token": token.group(1)}, headers=JSON)
        ).status_code == 401
    assert await state(world) == before


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_non_member(client: httpx.AsyncClient, world: dict[str, Any], method: str, suffix: str) -> None:
    before = await state(world)
    await sign_in(
        client, world["gina"], world["acme"]
    )  # Gina's session points at Acme, where she is no member
    response = await call(client, method, URL + suffix.format(id=world["directory"].id), JSON)
    assert response.status_code == 403 and response.json()["error"]["reason"] == "not_member"
    assert await state(world) == before


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_member_without_the_permission(
    client: httpx.AsyncClient, world: dict[str, Any], method: str, suffix: str
) -> None:
    before = await state(world)
    user, missing = (
        (world["bob"], "sk_org_scim_read") if method == "GET" else (world["rita"], "sk_org_scim_manage")
    )
    await sign_in(client, user, world["acme"])
    response = await call(client, method, URL + suffix.format(id=world["directory"].id), JSON)
    assert response.status_code == 403
    assert response.json()["error"]["missing"] == missing
    page = await call(client, method, URL + suffix.format(id=world["directory"].id), HTML)
    assert page.status_code == 403 and missing in text(page.text)
    assert await state(world) == before


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_organization_without_the_feature(
    client: httpx.AsyncClient, world: dict[str, Any], method: str, suffix: str
) -> None:
    before = await state(world)
    await sign_in(client, world["paul"], world["plain"])
    response = await call(client, method, URL + suffix.format(id=world["directory"].id), JSON)
    assert response.status_code == 403
    assert response.json()["error"]["reason"] == "feature_disabled"
    assert await state(world) == before


@pytest.mark.parametrize(("method", "suffix"), [r for r in ROUTES if "{id}" in r[1]])
async def test_another_organizations_directory_is_not_found(
    client: httpx.AsyncClient, world: dict[str, Any], method: str, suffix: str
) -> None:
    before = await state(world)
    await sign_in(client, world["alice"], world["acme"])
    response = await call(client, method, URL + suffix.format(id=world["other"].id), JSON)
    assert response.status_code == 404
    assert await state(world) == before
    assert world["other"].name not in response.text


async def test_another_directorys_group_is_not_found(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    other_group = await _group(world["other"], "Globex admins")
    await sign_in(client, world["alice"], world["acme"])
    response = await post(
        client, f"{URL}/{world['directory'].id}/groups/{other_group}", {"roles": "admin"}, JSON
    )
    assert response.status_code == 404
    row = (
        await ScimDirectory.select(ScimDirectory.group_roles)
        .where(ScimDirectory.id == world["other"].id)
        .first()
        .output(load_json=True)
    )
    assert row["group_roles"] == {}


async def _group(directory: scim.Directory, name: str, members: list[str] = ()) -> str:  # type: ignore[assignment]
    from portal.core import db

    async with db.write_transaction():
        made = await scim.create_group(directory, group_body(name, list(members)), "http://x")
    return str(made["id"])


async def _user(directory: scim.Directory, email: str) -> str:
    from portal.core import db

    async with db.write_transaction():
        made = await scim.create_user(directory, user_body(email), "http://x", ["admin", "member"])
    return str(made["id"])


async def test_admin_creates_a_directory_and_sees_the_token_once(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    created = await post(client, URL, {"name": "Okta production", "provider": "okta"})
    assert created.status_code == 303 and created.headers["cache-control"] == "no-store"
    assert "portal_scim_" not in created.headers["set-cookie"]  # sealed for the page that shows it
    response = await client.get(created.headers["location"], headers=HTML)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    token = re.search(r'<code id="new-token">(portal_scim_[A-Za-z0-9_-]+)</code>', response.text)
    assert token, "the new token is shown"
    body = text(response.text)
    assert "shown only once" in body and "Okta production" in body
    directory_id = re.search(r"/scim/v2/(scd_[A-Za-z0-9_-]+)", response.text).group(1)  # type: ignore[union-attr]
    assert f"http://127.0.0.1:8000/scim/v2/{directory_id}" in body or "/scim/v2/" + directory_id in body
    assert "Push Groups" in body  # the Okta guide
    stored = await ScimToken.select(ScimToken.token_hash).where(ScimToken.directory == directory_id)
    assert [r["token_hash"] for r in stored] == [scim.ids.hash_secret(token.group(1))]
    # The token works against the SCIM server; the page never shows it again.
    api = await client.get(
        f"/scim/v2/{directory_id}/Users", headers={"authorization": f"Bearer {token.group(1)}"}
    )
    assert api.status_code == 200
    again = await client.get(f"{URL}/{directory_id}", headers=HTML)
    assert token.group(1) not in again.text and "new-token" not in again.text
    listing = text((await client.get(URL, headers=HTML)).text)
    assert "Okta production" in listing


async def test_bad_directory_input_is_shown_next_to_the_field(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    before = await state(world)
    page = await post(client, URL, {"name": "  ", "provider": "okta"})
    assert page.status_code == 400
    assert re.search(r'id="name-error".*Give the directory a name', page.text, re.S)
    assert 'aria-invalid="true"' in page.text
    api = await post(client, URL, {"name": "X", "provider": "myspace"}, JSON)
    assert api.status_code == 400 and api.json()["error"]["fields"][0]["key"] == "provider"
    assert await state(world) == before


async def test_rotate_keeps_the_old_token_for_the_overlap_then_revoke(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    d = world["directory"]
    rotated = await post(client, f"{URL}/{d.id}/rotate")
    assert rotated.status_code == 303
    page = await client.get(rotated.headers["location"], headers=HTML)
    new = re.search(r'<code id="new-token">([^<]+)</code>', page.text).group(1)  # type: ignore[union-attr]
    assert "previous token keeps working for 24 hours" in text(page.text)
    for token in (world["token"], new):
        assert (
            await client.get(f"/scim/v2/{d.id}/Users", headers={"authorization": f"Bearer {token}"})
        ).status_code == 200
    revoked = await post(client, f"{URL}/{d.id}/revoke")
    assert revoked.status_code == 303
    for token in (world["token"], new):
        assert (
            await client.get(f"/scim/v2/{d.id}/Users", headers={"authorization": f"Bearer {token}"})
        ).status_code == 401
    # Globex's directory is untouched.
    ok = await client.get(
        f"/scim/v2/{world['other'].id}/Users", headers={"authorization": f"Bearer {world['other_token']}"}
    )
    assert ok.status_code == 200
    actions = [
        r["action"] for r in await AuditEvent.select(AuditEvent.action).where(AuditEvent.target == d.id)
    ]
    assert "scim.token.rotated" in actions and "scim.token.revoked" in actions


async def test_group_roles_apply_to_members_now(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    d = world["directory"]
    uid = await _user(d, "dana@acme.test")
    gid = await _group(d, "Engineering", [uid])
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(f"{URL}/{d.id}", headers=HTML)
    assert "Engineering" in text(page.text)
    saved = await post(client, f"{URL}/{d.id}/groups/{gid}", {"roles": ["admin", "member"]})
    assert saved.status_code == 303
    user = await make_user_lookup("dana@acme.test")
    member = (
        await Membership.select(Membership.roles)
        .where((Membership.user == user) & (Membership.organization == world["acme"]["id"]))
        .first()
        .output(load_json=True)
    )
    assert member["roles"] == ["admin", "member"]
    bad = await post(client, f"{URL}/{d.id}/groups/{gid}", {"roles": "emperor"})
    assert bad.status_code == 303
    follow = await client.get(bad.headers["location"], headers=HTML)
    assert "not defined in the policy" in text(follow.text)


async def make_user_lookup(email: str) -> str:
    from portal.core.tables import User

    row = await User.select(User.id).where(User.email == email).first()
    return str(row["id"])


async def test_reader_sees_counts_and_requests_without_forms(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    d = world["directory"]
    await _user(d, "erin@acme.test")
    await client.get(
        f"/scim/v2/{d.id}/Users?filter=userName%20eq%20%22erin%40acme.test%22",
        headers={"authorization": f"Bearer {world['token']}"},
    )
    await client.post(
        f"/scim/v2/{d.id}/Users", content=b"{not json", headers={"authorization": f"Bearer {world['token']}"}
    )
    await sign_in(client, world["rita"], world["acme"])
    page = await client.get(f"{URL}/{d.id}", headers=HTML)
    assert page.status_code == 200
    body = text(page.text)
    assert re.search(r'data-count="users">1<', page.text) and re.search(r'data-count="groups">0<', page.text)
    assert (
        'GET /Users?filter=userName eq "erin@acme.test"' in body and "400" in body and "invalidSyntax" in body
    )
    assert "{not json" not in page.text
    assert (
        "Rotate token" not in page.text
        and "Run self-test" not in page.text
        and "<form"
        not in page.text.split("</header>", 1)[-1]
        .split("<footer", 1)[0]
        .replace('form method="post" action="/logout"', "")
    )


async def test_self_test_runs_a_round_trip_and_shows_each_step(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    d = world["directory"]
    await sign_in(client, world["alice"], world["acme"])
    response = await post(client, f"{URL}/{d.id}/self-test")
    assert response.status_code == 303
    page = await client.get(response.headers["location"], headers=HTML)
    body = text(page.text)
    assert "Self-test passed" in body
    for step in ("Service provider configuration", "Create a test user", "Delete it", "It is gone"):
        assert f"✓ {step}" in body
    assert "POST /Users → 201" in body
    assert await scim.counts(d.id) == (0, 0)  # the test user is gone
    assert await ScimToken.count().where(ScimToken.directory == d.id) == 1  # its own token too


async def test_widget_is_listed_only_with_the_feature(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    assert 'href="/ui/organization/scim"' in (await client.get("/ui/", headers=HTML)).text
    await sign_in(client, world["paul"], world["plain"])
    assert 'href="/ui/organization/scim"' not in (await client.get("/ui/", headers=HTML)).text

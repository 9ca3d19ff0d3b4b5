"""Bad input gets a SCIM error naming what is wrong (status, scimType, detail), stores nothing, never a 500."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from policy import Feature
from portal.core import clock
from portal.core.tables import ScimGroup, ScimRequest, ScimToken, ScimUser
from portal.scim import service
from tests.factories import make_org
from tests.portal.scim.conftest import Scim, group_body, make_directory, patch_body, user_body

ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def problem(response: Any, status: int, scim_type: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status)
    assert body.get("scimType") == scim_type
    return body


async def test_malformed_json(scim: Scim) -> None:
    response = await scim.http.post(scim.base + "/Users", content=b'{"userName": ', headers=scim.headers())
    assert "not valid JSON" in problem(response, 400, "invalidSyntax")["detail"]
    response = await scim.http.post(scim.base + "/Users", content=b"[1, 2]", headers=scim.headers())
    problem(response, 400, "invalidSyntax")
    assert await ScimUser.count() == 0


async def test_wrong_schemas(scim: Scim) -> None:
    body = user_body("a@example.com", schemas=["urn:ietf:params:scim:schemas:core:2.0:Group"])
    assert "not one of a User" in problem(await scim.post("/Users", body), 400, "invalidValue")["detail"]
    body = user_body("a@example.com", schemas=[])
    assert "must include" in problem(await scim.post("/Users", body), 400, "invalidValue")["detail"]
    patch = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "Operations": []}
    created = (await scim.post("/Users", user_body("b@example.com"))).json()
    assert (
        "PatchOp"
        in problem(await scim.patch(f"/Users/{created['id']}", patch), 400, "invalidValue")["detail"]
    )
    assert await ScimUser.count() == 1


async def test_unknown_attributes_and_types(scim: Scim) -> None:
    detail = problem(
        await scim.post("/Users", user_body("a@example.com", favouriteColour="blue")), 400, "invalidValue"
    )
    assert "favouriteColour" in detail["detail"]
    detail = problem(
        await scim.post("/Users", user_body("a@example.com", name={"nick": "x"})), 400, "invalidValue"
    )
    assert "name.nick" in detail["detail"]
    detail = problem(
        await scim.post("/Users", user_body("a@example.com", active="maybe")), 400, "invalidValue"
    )
    assert "active" in detail["detail"]
    detail = problem(await scim.post("/Users", user_body("a@example.com", userName="")), 400, "invalidValue")
    assert "userName is required" in detail["detail"]
    created = (await scim.post("/Users", user_body("b@example.com"))).json()
    bad_path = patch_body({"op": "replace", "path": "shoeSize", "value": "9"})
    assert (
        "shoeSize"
        in problem(await scim.patch(f"/Users/{created['id']}", bad_path), 400, "invalidPath")["detail"]
    )
    bad_op = patch_body({"op": "merge", "path": "title", "value": "x"})
    assert (
        "op must be"
        in problem(await scim.patch(f"/Users/{created['id']}", bad_op), 400, "invalidValue")["detail"]
    )
    read_only = patch_body({"op": "replace", "path": "id", "value": "x"})
    problem(await scim.patch(f"/Users/{created['id']}", read_only), 400, "mutability")
    assert await ScimUser.count() == 1


@pytest.mark.parametrize(
    ("expression", "position"),
    [
        ("userName eq", 11),
        ('userName regex "x"', 9),
        ('userName eq "x" and', 19),
        ('(userName eq "x"', 16),
        ('userName eq "x" %', 16),
        ('emails[type eq "work"', 21),
    ],
)
async def test_invalid_filters_name_the_position(scim: Scim, expression: str, position: int) -> None:
    body = problem(await scim.get("/Users", filter=expression), 400, "invalidFilter")
    assert f"position {position}" in body["detail"]


async def test_filters_on_unknown_or_mistyped_attributes(scim: Scim) -> None:
    assert (
        "shoeSize"
        in problem(await scim.get("/Users", filter='shoeSize eq "9"'), 400, "invalidFilter")["detail"]
    )
    assert (
        "boolean"
        in problem(await scim.get("/Users", filter='active eq "yes"'), 400, "invalidFilter")["detail"]
    )
    problem(await scim.get("/Users", filter='meta.created gt "yesterday"'), 400, "invalidFilter")
    problem(await scim.get("/Groups", filter='userName eq "x"'), 400, "invalidFilter")


async def test_pages_are_capped_and_bad_numbers_refused(scim: Scim) -> None:
    for n in range(3):
        await scim.post("/Users", user_body(f"u{n}@example.com"))
    page = (await scim.get("/Users", count="1000000")).json()
    assert page["itemsPerPage"] == 3 and page["totalResults"] == 3
    page = (await scim.get("/Users", count="2", startIndex="2")).json()
    assert (page["startIndex"], page["itemsPerPage"]) == (2, 2)
    assert (await scim.get("/Users", count="-5")).json()["Resources"] == []
    problem(await scim.get("/Users", count="many"), 400, "invalidValue")
    problem(await scim.get("/Users", sortOrder="sideways"), 400, "invalidValue")
    problem(await scim.get("/Users", sortBy="shoeSize"), 400, "invalidValue")


async def test_page_size_cap_follows_the_setting(app: Any, settings: Any) -> None:
    capped = type(settings)(
        **{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "scim_max_page_size": 2}
    )
    from portal.web.app import create_app
    from tests.conftest import serve

    org = await make_org(features=[Feature.SCIM])
    directory, token = await make_directory(org)
    for n in range(3):
        await ScimUser(
            directory=directory.id,
            organization_id=org["id"],
            user_name=f"u{n}",
            user_name_key=f"u{n}",
            resource={"userName": f"u{n}"},
        ).save()
    async with serve(create_app(capped, engine=app.state.engine, policy=app.state.policy)) as http:
        response = await http.get(
            f"/scim/v2/{directory.id}/Users?count=50", headers={"authorization": f"Bearer {token}"}
        )
        assert response.json()["itemsPerPage"] == 2 and response.json()["totalResults"] == 3
        config = (
            await http.get(
                f"/scim/v2/{directory.id}/ServiceProviderConfig", headers={"authorization": f"Bearer {token}"}
            )
        ).json()
        assert config["filter"]["maxResults"] == 2


async def test_tokens(scim: Scim) -> None:
    other_org = await make_org(features=[Feature.SCIM])
    other, other_token = await make_directory(other_org)
    for token in ("", "portal_scim_wrong", other_token):
        response = await scim.http.get(scim.base + "/Users", headers={"authorization": f"Bearer {token}"})
        problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    problem(await scim.http.get(scim.base + "/Users"), 401)
    problem(await scim.http.get(scim.base + "/Users", headers={"authorization": f"Basic {scim.token}"}), 401)
    # Rotation: the old token works during the overlap, then stops; the new one works.
    new = await service.issue_token(scim.directory, overlap=timedelta(hours=24), actor_id=None)
    ok = await scim.http.get(scim.base + "/Users", headers=scim.headers(scim.token))
    assert ok.status_code == 200
    assert (await scim.http.get(scim.base + "/Users", headers=scim.headers(new))).status_code == 200
    await ScimToken.update({ScimToken.expires_at: clock.utcnow() - timedelta(seconds=1)}).where(
        (ScimToken.token_hash != service.ids.hash_secret(new)) & (ScimToken.directory == scim.directory.id)
    )
    problem(await scim.http.get(scim.base + "/Users", headers=scim.headers(scim.token)), 401)
    assert (await scim.http.get(scim.base + "/Users", headers=scim.headers(new))).status_code == 200
    # Stored hashed only.
    stored = [r["token_hash"] for r in await ScimToken.select(ScimToken.token_hash)]
    assert new not in stored and service.ids.hash_secret(new) in stored
    await service.revoke_tokens(scim.directory, actor_id=None)
    problem(await scim.http.get(scim.base + "/Users", headers=scim.headers(new)), 401)
    # The other directory's token still opens the other directory only.
    assert (
        await scim.http.get(f"/scim/v2/{other.id}/Users", headers=scim.headers(other_token))
    ).status_code == 200


async def test_other_directory_ids_are_404(scim: Scim) -> None:
    other_org = await make_org(features=[Feature.SCIM])
    other, other_token = await make_directory(other_org)
    theirs = (
        await scim.http.post(
            f"/scim/v2/{other.id}/Users", json=user_body("x@example.com"), headers=scim.headers(other_token)
        )
    ).json()
    their_group = (
        await scim.http.post(
            f"/scim/v2/{other.id}/Groups", json=group_body("G"), headers=scim.headers(other_token)
        )
    ).json()
    for call in (
        scim.get(f"/Users/{theirs['id']}"),
        scim.put(f"/Users/{theirs['id']}", user_body("x@example.com")),
        scim.patch(f"/Users/{theirs['id']}", patch_body({"op": "replace", "path": "title", "value": "x"})),
        scim.delete(f"/Users/{theirs['id']}"),
        scim.get(f"/Groups/{their_group['id']}"),
        scim.delete(f"/Groups/{their_group['id']}"),
    ):
        problem(await call, 404)
    # Their user cannot be made a member of our group either.
    response = await scim.post("/Groups", group_body("Ours", [theirs["id"]]))
    assert theirs["id"] in problem(response, 400, "invalidValue")["detail"]
    assert (await scim.get("/Users")).json()["totalResults"] == 0
    assert await ScimUser.count().where(ScimUser.id == theirs["id"]) == 1
    problem(await scim.get("/Nothing"), 404)


async def test_uniqueness(scim: Scim) -> None:
    assert (await scim.post("/Users", user_body("a@example.com"))).status_code == 201
    body = problem(await scim.post("/Users", user_body("A@EXAMPLE.com")), 409, "uniqueness")
    assert "a@example.com" in body["detail"]
    second = (await scim.post("/Users", user_body("b@example.com"))).json()
    problem(await scim.put(f"/Users/{second['id']}", user_body("a@example.com")), 409, "uniqueness")
    problem(
        await scim.patch(
            f"/Users/{second['id']}",
            patch_body({"op": "replace", "path": "userName", "value": "A@example.com"}),
        ),
        409,
        "uniqueness",
    )
    assert (await scim.post("/Groups", group_body("Admins"))).status_code == 201
    problem(await scim.post("/Groups", group_body("admins")), 409, "uniqueness")
    assert await ScimGroup.count() == 1
    # Concurrent creates of one userName: one wins, the others get 409 (the unique key decides), no 500.
    responses = await asyncio.gather(*(scim.post("/Users", user_body("race@example.com")) for _ in range(5)))
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409, 409]


async def test_etags(scim: Scim) -> None:
    created = await scim.post("/Users", user_body("a@example.com"))
    etag = created.headers["etag"]
    assert etag == created.json()["meta"]["version"] == 'W/"1"'
    uid = created.json()["id"]
    stale = await scim.patch(
        f"/Users/{uid}", patch_body({"op": "replace", "path": "title", "value": "x"}), **{"if-match": 'W/"0"'}
    )
    problem(stale, 412)
    fresh = await scim.patch(
        f"/Users/{uid}", patch_body({"op": "replace", "path": "title", "value": "x"}), **{"if-match": etag}
    )
    assert fresh.status_code == 200 and fresh.headers["etag"] == 'W/"2"'
    not_modified = await scim.http.get(
        scim.base + f"/Users/{uid}", headers=scim.headers(**{"if-none-match": 'W/"2"'})
    )
    assert not_modified.status_code == 304
    problem(await scim.delete(f"/Users/{uid}", **{"if-match": etag}), 412)
    assert (await scim.delete(f"/Users/{uid}", **{"if-match": 'W/"2"'})).status_code == 204


async def test_rate_limit_per_directory(app: Any, settings: Any, frozen_clock: Any) -> None:
    """One-second fixed windows: on a frozen clock the requests all fall in one (a slow run crossed a window edge)."""
    from portal.web.app import create_app
    from tests.conftest import serve

    limited = type(settings)(
        **{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "scim_rate_limit": 3}
    )
    org = await make_org(features=[Feature.SCIM])
    directory, token = await make_directory(org)
    other, other_token = await make_directory(org, "Other")
    async with serve(create_app(limited, engine=app.state.engine, policy=app.state.policy)) as http:
        codes = [
            (
                await http.get(f"/scim/v2/{directory.id}/Users", headers={"authorization": f"Bearer {token}"})
            ).status_code
            for _ in range(5)
        ]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        refused = await http.get(
            f"/scim/v2/{directory.id}/Users", headers={"authorization": f"Bearer {token}"}
        )
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        ok = await http.get(f"/scim/v2/{other.id}/Users", headers={"authorization": f"Bearer {other_token}"})
        assert ok.status_code == 200


async def test_requests_are_logged_without_bodies(scim: Scim) -> None:
    await scim.post("/Users", user_body("secret-person@example.com"))
    await scim.get("/Users", filter="bogus")
    rows = (
        await ScimRequest.select()
        .where(ScimRequest.directory_id == scim.directory.id)
        .order_by(ScimRequest.id)
    )
    assert [(r["method"], r["status"]) for r in rows] == [("POST", 201), ("GET", 400)]
    assert rows[0]["path"] == "/Users" and rows[1]["detail"] == "invalidFilter"
    assert all("secret-person" not in r["path"] + r["detail"] for r in rows)

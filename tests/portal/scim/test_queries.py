"""Filters, sorting, paging and attribute selection over HTTP, on both engines; concurrent group PATCHes."""

from __future__ import annotations

import asyncio

import pytest

from portal.core.tables import Membership, ScimGroupMember
from portal.scim import filters
from tests.portal.scim.conftest import Scim, group_body, patch_body, user_body

ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@pytest.fixture
async def people(scim: Scim) -> dict[str, str]:
    bodies = {
        "barbara": user_body(
            "BJensen@example.com",
            externalId="X1",
            title="Tour Guide",
            emails=[
                {"value": "bjensen@example.com", "type": "work", "primary": True},
                {"value": "babs@home.org", "type": "home"},
            ],
            **{
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENT],
                ENT: {"employeeNumber": "701"},
            },
        ),
        "john": user_body(
            "jsmith@example.com",
            name={"givenName": "John", "familyName": "Smith"},
            emails=[{"value": "js@other.com", "type": "work"}],
            active=False,
        ),
        "nobody": {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "nobody"},
    }
    out = {}
    for key, body in bodies.items():
        response = await scim.post("/Users", body)
        assert response.status_code == 201, response.text
        out[key] = response.json()["id"]
    return out


CASES = [
    ('userName eq "bjensen@EXAMPLE.com"', {"barbara"}),
    ('userName ne "bjensen@example.com"', {"john", "nobody"}),
    ('externalId eq "x1"', set()),  # caseExact
    ('externalId eq "X1"', {"barbara"}),
    ('externalId ne "X1"', {"john", "nobody"}),  # absent counts as "not equal"
    ('title ne "tour guide"', {"john", "nobody"}),
    ('not (title eq "Tour Guide")', {"john", "nobody"}),
    ("title pr", {"barbara"}),
    ("not (title pr)", {"john", "nobody"}),
    ('name.givenName sw "BAR"', {"barbara"}),
    ('name.familyName ew "SEN"', {"barbara"}),
    ('name.familyName co "mit"', {"john"}),
    ('emails[type eq "work" and value co "EXAMPLE"]', {"barbara"}),
    ('emails[type eq "home"]', {"barbara"}),
    ('emails co "other.com"', {"john"}),
    ('emails.value ew ".com"', {"barbara", "john"}),
    ("emails[primary eq true]", {"barbara"}),
    ('userName sw "j" or userName eq "nobody" and active eq false', {"john"}),
    ('(userName sw "j" or userName eq "nobody") and title pr', set()),
    ('userName eq "nobody" or userName sw "j" and active eq true', {"nobody"}),
    (f'{ENT}:employeeNumber eq "701"', {"barbara"}),
    ("active eq false", {"john"}),
    ('userName gt "c"', {"john", "nobody"}),
    ('meta.created gt "2000-01-01T00:00:00Z"', {"barbara", "john", "nobody"}),
    ('meta.lastModified lt "2000-01-01T00:00:00Z"', set()),
    ('meta.resourceType eq "User"', {"barbara", "john", "nobody"}),
    ("name pr", {"barbara", "john"}),
    ('USERNAME EQ "nobody"', {"nobody"}),
    ('urn:ietf:params:scim:schemas:core:2.0:User:userName eq "nobody"', {"nobody"}),
    ('title eq "Tour \\"Guide\\""', set()),
]


@pytest.mark.parametrize(("expression", "expected"), CASES)
async def test_filters(scim: Scim, people: dict[str, str], expression: str, expected: set[str]) -> None:
    response = await scim.get("/Users", filter=expression)
    assert response.status_code == 200, response.text
    names = {key for key, uid in people.items() if uid in {r["id"] for r in response.json()["Resources"]}}
    assert names == expected
    assert response.json()["totalResults"] == len(expected)


def test_filter_values_are_parameters() -> None:
    sql = filters.to_sql('userName eq "x\' OR 1=1 --" or title co "%"', filters.USER_TARGET, postgres=True)
    assert "OR 1=1" not in sql.text and "%" not in sql.text
    assert "x' or 1=1 --" in sql.values and "%" in sql.values


async def test_sort_page_and_attributes(scim: Scim, people: dict[str, str]) -> None:
    page = (await scim.get("/Users", sortBy="userName", sortOrder="descending")).json()
    assert [r["userName"] for r in page["Resources"]] == [
        "nobody",
        "jsmith@example.com",
        "BJensen@example.com",
    ]
    page = (await scim.get("/Users", sortBy="name.givenName")).json()
    assert [r["userName"] for r in page["Resources"]][-1] == "nobody"  # absent values sort last
    page = (await scim.get("/Users", sortBy="userName", startIndex="2", count="1")).json()
    assert (page["totalResults"], page["itemsPerPage"], page["Resources"][0]["userName"]) == (
        3,
        1,
        "jsmith@example.com",
    )
    one = (await scim.get(f"/Users/{people['barbara']}", attributes="userName,name.givenName")).json()
    assert set(one) == {"schemas", "id", "userName", "name"} and one["name"] == {"givenName": "Barbara"}
    one = (
        await scim.get(f"/Users/{people['barbara']}", excludedAttributes=f"emails,{ENT}:employeeNumber,id")
    ).json()
    assert "emails" not in one and one["id"] == people["barbara"] and "employeeNumber" not in one.get(ENT, {})
    searched = await scim.post(
        "/Users/.search",
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": 'userName eq "nobody"',
            "attributes": ["userName"],
        },
    )
    assert searched.json()["Resources"] == [
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": people["nobody"],
            "userName": "nobody",
        }
    ]


async def test_group_filters_and_members(scim: Scim, people: dict[str, str]) -> None:
    group = (await scim.post("/Groups", group_body("Guides", [people["barbara"], people["john"]]))).json()
    await scim.post("/Groups", group_body("Empty"))
    found = (await scim.get("/Groups", filter=f'members[value eq "{people["john"]}"]')).json()
    assert [g["displayName"] for g in found["Resources"]] == ["Guides"]
    found = (await scim.get("/Groups", filter='displayName eq "guides"', excludedAttributes="members")).json()
    assert found["totalResults"] == 1 and "members" not in found["Resources"][0]
    user = (await scim.get(f"/Users/{people['john']}")).json()
    assert user["groups"] == [
        {"value": group["id"], "$ref": group["meta"]["location"], "display": "Guides", "type": "direct"}
    ]
    found = (await scim.get("/Users", filter=f'groups.value eq "{group["id"]}"')).json()
    assert found["totalResults"] == 2


async def test_concurrent_patches_of_one_group_lose_no_member(scim: Scim) -> None:
    ids = []
    for n in range(40):
        ids.append((await scim.post("/Users", user_body(f"member{n}@example.com"))).json()["id"])
    group = (await scim.post("/Groups", group_body("Everyone", ids[:10]))).json()

    async def add(uid: str) -> int:
        body = patch_body({"op": "Add", "path": "members", "value": [{"value": uid}]})
        return (await scim.patch(f"/Groups/{group['id']}", body)).status_code

    async def remove(uid: str) -> int:
        body = patch_body({"op": "remove", "path": f'members[value eq "{uid}"]'})
        return (await scim.patch(f"/Groups/{group['id']}", body)).status_code

    codes = await asyncio.gather(*(add(uid) for uid in ids[10:]), *(remove(uid) for uid in ids[:5]))
    assert set(codes) == {200}
    stored = {
        r["member"]
        for r in await ScimGroupMember.select(ScimGroupMember.member).where(
            ScimGroupMember.group == group["id"]
        )
    }
    assert stored == set(ids[5:])
    final = (await scim.get(f"/Groups/{group['id']}")).json()
    assert len(final["members"]) == 35 and final["meta"]["version"] == f'W/"{1 + 35}"'


async def test_group_role_mapping_applies_on_every_change(scim: Scim, people: dict[str, str]) -> None:
    from portal.scim import service

    group = (await scim.post("/Groups", group_body("Admins", [people["barbara"]]))).json()
    directory = await service.get_directory(scim.directory.id)
    assert directory is not None
    await service.set_group_roles(directory, group["id"], ["admin"], ["admin", "member"], actor_id=None)

    async def roles(key: str) -> list[str]:
        from portal.core.tables import ScimUser

        row = await ScimUser.select(ScimUser.membership_id).where(ScimUser.id == people[key]).first()
        member = (
            await Membership.select(Membership.roles)
            .where(Membership.id == row["membership_id"])
            .first()
            .output(load_json=True)
        )
        return list(member["roles"])

    assert await roles("barbara") == ["admin", "member"]
    assert await roles("john") == ["member"]
    await scim.patch(
        f"/Groups/{group['id']}",
        patch_body({"op": "add", "path": "members", "value": [{"value": people["john"]}]}),
    )
    assert await roles("john") == ["admin", "member"]
    await scim.put(f"/Groups/{group['id']}", group_body("Admins", [people["john"]]))
    assert (await roles("barbara"), await roles("john")) == (["member"], ["admin", "member"])
    await scim.delete(f"/Groups/{group['id']}")
    assert await roles("john") == ["member"]

from __future__ import annotations

import pytest

from tests.portal.scim.conftest import Scim, group_body, patch_body, user_body

pytestmark = pytest.mark.db


async def test_create_get_patch_list(scim: Scim) -> None:
    r = await scim.post("/Users", user_body("bjensen@example.com"))
    assert r.status_code == 201, r.text
    uid = r.json()["id"]
    r = await scim.get(f"/Users/{uid}")
    assert r.status_code == 200, r.text
    r = await scim.get("/Users", filter='userName eq "BJENSEN@example.com"')
    assert r.json()["totalResults"] == 1, r.text
    r = await scim.patch(f"/Users/{uid}", patch_body({"op": "Replace", "value": {"active": "False"}}))
    assert r.status_code == 200, r.text
    assert r.json()["active"] is False
    r = await scim.post("/Groups", group_body("Eng", [uid]))
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    r = await scim.patch(f"/Groups/{gid}", patch_body({"op": "remove", "path": f'members[value eq "{uid}"]'}))
    assert r.status_code == 200, r.text
    assert "members" not in r.json()
    for p in ("/ServiceProviderConfig", "/Schemas", "/ResourceTypes"):
        assert (await scim.get(p)).status_code == 200

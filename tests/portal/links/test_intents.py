"""Setup links for the SSO and SCIM intents open their widgets, and an IT admin there can do the job: create a
connection or a directory, audited as the link (there is no account behind it)."""

from __future__ import annotations

from typing import Any

import httpx

from portal.core.tables import AuditEvent, ScimDirectory, SsoConnection
from portal.links import service
from tests.factories import csrf_token, sign_in_link

HTML = {"accept": "text/html"}


async def test_an_sso_link_creates_a_connection_and_nothing_else(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    link_id = await sign_in_link(client, world["acme"], "sso")
    page = await client.get("/ui/organization/sso", headers=HTML)
    assert page.status_code == 200, page.text
    token = await csrf_token(client, "/ui/organization/sso")
    made = await client.post(
        "/ui/organization/sso",
        data={"_csrf_token": token, "guide": "okta", "name": "Acme Okta"},
        headers=HTML,
    )
    assert made.status_code == 303, made.text
    [row] = await SsoConnection.select().where(SsoConnection.organization == world["acme"]["id"])
    assert row["name"] == "Acme Okta"
    [event] = (
        await AuditEvent.select().where(AuditEvent.action == "sso.connection.created").output(load_json=True)
    )
    assert (
        event["actor_id"] == link_id
        and service.describe_actor(event["actor_id"]) == "IT admin via setup link"
    )
    # The SCIM widget is outside the intent.
    assert (await client.get("/ui/organization/scim", headers=HTML)).status_code == 403


async def test_a_scim_link_creates_a_directory_and_nothing_else(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    link_id = await sign_in_link(client, world["acme"], "scim")
    assert (await client.get("/ui/organization/scim", headers=HTML)).status_code == 200
    token = await csrf_token(client, "/ui/organization/scim")
    made = await client.post(
        "/ui/organization/scim",
        data={"_csrf_token": token, "name": "Okta production", "provider": "okta"},
        headers=HTML,
    )
    assert made.status_code == 303, made.text
    [row] = await ScimDirectory.select().where(ScimDirectory.organization == world["acme"]["id"])
    assert row["name"] == "Okta production"
    events = (
        await AuditEvent.select().where(AuditEvent.action == "scim.directory.created").output(load_json=True)
    )
    assert [e["actor_id"] for e in events] == [link_id]
    assert (await client.get("/ui/organization/sso", headers=HTML)).status_code == 403

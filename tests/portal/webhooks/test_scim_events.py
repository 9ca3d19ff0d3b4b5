"""SCIM provisioning is announced to the app: scim.user.* and scim.group.* webhook events, written with the
change; the SCIM widget's self-test user (created and deleted at once) is not announced."""

from __future__ import annotations

from typing import Any

from piccolo.engine.base import Engine

from portal.core import db
from portal.core.settings import Settings
from portal.core.tables import WebhookEvent
from portal.scim import service as scim
from portal.webhooks import service as webhooks
from portal.webhooks.events import SELF_TEST_PREFIX
from tests.factories import make_org
from tests.portal.scim.conftest import group_body, make_directory, user_body


async def _types(organization_id: str) -> list[tuple[str, Any]]:
    rows = await (
        WebhookEvent.select(WebhookEvent.type, WebhookEvent.data)
        .where(WebhookEvent.organization_id == organization_id)
        .order_by(WebhookEvent.created_at)
        .output(load_json=True)
    )
    return [(r["type"], r["data"]) for r in rows if r["type"].startswith("scim.")]


async def test_scim_changes_become_webhook_events(db: Engine, settings: Settings) -> None:
    org = await make_org(features=["scim"])
    async with db_transaction():
        await webhooks.create_endpoint(settings, "https://93.184.215.14/hooks", organization_id=org["id"])
    directory, _token = await make_directory(org)
    async with db_transaction():
        user = await scim.create_user(directory, user_body("jo@example.test"), "http://x", ["member"])
    async with db_transaction():
        await scim.create_group(directory, group_body("Engineers", [str(user["id"])]), "http://x")
    events = await _types(org["id"])
    assert [t for t, _ in events] == ["scim.user.created", "scim.group.created"]
    assert events[0][1]["target"] == user["id"] and events[0][1]["userName"] == "jo@example.test"


async def test_the_self_test_user_is_not_announced(db: Engine, settings: Settings) -> None:
    org = await make_org(features=["scim"])
    directory, _token = await make_directory(org)
    async with db_transaction():
        made = await scim.create_user(directory, user_body(f"{SELF_TEST_PREFIX}ab12"), "http://x", ["member"])
    async with db_transaction():
        await scim.delete_user(directory, str(made["id"]))
    assert await _types(org["id"]) == []


def db_transaction() -> Any:
    return db.write_transaction()

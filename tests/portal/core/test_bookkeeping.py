"""Cheap bookkeeping writes (issues 13, 15): batched audit rows, unlogged tables on PostgreSQL, and gc.freeze
at start-up."""

from __future__ import annotations

import gc

import msgspec
import pytest
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.auth import accounts
from portal.core import db as portal_db
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, WebhookEvent
from portal.web.app import create_app
from portal.web.registry import WidgetRegistry
from tests.conftest import serve
from tests.factories import make_org


@pytest.mark.db
async def test_a_batched_block_writes_its_audit_rows_and_events_at_its_end(db: Engine) -> None:
    org = await make_org("acme")
    before = await AuditEvent.count()
    async with portal_db.write_transaction(), accounts.batched_audit():
        await accounts.audit("user.created", target="usr_1", details={"source": "scim"})
        await accounts.audit("member.added", organization_id=org["id"], target="usr_1", details={"roles": []})
        assert await AuditEvent.count() == before  # nothing written yet
    rows = await AuditEvent.select().where(AuditEvent.target == "usr_1").order_by(AuditEvent.at)
    assert [row["action"] for row in rows] == ["user.created", "member.added"]
    types = [
        row["type"]
        for row in await WebhookEvent.select().where(
            WebhookEvent.type.is_in(["user.created", "membership.created"])
        )
    ]
    assert sorted(types) == ["membership.created", "user.created"]


@pytest.mark.db
async def test_a_batched_block_that_fails_writes_nothing(db: Engine) -> None:
    before = await AuditEvent.count(), await WebhookEvent.count()

    async def change() -> None:
        async with portal_db.write_transaction(), accounts.batched_audit():
            await accounts.audit("user.created", target="usr_2", details={})
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await change()
    assert (await AuditEvent.count(), await WebhookEvent.count()) == before


@pytest.mark.postgres
async def test_bookkeeping_tables_are_unlogged_on_postgresql(db: Engine) -> None:
    rows = await AuditEvent.raw(
        "SELECT relname, relpersistence FROM pg_class WHERE relname IN ('scim_request', 'rate_counter')"
    )
    assert {row["relname"]: bytes(row["relpersistence"]).decode() for row in rows} == {
        "scim_request": "u",
        "rate_counter": "u",
    }


async def test_the_app_freezes_its_start_up_objects_when_asked(
    settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry
) -> None:
    app = create_app(
        msgspec.structs.replace(settings, gc_freeze=True), engine=db, policy=policy, registry=registry
    )
    try:
        async with serve(app) as client:
            assert gc.get_freeze_count() > 0
            assert (await client.get("/healthz")).status_code == 200
    finally:
        gc.unfreeze()
    quiet = create_app(settings, engine=db, policy=policy, registry=registry)
    async with serve(quiet):
        assert gc.get_freeze_count() == 0

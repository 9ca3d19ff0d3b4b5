"""Migrations apply from empty on the engine under test, are idempotent, and create the unique keys."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from piccolo.apps.migrations.tables import Migration
from piccolo.engine.base import Engine

from portal.core import db
from portal.core import migrations as migrations_package
from portal.core.migrate import migrate
from portal.core.tables import TABLES, Domain, Membership, Organization, User
from tests.conftest import ENGINE_KIND, database_name, recreate_postgres_database, with_database_name

pytestmark = pytest.mark.db


@pytest.fixture
async def fresh_engine(tmp_path: object, engine: Engine, database_url: str) -> object:
    if ENGINE_KIND == "postgres":
        url = with_database_name(database_url, database_name(database_url) + "_migrations")
        await recreate_postgres_database(url)
    else:
        url = f"sqlite:///{tmp_path}/fresh.sqlite3"  # type: ignore[str-bytes-safe]
    fresh = db.bind(db.make_engine(url))
    await db.start(fresh)
    yield fresh
    await db.stop(fresh)
    db.bind(engine)
    if ENGINE_KIND == "postgres":
        await recreate_postgres_database(url, drop_only=True)


async def test_migrations_apply_from_empty_and_twice(fresh_engine: Engine) -> None:
    first = await migrate()
    folder = Path(migrations_package.__file__).parent
    count = len(list(folder.glob("portal_*.py")))
    assert count >= 3
    assert f"Running {count} migrations" in first
    for table in TABLES:
        assert await table.table_exists().run(), table._meta.tablename
    second = await migrate()
    assert "No migrations need to be run" in second


async def test_unique_keys_hold(fresh_engine: Engine) -> None:
    await migrate()
    org = Organization(name="acme", display_name="Acme")
    await org.save()
    user = User(email="a@acme.test")
    await user.save()
    await Membership(organization=org.id, user=user.id, roles=["admin"]).save()
    with pytest.raises(Exception, match=r"(?i)unique"):
        await Membership(organization=org.id, user=user.id, roles=["member"]).save()
    with pytest.raises(Exception, match=r"(?i)unique"):
        await User(email="a@acme.test").save()
    other = Organization(name="other", display_name="Other")
    await other.save()
    await Domain(
        organization=org.id, domain="acme.test", verification_token="t1", verified_domain="acme.test"
    ).save()
    with pytest.raises(Exception, match=r"(?i)unique"):
        await Domain(
            organization=other.id, domain="acme.test", verification_token="t2", verified_domain="acme.test"
        ).save()


async def test_ids_are_prefixed_and_times_are_utc(db: Engine) -> None:
    org = Organization(name="acme", display_name="Acme")
    await org.save()
    row = await Organization.select().where(Organization.id == org.id).first()
    assert row is not None
    assert row["id"].startswith("org_") and len(row["id"]) > 20
    assert row["created_at"].tzinfo is not None
    assert row["created_at"].utcoffset().total_seconds() == 0


# --- upgrading a database made by an earlier release ---------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
async def layout1_engine(tmp_path: Path, engine: Engine, database_url: str) -> AsyncIterator[Engine]:
    """A database created by the migrations as they stood before the host was regrouped (issue 9: files
    under ``src/portal/migrations/``, importing ``portal.ids``), with ``portal demo`` and a second
    organization in it: recorded as a dump by that release's ``portal migrate``."""
    if ENGINE_KIND == "postgres":
        url = with_database_name(database_url, database_name(database_url) + "_layout1")
        await recreate_postgres_database(url)
        connection = await asyncpg.connect(url)
        try:
            await connection.execute((FIXTURES / "layout1.postgres.sql").read_text())
        finally:
            await connection.close()
    else:
        path = tmp_path / "layout1.sqlite3"
        with sqlite3.connect(path) as connection:
            connection.executescript((FIXTURES / "layout1.sqlite.sql").read_text())
        url = f"sqlite:///{path}"
    old = db.bind(db.make_engine(url))
    await db.start(old)
    yield old
    await db.stop(old)
    db.bind(engine)
    if ENGINE_KIND == "postgres":
        await recreate_postgres_database(url, drop_only=True)


async def test_a_database_of_the_previous_layout_upgrades_with_portal_migrate(layout1_engine: Engine) -> None:
    recorded = await Migration.select(Migration.name).where(Migration.app_name == "portal")
    before = {row["name"] for row in recorded}
    assert len(before) == 9  # what the dump's release had run

    await migrate()

    after = {
        row["name"] for row in await Migration.select(Migration.name).where(Migration.app_name == "portal")
    }
    ids = set()
    for path in Path(migrations_package.__file__).parent.glob("portal_*.py"):
        text = path.read_text()
        ids.add(text.split('\nID = "', 1)[1].split('"', 1)[0])
    # Names and order unchanged: every migration the old release ran is still known by its id, and the ones
    # added since then have run now.
    assert before <= ids
    assert after == ids
    assert "No migrations need to be run" in await migrate()
    # The data survived, and the upgraded database works for the app's own queries.
    alice = await User.select().where(User.email == "alice@acme.test").first()
    assert alice is not None
    acme = await Organization.select().where(Organization.name == "acme").first()
    assert acme is not None
    membership = (
        await Membership.select(Membership.roles)
        .where((Membership.user == alice["id"]) & (Membership.organization == acme["id"]))
        .output(load_json=True)
        .first()
    )
    assert membership is not None and membership["roles"] == ["admin"]
    globex = await Organization.select().where(Organization.name == "globex").output(load_json=True).first()
    assert globex is not None and sorted(globex["features"]) == ["domain_verification", "sso"]
    carol = User(email="dave@globex.test")
    await carol.save()
    await Membership(organization=globex["id"], user=carol.id, roles=["member"]).save()
    assert await Membership.count().where(Membership.organization == globex["id"]) == 2

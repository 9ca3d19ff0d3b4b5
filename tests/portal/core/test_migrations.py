"""Migrations apply from empty on the engine under test, are idempotent, and create the unique keys."""

from __future__ import annotations

from pathlib import Path

import pytest
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

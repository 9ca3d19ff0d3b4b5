"""Issue 13: on PostgreSQL, the bookkeeping tables written on every SCIM or API request are unlogged: a
commit that wrote only to them does not wait for a WAL flush. A crash empties them (the last requests shown
in the SCIM widget, the current rate-limit windows), and they are not copied to streaming replicas; nothing
else depends on them. SQLite: nothing to do."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder
from piccolo.engine.postgres import PostgresEngine

ID = "2026-12-03T18:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "unlogged bookkeeping tables"

TABLES = ("scim_request", "rate_counter")


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)

    async def apply() -> None:
        engine = engine_finder()
        assert engine is not None
        if isinstance(engine, PostgresEngine):
            for table in TABLES:
                await engine.run_ddl(f"ALTER TABLE {table} SET UNLOGGED")

    manager.add_raw(apply)
    return manager

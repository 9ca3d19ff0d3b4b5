"""Session policy: sessions by active organization, and room for HOT updates of session rows (PostgreSQL).

- ``portal_session_active_organization``: the policy preview counts, and a policy change revokes, the
  sessions of one organization; deleting an organization sets their ``active_organization`` to NULL.
- ``fillfactor = 85`` on PostgreSQL: a session row is updated once a minute (``last_seen_at``) and once
  more when it is revoked. With free room on its page, and no index on the columns that change, those are
  HOT updates that leave every index alone. This is also why there is no partial index "WHERE revoked_at IS
  NULL": it makes every revocation rewrite all the table's indexes, which measured 7 to 10 s instead of about
  4 s for the sweep benchmark (bench/sessions.py). The sweep reads the whole table instead.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder
from piccolo.engine.postgres import PostgresEngine

ID = "2026-11-22T06:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "session policy: sessions by organization, fillfactor"


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)

    async def create() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl(
            "CREATE INDEX IF NOT EXISTS portal_session_active_organization "
            "ON portal_session (active_organization)"
        )
        if isinstance(engine, PostgresEngine):
            await engine.run_ddl("ALTER TABLE portal_session SET (fillfactor = 85)")

    async def drop() -> None:
        engine = engine_finder()
        assert engine is not None
        await engine.run_ddl("DROP INDEX IF EXISTS portal_session_active_organization")
        if isinstance(engine, PostgresEngine):
            await engine.run_ddl("ALTER TABLE portal_session RESET (fillfactor)")

    manager.add_raw(create)
    manager.add_raw_backwards(drop)
    return manager

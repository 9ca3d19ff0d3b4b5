"""Composite unique keys and lookup indexes, as plain SQL: SQLite cannot ADD CONSTRAINT to a table."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-22T00:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "unique keys and indexes"

INDEXES = (
    'CREATE UNIQUE INDEX IF NOT EXISTS membership_org_user ON membership (organization, "user")',
    'CREATE INDEX IF NOT EXISTS membership_user ON membership ("user")',
    "CREATE UNIQUE INDEX IF NOT EXISTS domain_org_domain ON domain (organization, domain)",
    "CREATE INDEX IF NOT EXISTS domain_status ON domain (status)",
    "CREATE INDEX IF NOT EXISTS invitation_org ON invitation (organization)",
    'CREATE INDEX IF NOT EXISTS portal_session_user ON portal_session ("user")',
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)

    async def create_indexes() -> None:
        engine = engine_finder()
        assert engine is not None
        for statement in INDEXES:
            await engine.run_ddl(statement)

    manager.add_raw(create_indexes)
    return manager

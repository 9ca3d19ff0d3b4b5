"""Domains widget: existing domains' window starts when they were added; indexes for the checks."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-22T05:00:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "domain verification backfill and indexes"

STATEMENTS = (
    "UPDATE domain SET pending_since = created_at WHERE pending_since IS NULL",
    # The scheduled check walks pending domains in id order (keyset pages).
    "CREATE INDEX IF NOT EXISTS domain_status_id ON domain (status, id)",
    # When a domain is verified, the other organizations' pending claims to it are failed.
    "CREATE INDEX IF NOT EXISTS domain_domain ON domain (domain)",
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)

    async def apply() -> None:
        engine = engine_finder()
        assert engine is not None
        for statement in STATEMENTS:
            await engine.run_ddl(statement)

    manager.add_raw(apply)
    return manager

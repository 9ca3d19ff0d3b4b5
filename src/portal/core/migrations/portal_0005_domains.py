"""Domains widget: the start of a domain's verification window and when a check was last asked for.

The backfill of existing rows and the indexes the checks use are in portal_0005_domains_indexes (piccolo
runs a migration's raw steps before its new columns exist).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-22T05:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "domain verification window and check requests"

NULLABLE_TIMESTAMP = {
    "default": None,
    "null": True,
    "primary_key": False,
    "unique": False,
    "index": False,
    "index_method": IndexMethod.btree,
    "choices": None,
    "db_column_name": None,
    "secret": False,
}


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)
    for name in ("pending_since", "check_requested_at"):
        manager.add_column(
            table_class_name="Domain",
            tablename="domain",
            column_name=name,
            db_column_name=name,
            column_class_name="Timestamptz",
            column_class=Timestamptz,
            params=dict(NULLABLE_TIMESTAMP),
            schema=None,
        )
    return manager

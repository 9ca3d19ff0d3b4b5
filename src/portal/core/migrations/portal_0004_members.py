"""Members widget: membership copies of the user's email and name keys; the invite form's submission id.

Indexes, the PostgreSQL collation of these columns and the backfill of existing rows are in
portal_0004_members_indexes (piccolo runs a migration's raw steps before its new columns exist).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-22T04:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "membership search keys, invitation submission id"


def _varchar(length: int, *, null: bool = False) -> dict[str, object]:
    return {
        "length": length,
        "default": None if null else "",
        "null": null,
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
    for name, length in (("email", 320), ("sort_key", 320), ("family_key", 100)):
        manager.add_column(
            table_class_name="Membership",
            tablename="membership",
            column_name=name,
            db_column_name=name,
            column_class_name="Varchar",
            column_class=Varchar,
            params=_varchar(length),
            schema=None,
        )
    manager.add_column(
        table_class_name="Invitation",
        tablename="invitation",
        column_name="submission_id",
        db_column_name="submission_id",
        column_class_name="Varchar",
        column_class=Varchar,
        params=_varchar(64, null=True),
        schema=None,
    )
    return manager

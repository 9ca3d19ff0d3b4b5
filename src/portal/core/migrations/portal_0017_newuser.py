"""Issue 16 (what a new user trips over): invitation_replaced_token, the links a resend replaced."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete, OnUpdate
from piccolo.columns.column_types import ForeignKey, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod
from piccolo.table import Table

from portal.core.ids import invitation_id


class Invitation(Table, tablename="invitation", schema=None):
    id = Varchar(length=40, default=invitation_id, null=False, primary_key=True)


ID = "2026-12-03T17:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "newuser"


def _params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "null": False,
        "primary_key": False,
        "unique": False,
        "index": False,
        "index_method": IndexMethod.btree,
        "choices": None,
        "db_column_name": None,
        "secret": False,
    }
    params.update(overrides)
    return params


COLUMNS: list[tuple[str, type[Any], dict[str, Any]]] = [
    ("token_hash", Varchar, _params(length=64, default="", primary_key=True)),
    (
        "invitation",
        ForeignKey,
        _params(
            references=Invitation,
            on_delete=OnDelete.cascade,
            on_update=OnUpdate.cascade,
            target_column=None,
            index=True,
        ),
    ),
    ("replaced_at", Timestamptz, _params(default=TimestamptzNow())),
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)
    manager.add_table(
        class_name="InvitationReplacedToken", tablename="invitation_replaced_token", schema=None, columns=None
    )
    for name, column_class, params in COLUMNS:
        manager.add_column(
            table_class_name="InvitationReplacedToken",
            tablename="invitation_replaced_token",
            column_name=name,
            db_column_name=name,
            column_class_name=column_class.__name__,
            column_class=column_class,
            params=params,
            schema=None,
        )
    return manager

"""Security widget: the passkey table. WebAuthn challenges reuse login_challenge (new purposes, no new columns)."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete, OnUpdate
from piccolo.columns.column_types import JSON, BigInt, Boolean, ForeignKey, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod
from piccolo.table import Table

from portal.core.ids import passkey_id, user_id


class User(Table, tablename="portal_user", schema=None):
    id = Varchar(
        length=40,
        default=user_id,
        null=False,
        primary_key=True,
        unique=False,
        index=False,
        index_method=IndexMethod.btree,
        choices=None,
        db_column_name=None,
        secret=False,
    )


ID = "2026-11-22T07:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "passkeys"


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
    ("id", Varchar, _params(length=40, default=passkey_id, primary_key=True)),
    (
        "user",
        ForeignKey,
        _params(
            references=User,
            on_delete=OnDelete.cascade,
            on_update=OnUpdate.cascade,
            target_column=None,
            index=True,
        ),
    ),
    ("credential_id", Varchar, _params(length=1400, default="", unique=True)),
    ("public_key", Text, _params(default="")),
    ("sign_count", BigInt, _params(default=0)),
    ("transports", JSON, _params(default="[]")),
    ("backup_eligible", Boolean, _params(default=False)),
    ("backed_up", Boolean, _params(default=False)),
    ("aaguid", Varchar, _params(length=36, default="")),
    ("name", Varchar, _params(length=64, default="")),
    ("created_at", Timestamptz, _params(default=TimestamptzNow())),
    ("last_used_at", Timestamptz, _params(default=None, null=True)),
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)
    manager.add_table(class_name="Passkey", tablename="passkey", schema=None, columns=None)
    for name, column_class, params in COLUMNS:
        manager.add_column(
            table_class_name="Passkey",
            tablename="passkey",
            column_name=name,
            db_column_name=name,
            column_class_name=column_class.__name__,
            column_class=column_class,
            params=params,
            schema=None,
        )
    return manager

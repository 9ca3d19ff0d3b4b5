"""Issue 11 (management API): api_key, api_idempotency."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import JSON, BigSerial, Integer, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod

from portal.core.tables import api_key_id

ID = "2026-12-03T14:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "api"


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


TABLES: list[tuple[str, str, list[tuple[str, type[Any], dict[str, Any]]]]] = [
    (
        "ApiKey",
        "api_key",
        [
            ("id", Varchar, _params(length=40, default=api_key_id, primary_key=True)),
            ("name", Varchar, _params(length=200, default="")),
            ("prefix", Varchar, _params(length=24, default="")),
            ("token_hash", Varchar, _params(length=64, default="", unique=True)),
            ("scopes", JSON, _params(default="[]")),
            ("organization_id", Varchar, _params(length=40, default=None, null=True)),
            ("created_at", Timestamptz, _params(default=TimestamptzNow())),
            ("last_used_at", Timestamptz, _params(default=None, null=True)),
            ("revoked_at", Timestamptz, _params(default=None, null=True)),
        ],
    ),
    (
        "ApiIdempotency",
        "api_idempotency",
        [
            ("id", BigSerial, _params(primary_key=True)),
            ("scope_key", Varchar, _params(length=300, default="", unique=True)),
            ("request_hash", Varchar, _params(length=64, default="")),
            ("status", Integer, _params(default=None, null=True)),
            ("response_body", Text, _params(default="")),
            ("response_headers", JSON, _params(default="{}")),
            ("created_at", Timestamptz, _params(default=TimestamptzNow())),
            ("expires_at", Timestamptz, _params(default=TimestamptzNow(), index=True)),
        ],
    ),
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)
    for class_name, tablename, columns in TABLES:
        manager.add_table(class_name=class_name, tablename=tablename, schema=None, columns=None)
        for name, column_class, params in columns:
            manager.add_column(
                table_class_name=class_name,
                tablename=tablename,
                column_name=name,
                db_column_name=name,
                column_class_name=column_class.__name__,
                column_class=column_class,
                params=params,
                schema=None,
            )
    return manager

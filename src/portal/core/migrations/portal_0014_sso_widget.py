"""Issue 12 (SSO widget): the SP signing key and certificate of a connection, and its last test."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Boolean, Text, Timestamptz
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-03T15:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "sso widget"


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
    ("sp_private_key", Text, _params(default="")),
    ("sp_certificate", Text, _params(default="")),
    ("tested_at", Timestamptz, _params(default=None, null=True)),
    ("test_ok", Boolean, _params(default=False)),
]


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)
    for name, column_class, params in COLUMNS:
        manager.add_column(
            table_class_name="SsoConnection",
            tablename="sso_connection",
            column_name=name,
            db_column_name=name,
            column_class_name=column_class.__name__,
            column_class=column_class,
            params=params,
            schema=None,
        )
    return manager

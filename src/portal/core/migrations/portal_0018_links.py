"""Issue 14 (admin portal links, branding): setup_link, organization_brand."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete, OnUpdate
from piccolo.columns.column_types import BigSerial, ForeignKey, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod
from piccolo.table import Table

from portal.core.ids import organization_id, setup_link_id


class Organization(Table, tablename="organization", schema=None):
    id = Varchar(length=40, default=organization_id, null=False, primary_key=True)


ID = "2026-12-03T17:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "links"


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


def _fk(references: type[Table], **overrides: Any) -> dict[str, Any]:
    return _params(
        references=references,
        on_delete=OnDelete.cascade,
        on_update=OnUpdate.cascade,
        target_column=None,
        **overrides,
    )


def _when(null: bool = True, **overrides: Any) -> tuple[type[Any], dict[str, Any]]:
    if null:
        return Timestamptz, _params(default=None, null=True, **overrides)
    return Timestamptz, _params(default=TimestamptzNow(), **overrides)


TABLES: list[tuple[str, str, list[tuple[str, type[Any], dict[str, Any]]]]] = [
    (
        "SetupLink",
        "setup_link",
        [
            ("id", Varchar, _params(length=40, default=setup_link_id, primary_key=True)),
            ("organization", ForeignKey, _fk(Organization, index=True)),
            ("intent", Varchar, _params(length=30, default="")),
            ("token_hash", Varchar, _params(length=64, default="", unique=True)),
            ("created_by", Varchar, _params(length=200, default="")),
            ("created_at", *_when(null=False)),
            ("expires_at", Timestamptz, _params(default=TimestamptzNow(), index=True)),
            ("opened_at", *_when()),
            ("revoked_at", *_when()),
            ("session_token_hash", Varchar, _params(length=64, default=None, null=True, unique=True)),
            ("session_expires_at", *_when()),
            ("session_ended_at", *_when()),
            ("ip", Varchar, _params(length=45, default="")),
            ("user_agent", Varchar, _params(length=500, default="")),
        ],
    ),
    (
        "OrganizationBrand",
        "organization_brand",
        [
            ("id", BigSerial, _params(primary_key=True)),
            ("organization", ForeignKey, _fk(Organization, unique=True)),
            ("primary_color", Varchar, _params(length=7, default=None, null=True)),
            ("logo", Text, _params(default=None, null=True)),
            ("logo_type", Varchar, _params(length=40, default=None, null=True)),
            ("logo_sha256", Varchar, _params(length=64, default=None, null=True)),
            ("updated_at", *_when(null=False)),
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

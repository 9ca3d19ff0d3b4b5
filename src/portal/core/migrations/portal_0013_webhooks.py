"""Issue 11 (webhooks): webhook_endpoint, webhook_event (the outbox), webhook_delivery, webhook_attempt."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete, OnUpdate
from piccolo.columns.column_types import (
    JSON,
    BigSerial,
    Boolean,
    ForeignKey,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod
from piccolo.table import Table

from portal.core.tables import webhook_delivery_id, webhook_endpoint_id, webhook_event_id


class WebhookEndpoint(Table, tablename="webhook_endpoint", schema=None):
    id = Varchar(length=40, default=webhook_endpoint_id, null=False, primary_key=True)


class WebhookEvent(Table, tablename="webhook_event", schema=None):
    id = Varchar(length=40, default=webhook_event_id, null=False, primary_key=True)


class WebhookDelivery(Table, tablename="webhook_delivery", schema=None):
    id = Varchar(length=40, default=webhook_delivery_id, null=False, primary_key=True)


ID = "2026-12-03T14:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "webhooks"


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
        "WebhookEndpoint",
        "webhook_endpoint",
        [
            ("id", Varchar, _params(length=40, default=webhook_endpoint_id, primary_key=True)),
            ("url", Varchar, _params(length=2000, default="")),
            ("description", Varchar, _params(length=200, default="")),
            ("event_types", JSON, _params(default="[]")),
            ("organization_id", Varchar, _params(length=40, default=None, null=True)),
            ("secret", Text, _params(default="")),
            ("enabled", Boolean, _params(default=True)),
            ("disabled_reason", Varchar, _params(length=40, default=None, null=True)),
            ("disabled_at", *_when()),
            ("failing_since", *_when()),
            ("created_at", *_when(null=False)),
            ("updated_at", *_when(null=False)),
        ],
    ),
    (
        "WebhookEvent",
        "webhook_event",
        [
            ("id", Varchar, _params(length=40, default=webhook_event_id, primary_key=True)),
            ("type", Varchar, _params(length=60, default="")),
            ("organization_id", Varchar, _params(length=40, default=None, null=True, index=True)),
            ("data", JSON, _params(default="{}")),
            ("created_at", *_when(null=False, index=True)),
        ],
    ),
    (
        "WebhookDelivery",
        "webhook_delivery",
        [
            ("id", Varchar, _params(length=40, default=webhook_delivery_id, primary_key=True)),
            ("event", ForeignKey, _fk(WebhookEvent)),
            ("endpoint", ForeignKey, _fk(WebhookEndpoint, index=True)),
            ("status", Varchar, _params(length=20, default="pending")),
            ("attempts", Integer, _params(default=0)),
            ("key", Varchar, _params(length=100, default="", unique=True)),
            ("next_attempt_at", *_when(index=True)),
            ("lease_until", *_when()),
            ("delivered_at", *_when()),
            ("last_status_code", Integer, _params(default=None, null=True)),
            ("last_duration_ms", Integer, _params(default=None, null=True)),
            ("last_error", Text, _params(default="")),
            ("created_at", *_when(null=False)),
        ],
    ),
    (
        "WebhookAttempt",
        "webhook_attempt",
        [
            ("id", BigSerial, _params(primary_key=True)),
            ("delivery", ForeignKey, _fk(WebhookDelivery, index=True)),
            ("at", *_when(null=False)),
            ("status", Varchar, _params(length=20, default="")),
            ("status_code", Integer, _params(default=None, null=True)),
            ("duration_ms", Integer, _params(default=0)),
            ("error", Text, _params(default="")),
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

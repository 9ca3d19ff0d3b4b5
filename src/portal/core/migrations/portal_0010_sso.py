"""Issue 12 (SSO): sso_connection, sso_request, sso_assertion; organization.sso_enforced."""

from typing import Any

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete, OnUpdate
from piccolo.columns.column_types import JSON, BigSerial, Boolean, ForeignKey, Text, Timestamptz, Varchar
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.indexes import IndexMethod
from piccolo.table import Table

from portal.core.ids import organization_id, sso_connection_id, sso_request_id


class Organization(Table, tablename="organization", schema=None):
    id = Varchar(length=40, default=organization_id, null=False, primary_key=True)


class SsoConnection(Table, tablename="sso_connection", schema=None):
    id = Varchar(length=40, default=sso_connection_id, null=False, primary_key=True)


ID = "2026-12-03T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "sso"


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


def _text(length: int | None = None) -> tuple[type[Any], dict[str, Any]]:
    if length is None:
        return Text, _params(default="")
    return Varchar, _params(length=length, default="")


def _when(null: bool = True, **overrides: Any) -> tuple[type[Any], dict[str, Any]]:
    if null:
        return Timestamptz, _params(default=None, null=True, **overrides)
    return Timestamptz, _params(default=TimestamptzNow(), **overrides)


TABLES: list[tuple[str, str, list[tuple[str, type[Any], dict[str, Any]]]]] = [
    (
        "SsoConnection",
        "sso_connection",
        [
            ("id", Varchar, _params(length=40, default=sso_connection_id, primary_key=True)),
            ("organization", ForeignKey, _fk(Organization, index=True)),
            ("protocol", *_text(10)),
            ("provider", Varchar, _params(length=40, default="saml")),
            ("name", *_text(200)),
            ("status", Varchar, _params(length=20, default="draft")),
            ("idp_entity_id", *_text(1000)),
            ("idp_sso_url", *_text(2000)),
            ("idp_certificate", *_text()),
            ("idp_metadata_url", *_text(2000)),
            ("metadata_fetched_at", *_when()),
            ("metadata_error", Text, _params(default=None, null=True)),
            ("certificate_expires_at", *_when()),
            ("certificate_warned_at", *_when()),
            ("sign_requests", Boolean, _params(default=False)),
            ("allow_idp_initiated", Boolean, _params(default=False)),
            ("allow_other_domains", Boolean, _params(default=False)),
            ("oidc_issuer", *_text(2000)),
            ("oidc_client_id", *_text(500)),
            ("oidc_client_secret", *_text()),
            ("attribute_mapping", JSON, _params(default="{}")),
            ("group_roles", JSON, _params(default="{}")),
            ("default_roles", JSON, _params(default='["member"]')),
            ("created_at", *_when(null=False)),
            ("updated_at", *_when(null=False)),
        ],
    ),
    (
        "SsoRequest",
        "sso_request",
        [
            ("id", Varchar, _params(length=40, default=sso_request_id, primary_key=True)),
            ("connection", ForeignKey, _fk(SsoConnection)),
            ("purpose", Varchar, _params(length=10, default="login")),
            ("return_to", Varchar, _params(length=2000, default="/ui/")),
            ("nonce", *_text(100)),
            ("code_verifier", *_text(200)),
            ("browser", *_text(64)),
            ("expires_at", Timestamptz, _params(default=TimestamptzNow(), index=True)),
            ("consumed_at", *_when()),
            ("result", JSON, _params(default="{}")),
            ("created_at", *_when(null=False)),
        ],
    ),
    (
        "SsoAssertion",
        "sso_assertion",
        [
            ("id", BigSerial, _params(primary_key=True)),
            ("key", Varchar, _params(length=600, default="", unique=True)),
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
    manager.add_column(
        table_class_name="Organization",
        tablename="organization",
        column_name="sso_enforced",
        db_column_name="sso_enforced",
        column_class_name="Boolean",
        column_class=Boolean,
        params=_params(default=False),
        schema=None,
    )
    return manager

"""Issue 10 (OpenID Provider): ended sessions (the logout outbox), clients, signing keys, grants, refresh
tokens and back-channel logout deliveries."""

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

ID = "2026-12-03T10:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "oidc provider"


def _pk(length: int) -> Varchar:
    return Varchar(length=length, primary_key=True, null=False)


class User(Table, tablename="portal_user", schema=None):
    id = _pk(40)


class OidcClient(Table, tablename="oidc_client", schema=None):
    id = _pk(60)


class OidcGrant(Table, tablename="oidc_grant", schema=None):
    id = _pk(40)


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


def _now() -> dict[str, Any]:
    return _params(default=TimestamptzNow())


def _null_time(**overrides: Any) -> dict[str, Any]:
    return _params(default=None, null=True, **overrides)


def _null_text(length: int) -> dict[str, Any]:
    return _params(length=length, default=None, null=True)


TABLES: list[tuple[str, str, list[tuple[str, type[Any], dict[str, Any]]]]] = [
    (
        "SessionEnd",
        "session_end",
        [
            ("id", BigSerial, _params(primary_key=True)),
            ("session_id", Varchar, _params(length=40, default="", index=True)),
            ("user_id", Varchar, _params(length=40, default="")),
            ("organization_id", Varchar, _null_text(40)),
            ("reason", Varchar, _params(length=30, default="")),
            ("at", Timestamptz, _now()),
            ("oidc_processed_at", Timestamptz, _null_time(index=True)),
        ],
    ),
    (
        "OidcClient",
        "oidc_client",
        [
            ("id", Varchar, _params(length=60, default="", primary_key=True)),
            ("name", Varchar, _params(length=200, default="")),
            ("secret_hash", Varchar, _null_text(64)),
            ("public", Boolean, _params(default=False)),
            ("redirect_uris", JSON, _params(default="[]")),
            ("post_logout_redirect_uris", JSON, _params(default="[]")),
            ("backchannel_logout_uri", Varchar, _null_text(2000)),
            ("signing_alg", Varchar, _params(length=10, default="ES256")),
            ("created_at", Timestamptz, _now()),
        ],
    ),
    (
        "OidcKey",
        "oidc_key",
        [
            ("id", Varchar, _params(length=60, default="", primary_key=True)),
            ("alg", Varchar, _params(length=10, default="")),
            ("public_jwk", Text, _params(default="")),
            ("private_jwk", Text, _params(default="")),
            ("created_at", Timestamptz, _now()),
            ("retired_at", Timestamptz, _null_time()),
        ],
    ),
    (
        "OidcGrant",
        "oidc_grant",
        [
            ("id", Varchar, _params(length=40, default="", primary_key=True)),
            ("client", ForeignKey, _fk(OidcClient)),
            ("user", ForeignKey, _fk(User)),
            ("session_id", Varchar, _params(length=40, default="", index=True)),
            ("organization_id", Varchar, _null_text(40)),
            ("scope", Varchar, _params(length=500, default="openid")),
            ("nonce", Varchar, _null_text(500)),
            ("redirect_uri", Varchar, _params(length=2000, default="")),
            ("code_challenge", Varchar, _null_text(128)),
            ("code_hash", Varchar, _params(length=64, default="", unique=True)),
            ("code_expires_at", Timestamptz, _now()),
            ("code_used_at", Timestamptz, _null_time()),
            ("auth_time", Timestamptz, _now()),
            ("amr", JSON, _params(default="[]")),
            ("created_at", Timestamptz, _now()),
            ("revoked_at", Timestamptz, _null_time()),
        ],
    ),
    (
        "OidcRefreshToken",
        "oidc_refresh_token",
        [
            ("id", Varchar, _params(length=40, default="", primary_key=True)),
            ("grant", ForeignKey, _fk(OidcGrant, index=True)),
            ("token_hash", Varchar, _params(length=64, default="", unique=True)),
            ("created_at", Timestamptz, _now()),
            ("expires_at", Timestamptz, _now()),
            ("used_at", Timestamptz, _null_time()),
        ],
    ),
    (
        "OidcLogoutDelivery",
        "oidc_logout_delivery",
        [
            ("id", Varchar, _params(length=40, default="", primary_key=True)),
            ("client", ForeignKey, _fk(OidcClient)),
            ("session_id", Varchar, _params(length=40, default="")),
            ("user_id", Varchar, _params(length=40, default="")),
            ("attempts", Integer, _params(default=0)),
            ("next_attempt_at", Timestamptz, _now() | {"index": True}),
            ("delivered_at", Timestamptz, _null_time()),
            ("failed_at", Timestamptz, _null_time()),
            ("last_error", Text, _params(default="")),
            ("created_at", Timestamptz, _now()),
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

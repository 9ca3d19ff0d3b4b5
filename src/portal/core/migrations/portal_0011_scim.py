"""Issue 13 (SCIM): scim_directory, scim_token, scim_user, scim_group, scim_group_member, scim_request.

One file, so the tables are created by the raw step (piccolo runs raw steps before ``add_table``) from
frozen copies of the table classes, followed by the unique keys and indexes the SCIM server relies on.
"""

from __future__ import annotations

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns import JSON, BigSerial, Boolean, ForeignKey, Integer, Timestamptz, Varchar
from piccolo.columns.base import OnDelete
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table

from portal.core.ids import (
    organization_id,
    scim_directory_id,
    scim_group_id,
    scim_token_id,
    scim_user_id,
)

ID = "2026-12-03T13:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "scim"


class Organization(Table, tablename="organization"):
    id = Varchar(length=40, primary_key=True, default=organization_id)


class ScimDirectory(Table, tablename="scim_directory"):
    id = Varchar(length=40, primary_key=True, default=scim_directory_id)
    organization = ForeignKey(references=Organization, on_delete=OnDelete.cascade, null=False, index=True)
    name = Varchar(length=200)
    provider = Varchar(length=40, default="generic")
    group_roles = JSON(default={})
    default_roles = JSON(default=["member"])
    self_test = JSON(default={})
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class ScimToken(Table, tablename="scim_token"):
    id = Varchar(length=40, primary_key=True, default=scim_token_id)
    directory = ForeignKey(references=ScimDirectory, on_delete=OnDelete.cascade, null=False, index=True)
    token_hash = Varchar(length=64, unique=True)
    hint = Varchar(length=24, default="")
    created_at = Timestamptz(default=TimestamptzNow())
    expires_at = Timestamptz(null=True, default=None)
    last_used_at = Timestamptz(null=True, default=None)


class ScimUser(Table, tablename="scim_user"):
    id = Varchar(length=40, primary_key=True, default=scim_user_id)
    directory = ForeignKey(references=ScimDirectory, on_delete=OnDelete.cascade, null=False)
    organization_id = Varchar(length=40)
    user_name = Varchar(length=320)
    user_name_key = Varchar(length=320)
    external_id = Varchar(length=320, null=True, default=None)
    active = Boolean(default=True)
    email = Varchar(length=320, default="")
    resource = JSON(default={})
    user_id = Varchar(length=40, null=True, default=None, index=True)
    membership_id = Varchar(length=40, null=True, default=None)
    base_roles = JSON(default=[])
    version = Integer(default=1)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class ScimGroup(Table, tablename="scim_group"):
    id = Varchar(length=40, primary_key=True, default=scim_group_id)
    directory = ForeignKey(references=ScimDirectory, on_delete=OnDelete.cascade, null=False)
    organization_id = Varchar(length=40)
    display_name = Varchar(length=320)
    display_name_key = Varchar(length=320)
    external_id = Varchar(length=320, null=True, default=None)
    resource = JSON(default={})
    version = Integer(default=1)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class ScimGroupMember(Table, tablename="scim_group_member"):
    id = BigSerial(primary_key=True)
    group = ForeignKey(references=ScimGroup, on_delete=OnDelete.cascade, null=False)
    member = ForeignKey(references=ScimUser, on_delete=OnDelete.cascade, null=False, index=True)
    display = Varchar(length=320, default="")
    created_at = Timestamptz(default=TimestamptzNow())


class ScimRequest(Table, tablename="scim_request"):
    id = BigSerial(primary_key=True)
    directory_id = Varchar(length=40)
    method = Varchar(length=10)
    path = Varchar(length=1000)
    status = Integer()
    detail = Varchar(length=200, default="")
    duration_ms = Integer(default=0)
    at = Timestamptz(default=TimestamptzNow())


TABLES: tuple[type[Table], ...] = (
    ScimDirectory,
    ScimToken,
    ScimUser,
    ScimGroup,
    ScimGroupMember,
    ScimRequest,
)

INDEXES = (
    # userName is caseExact false: one per directory whatever its case; `userName eq` is an index lookup.
    "CREATE UNIQUE INDEX IF NOT EXISTS scim_user_directory_name ON scim_user (directory, user_name_key)",
    "CREATE INDEX IF NOT EXISTS scim_user_directory_external ON scim_user (directory, external_id)",
    "CREATE INDEX IF NOT EXISTS scim_user_directory_email ON scim_user (directory, email)",
    # Listing in creation order (the default sort) pages through this index.
    "CREATE INDEX IF NOT EXISTS scim_user_directory_created ON scim_user (directory, created_at, id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS scim_group_directory_name ON scim_group (directory, display_name_key)",
    "CREATE INDEX IF NOT EXISTS scim_group_directory_created ON scim_group (directory, created_at, id)",
    # A member is in a group once: concurrent adds of the same member collapse into one row.
    'CREATE UNIQUE INDEX IF NOT EXISTS scim_group_member_pair ON scim_group_member ("group", member)',
    "CREATE INDEX IF NOT EXISTS scim_request_directory_id ON scim_request (directory_id, id)",
)


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)

    async def apply() -> None:
        from piccolo.engine import engine_finder

        engine = engine_finder()
        assert engine is not None
        for table in TABLES:
            table._meta.db = engine
            await table.create_table(if_not_exists=True).run()
        for statement in INDEXES:
            await engine.run_ddl(statement)

    manager.add_raw(apply)
    return manager

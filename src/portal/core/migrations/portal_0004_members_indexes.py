"""Members widget: indexes for search and keyset pagination, one open invitation per address, backfill.

On PostgreSQL the search columns use the "C" collation: prefix search is a range (``key >= 'ab' AND key <
'ab\\U0010FFFF'``), which only matches exactly the prefix under byte order; SQLite compares bytes already.
"""

import unicodedata

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder
from piccolo.querystring import QueryString

ID = "2026-11-22T04:00:01:000000"
VERSION = "1.38.0"
DESCRIPTION = "members search and keyset indexes, open invitation per address"

POSTGRES_COLLATION = (
    'ALTER TABLE membership ALTER COLUMN email TYPE VARCHAR(320) COLLATE "C"',
    'ALTER TABLE membership ALTER COLUMN sort_key TYPE VARCHAR(320) COLLATE "C"',
    'ALTER TABLE membership ALTER COLUMN family_key TYPE VARCHAR(100) COLLATE "C"',
    'ALTER TABLE invitation ALTER COLUMN email TYPE VARCHAR(320) COLLATE "C"',
)

#: The role filter and the last-administrator check ask "roles contains X" (jsonb containment).
POSTGRES_INDEXES = (
    "CREATE INDEX IF NOT EXISTS membership_roles ON membership USING GIN ((CAST(roles AS JSONB)))",
)

INDEXES = (
    # The members list: WHERE organization = ? ORDER BY sort_key, id (keyset), and the three prefix searches.
    "CREATE INDEX IF NOT EXISTS membership_org_sort ON membership (organization, sort_key, id)",
    "CREATE INDEX IF NOT EXISTS membership_org_email ON membership (organization, email)",
    "CREATE INDEX IF NOT EXISTS membership_org_family ON membership (organization, family_key)",
    # At most one open invitation per (organization, address); it also orders the pending list.
    "CREATE UNIQUE INDEX IF NOT EXISTS invitation_open_email ON invitation (organization, email)"
    " WHERE accepted_at IS NULL AND revoked_at IS NULL",
    "CREATE INDEX IF NOT EXISTS invitation_submission ON invitation (organization, submission_id)"
    " WHERE submission_id IS NOT NULL",
)


def _fold(text: str) -> str:
    # Frozen copy of portal.accounts.fold as of this migration.
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(unicodedata.normalize("NFC", stripped).split())


async def forwards() -> MigrationManager:
    manager = MigrationManager(migration_id=ID, app_name="portal", description=DESCRIPTION)

    async def apply() -> None:
        engine = engine_finder()
        assert engine is not None
        if engine.engine_type == "postgres":
            for statement in POSTGRES_COLLATION:
                await engine.run_ddl(statement)
        rows = await engine.run_querystring(
            QueryString(
                "SELECT m.id, u.email, u.display_name, u.given_name, u.family_name"
                ' FROM membership m JOIN portal_user u ON u.id = m."user"'
            )
        )
        for row in map(dict, rows):
            name = (row["display_name"] or "").strip()
            name = name or f"{row['given_name'] or ''} {row['family_name'] or ''}".strip()
            await engine.run_querystring(
                QueryString(
                    "UPDATE membership SET email = {}, sort_key = {}, family_key = {} WHERE id = {}",
                    row["email"],
                    _fold(name or row["email"])[:320],
                    _fold(row["family_name"] or "")[:100],
                    row["id"],
                )
            )
        for statement in INDEXES:
            await engine.run_ddl(statement)
        if engine.engine_type == "postgres":
            for statement in POSTGRES_INDEXES:
                await engine.run_ddl(statement)

    manager.add_raw(apply)
    return manager

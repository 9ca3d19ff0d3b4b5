"""API keys: ``portal_sk_…`` bearer secrets, stored as SHA-256 only, scoped, optionally bound to one
organization, revocable (DESIGN §13, §17)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any, cast

from portal.auth import accounts
from portal.core import clock, ids
from portal.core.errors import InvalidInput
from portal.core.tables import ApiKey

PREFIX = "portal_sk_"
#: Characters of the key kept in clear to tell keys apart (the prefix and 4 random characters).
SHOWN = len(PREFIX) + 4
#: Every scope: one per resource and access. ``write`` does not imply ``read``: ask for both.
RESOURCES = ("organizations", "users", "memberships", "invitations", "domains", "sessions")
SCOPES: tuple[str, ...] = (
    *(f"{resource}:{access}" for resource in RESOURCES for access in ("read", "write")),
    "audit_events:read",
    "webhooks:read",
    "webhooks:write",
    "portal_links:write",
)
LAST_USED_RESOLUTION = timedelta(minutes=1)


def new_key() -> str:
    """A fresh key: ``portal_sk_`` and 256 random bits."""
    return PREFIX + secrets.token_urlsafe(32)


def parse_scopes(raw: list[str] | tuple[str, ...]) -> list[str]:
    """The scopes, de-duplicated and sorted; :class:`InvalidInput` naming an unknown one."""
    scopes = sorted({s.strip() for s in raw if s.strip()})
    if not scopes:
        raise InvalidInput("scope", f"Give at least one --scope. Scopes: {', '.join(SCOPES)}.")
    for scope in scopes:
        if scope not in SCOPES:
            raise InvalidInput("scope", f"unknown scope {scope!r}. Scopes: {', '.join(SCOPES)}.")
    return scopes


async def create(name: str, scopes: list[str], organization: str | None = None) -> tuple[dict[str, Any], str]:
    """Create a key; returns (row, the clear key). ``organization`` (id, name or external id) binds it."""
    name = " ".join(name.split())
    if not name or len(name) > 200:
        raise InvalidInput("name", "Give the key a name of 1 to 200 characters.")
    checked = parse_scopes(scopes)
    organization_id = None
    if organization:
        org = await accounts.find_organization(organization)
        if org is None:
            raise InvalidInput("org", f"no organization {organization!r}")
        organization_id = org["id"]
    clear = new_key()
    key = ApiKey(
        name=name,
        prefix=clear[:SHOWN],
        token_hash=ids.hash_secret(clear),
        scopes=checked,
        organization_id=organization_id,
        created_at=clock.utcnow(),
    )
    await key.save()
    await accounts.audit(
        "api_key.created",
        organization_id=organization_id,
        target=key.id,
        details={"name": name, "scopes": checked, "prefix": key.prefix},
    )
    return await get(key.id) or {}, clear


async def get(key_id: str) -> dict[str, Any] | None:
    """One key (without its hash)."""
    row = await ApiKey.select(*_COLUMNS).where(ApiKey.id == key_id).first().output(load_json=True)
    return cast(dict[str, Any] | None, row)


async def list_all() -> list[dict[str, Any]]:
    """Every key, newest first, revoked ones included."""
    rows: list[dict[str, Any]] = (
        await ApiKey.select(*_COLUMNS).order_by(ApiKey.created_at, ascending=False).output(load_json=True)
    )
    return rows


async def revoke(key_id: str) -> bool:
    """Revoke a key: requests with it get 401 from now on. False if there is no such live key."""
    done = (
        await ApiKey.update({ApiKey.revoked_at: clock.utcnow()})
        .where((ApiKey.id == key_id) & ApiKey.revoked_at.is_null())
        .returning(ApiKey.id, ApiKey.organization_id)
    )
    if not done:
        return False
    await accounts.audit("api_key.revoked", organization_id=done[0]["organization_id"], target=key_id)
    return True


async def authenticate(presented: str) -> dict[str, Any] | None:
    """The live key for a presented secret, or None (unknown, malformed or revoked).

    The row is found by the SHA-256 of the secret (an index lookup reveals nothing usable about a 256-bit
    secret), then the stored hash is compared in constant time.
    """
    if not presented.startswith(PREFIX) or len(presented) > 100:
        return None
    digest = ids.hash_secret(presented)
    row = await ApiKey.select().where(ApiKey.token_hash == digest).first().output(load_json=True)
    if row is None or not ids.same_secret(presented, row["token_hash"]) or row["revoked_at"] is not None:
        return None
    now = clock.utcnow()
    if row["last_used_at"] is None or now - row["last_used_at"] >= LAST_USED_RESOLUTION:
        await ApiKey.update({ApiKey.last_used_at: now}).where(ApiKey.id == row["id"])
    return cast(dict[str, Any], row)


_COLUMNS = (
    ApiKey.id,
    ApiKey.name,
    ApiKey.prefix,
    ApiKey.scopes,
    ApiKey.organization_id,
    ApiKey.created_at,
    ApiKey.last_used_at,
    ApiKey.revoked_at,
)

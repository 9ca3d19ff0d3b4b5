"""Shared pieces of the management API tests: keys, two organizations, and a client helper."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from portal.api import keys
from portal.auth import sessions
from portal.core.tables import Domain
from tests.factories import make_invitation, make_member, make_org, make_user
from widgets.domains import verification


async def make_key(
    scopes: Sequence[str] = keys.SCOPES, *, organization: str | None = None, revoked: bool = False
) -> tuple[str, str]:
    """(key id, clear key)."""
    row, clear = await keys.create("test key", list(scopes), organization)
    if revoked:
        await keys.revoke(row["id"])
    return row["id"], clear


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class World:
    """Two organizations (``org`` and ``other``), each with an admin, a member, an invitation, a domain and a
    live session of the member."""

    org: dict[str, Any]
    other: dict[str, Any]
    ids: dict[str, str]
    other_ids: dict[str, str]


async def _populate(org: dict[str, Any]) -> dict[str, str]:
    admin = await make_member(org, roles=["admin"])
    second_admin = await make_member(org, roles=["admin"])
    member_user = await make_user()
    member = await make_member(org, member_user, roles=["member"])
    invitation_id, _token = await make_invitation(org)
    domain = Domain(
        organization=org["id"],
        domain=f"{org['name']}.example.com",
        status="pending",
        verification_token=verification.new_token(),
    )
    await domain.save()
    _token, session_id = await sessions.create_session(
        member_user["id"], auth_method="test", organization_id=org["id"]
    )
    return {
        "organization_id": org["id"],
        "admin_membership": admin["id"],
        "second_admin_membership": second_admin["id"],
        "membership_id": member["id"],
        "user_id": member_user["id"],
        "invitation_id": invitation_id,
        "domain_id": domain.id,
        "session_id": session_id,
    }


async def make_world() -> World:
    org = await make_org(features=["domain_verification", "session_policy"])
    other = await make_org(features=["domain_verification", "session_policy"])
    return World(org=org, other=other, ids=await _populate(org), other_ids=await _populate(other))


async def call(
    client: httpx.AsyncClient, method: str, path: str, key: str | None, **kwargs: Any
) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers.update(bearer(key))
    return await client.request(method, "/api/v1" + path, headers=headers, **kwargs)

"""The facts a policy decision needs, loaded once per request (DESIGN §2, step 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from portal.core.tables import Membership, Organization


@dataclass(frozen=True, slots=True)
class Facts:
    """Who is asking, in which organization, with which roles, and what the organization has enabled."""

    user: dict[str, Any]
    organization: dict[str, Any] | None
    #: None when the user is not an active member of ``organization``.
    roles: tuple[str, ...] | None
    features: frozenset[str]


async def load_facts(user: dict[str, Any], organization_id: str | None) -> Facts:
    """Load the organization, the user's active membership roles in it and its features (two queries)."""
    if organization_id is None:
        return Facts(user=user, organization=None, roles=None, features=frozenset())
    organization = (
        await Organization.select().where(Organization.id == organization_id).first().output(load_json=True)
    )
    if organization is None:
        return Facts(user=user, organization=None, roles=None, features=frozenset())
    membership = (
        await Membership.select(Membership.roles)
        .where(
            (Membership.organization == organization_id)
            & (Membership.user == user["id"])
            & (Membership.status == "active")
        )
        .first()
        .output(load_json=True)
    )
    roles = None if membership is None else tuple(membership["roles"] or ())
    return Facts(
        user=user, organization=organization, roles=roles, features=frozenset(organization["features"] or ())
    )

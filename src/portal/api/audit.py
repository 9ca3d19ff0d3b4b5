"""Reading the audit log (written by ``portal.auth.accounts.audit``): filters and keyset pages, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from portal.api.http import ApiError, FieldError
from portal.core.tables import AuditEvent


async def list_events(
    *,
    organization_id: str | None,
    actor_id: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[str, ...] | None,
    limit: int,
) -> tuple[list[dict[str, Any]], bool]:
    """One page of events (ordered by time, then id, both descending) and whether there are more."""
    where: Any = AuditEvent.id.is_not_null()
    if organization_id is not None:
        where &= AuditEvent.organization_id == organization_id
    if actor_id is not None:
        where &= AuditEvent.actor_id == actor_id
    if action:
        # "member." is every member event; anything else is one action.
        if action.endswith("."):
            where &= (AuditEvent.action >= action) & (AuditEvent.action < action + "\U0010ffff")
        else:
            where &= AuditEvent.action == action
    if since is not None:
        where &= AuditEvent.at >= since
    if until is not None:
        where &= AuditEvent.at < until
    if after is not None:
        try:
            at = datetime.fromisoformat(after[0])
        except ValueError:
            raise ApiError(
                422,
                "cursor: not a cursor of this list.",
                errors=[FieldError("cursor", "Not a cursor of this list.")],
            ) from None
        where &= (AuditEvent.at < at) | ((AuditEvent.at == at) & (AuditEvent.id < after[1]))
    rows = (
        await AuditEvent.select()
        .where(where)
        .order_by(AuditEvent.at, ascending=False)
        .order_by(AuditEvent.id, ascending=False)
        .limit(limit + 1)
        .output(load_json=True)
    )
    return list(rows[:limit]), len(rows) > limit

"""The outbox: event types, and the rows written in the same transaction as the change they describe.

Every change the portal makes writes an audit row (``portal.auth.accounts.audit``) inside the change's
transaction; :func:`from_audit` turns the audit actions that mean something to the app into events. Changes
written without ``audit`` (bulk domain verification, session ends) call :func:`emit` or :func:`emit_many`.
A rolled-back transaction takes its events and deliveries with it; a committed one cannot lose them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from portal.core import clock
from portal.core.tables import WebhookDelivery, WebhookEndpoint, WebhookEvent

#: The event types an endpoint can subscribe to (DESIGN §14), in the order the CLI lists them.
EVENT_TYPES: tuple[str, ...] = (
    "organization.created",
    "organization.updated",
    "user.created",
    "user.updated",
    "user.deleted",
    "user.logout",
    "membership.created",
    "membership.updated",
    "membership.deleted",
    "invitation.created",
    "invitation.accepted",
    "invitation.revoked",
    "domain.verified",
    "domain.failed",
    "session.revoked",
    "sso.connection.activated",
    "sso.connection.deactivated",
    "scim.user.created",
    "scim.user.updated",
    "scim.user.deactivated",
    "scim.user.deleted",
    "scim.group.created",
    "scim.group.updated",
    "scim.group.deleted",
)

#: userName prefix of the SCIM widget's self-test user (``widgets.scim.service``), which apps never hear of.
SELF_TEST_PREFIX = "portal-self-test-"

#: Audit action → event type. Actions not listed (sign-ins, passkeys, step-up…) are not announced.
AUDIT_EVENT_TYPES: Mapping[str, str] = {
    "organization.created": "organization.created",
    "settings.updated": "organization.updated",
    "session_policy.updated": "organization.updated",
    "user.created": "user.created",
    "profile.updated": "user.updated",
    "profile.email_changed": "user.updated",
    "user.deleted": "user.deleted",
    "member.added": "membership.created",
    "member.roles_changed": "membership.updated",
    "member.removed": "membership.deleted",
    "member.invited": "invitation.created",
    "invitation.accepted": "invitation.accepted",
    "invitation.revoked": "invitation.revoked",
    "session.revoked": "session.revoked",
    "sessions.revoked_others": "session.revoked",
    "sso.connection.activated": "sso.connection.activated",
    "sso.connection.deactivated": "sso.connection.deactivated",
    **{action: action for action in EVENT_TYPES if action.startswith("scim.")},
}


@dataclass(frozen=True, slots=True)
class Event:
    """One event to write: its type, organization (None: app-wide) and ``data`` object."""

    type: str
    organization_id: str | None
    data: dict[str, Any]


#: Deliveries written during this request, sent by :class:`DispatchMiddleware` once the response is out.
_written: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "webhook_deliveries", default=None
)


#: The enabled endpoints as this request read them (see :func:`_enabled_endpoints`).
_endpoint_cache: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "webhook_endpoints", default=None
)


def matches(endpoint: Mapping[str, Any], event: Event) -> bool:
    """Whether an (enabled) endpoint subscribes to ``event``: its types (none: all) and organization."""
    types = endpoint["event_types"] or ()
    if types and event.type not in types:
        return False
    return endpoint["organization_id"] is None or endpoint["organization_id"] == event.organization_id


#: Rows per INSERT statement (a delivery row binds 16 values; PostgreSQL allows 32,767 per statement).
_ROWS_PER_INSERT = 1500


async def emit_many(events: Iterable[Event]) -> list[str]:
    """Write ``events`` and one pending delivery per subscribed endpoint, in the caller's transaction (the
    caller opens it). Returns the delivery ids."""
    batch = list(events)
    if not batch:
        return []
    for event in batch:
        if event.type not in EVENT_TYPES:
            raise ValueError(f"unknown webhook event type {event.type!r}")
    now = clock.utcnow()
    rows = [
        WebhookEvent(type=e.type, organization_id=e.organization_id, data=e.data, created_at=now)
        for e in batch
    ]
    # In slices: one INSERT may bind at most 32,767 values on PostgreSQL, and a session sweep batch ends up to
    # 20,000 sessions at once (a user.logout each).
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        await WebhookEvent.insert(*rows[start : start + _ROWS_PER_INSERT])
    endpoints = await _enabled_endpoints()
    deliveries = [
        WebhookDelivery(
            event=row.id,
            endpoint=endpoint["id"],
            key=f"{row.id} {endpoint['id']}",
            status="pending",
            next_attempt_at=now,
            created_at=now,
        )
        for row, event in zip(rows, batch, strict=True)
        for endpoint in endpoints
        if matches(endpoint, event)
    ]
    for start in range(0, len(deliveries), _ROWS_PER_INSERT):
        await WebhookDelivery.insert(*deliveries[start : start + _ROWS_PER_INSERT])
    ids = [str(d.id) for d in deliveries]
    written = _written.get()
    if written is not None:
        written.extend(ids)
    return ids


async def _enabled_endpoints() -> list[dict[str, Any]]:
    """The enabled endpoints, read once per request (a SCIM create audits three changes): the request's
    cache is dropped by :func:`forget_endpoints` whenever the request changes an endpoint."""
    cache = _endpoint_cache.get()
    if cache is not None and "rows" in cache:
        cached: list[dict[str, Any]] = cache["rows"]
        return cached
    rows: list[dict[str, Any]] = (
        await WebhookEndpoint.select(
            WebhookEndpoint.id, WebhookEndpoint.event_types, WebhookEndpoint.organization_id
        )
        .where(WebhookEndpoint.enabled.eq(True))
        .output(load_json=True)
    )
    if cache is not None:
        cache["rows"] = rows
    return rows


def forget_endpoints() -> None:
    """After a change to an endpoint: the rest of this request reads them again."""
    cache = _endpoint_cache.get()
    if cache is not None:
        cache.clear()


async def emit(event_type: str, *, organization_id: str | None, data: dict[str, Any]) -> list[str]:
    """Write one event (see :func:`emit_many`)."""
    return await emit_many([Event(event_type, organization_id, data)])


def event_for_audit(
    action: str,
    *,
    organization_id: str | None,
    actor_id: str | None,
    target: str,
    details: Mapping[str, Any],
) -> Event | None:
    """The event an audit action stands for, if any."""
    event_type = AUDIT_EVENT_TYPES.get(action)
    if event_type is None:
        return None
    if action.startswith("scim.user.") and str(details.get("userName", "")).startswith(SELF_TEST_PREFIX):
        return None  # the SCIM widget's self-test user: created and deleted at once, nothing to tell the app
    data = {"organization_id": organization_id, "actor_id": actor_id, "target": target, **details}
    return Event(event_type, organization_id, data)


async def from_audit(
    action: str,
    *,
    organization_id: str | None,
    actor_id: str | None,
    target: str,
    details: Mapping[str, Any],
) -> None:
    """Write the event an audit action stands for, if any (called by ``accounts.audit`` in its transaction)."""
    event = event_for_audit(
        action, organization_id=organization_id, actor_id=actor_id, target=target, details=details
    )
    if event is not None:
        await emit_many([event])


class DispatchMiddleware:
    """Queue a send job for each delivery a request wrote, after the handler returned (so after its commit).
    A delivery whose transaction rolled back is gone and its job does nothing; a job lost with the process
    is picked up by the dispatch cron when its row comes due."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        written: list[str] = []
        token = _written.set(written)
        cached = _endpoint_cache.set({})
        try:
            await self.app(scope, receive, send)
        finally:
            _endpoint_cache.reset(cached)
            _written.reset(token)
            if written:
                from portal.webhooks.delivery import enqueue

                await enqueue(scope["litestar_app"].state.jobs, written)

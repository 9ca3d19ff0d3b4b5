"""Webhook operations, one function each, shared by ``portal webhook ...`` and the management API.

Callers open the transaction (as with every service here). An ``organization_id`` argument scopes a call to
one organization (the API's key): an endpoint of another organization, or an app-wide one, is then unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from portal.auth import accounts
from portal.core import clock, crypto, outbound
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import Organization, WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from portal.webhooks import signing
from portal.webhooks.delivery import SECRET_PURPOSE, fail_pending
from portal.webhooks.events import EVENT_TYPES, forget_endpoints

MAX_DESCRIPTION = 200
PAGE = 50


class NotFound(LookupError):
    """No such endpoint, delivery or event (in the caller's scope)."""


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as shown to its owner (never its secret, which is shown once at creation)."""

    id: str
    url: str
    description: str
    event_types: tuple[str, ...]
    organization_id: str | None
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: dict[str, Any]) -> EndpointView:
        return cls(
            id=row["id"],
            url=row["url"],
            description=row["description"],
            event_types=tuple(row["event_types"] or ()),
            organization_id=row["organization_id"],
            enabled=bool(row["enabled"]),
            disabled_reason=row["disabled_reason"],
            disabled_at=row["disabled_at"],
            failing_since=row["failing_since"],
            created_at=row["created_at"],
        )


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One attempt of the delivery log."""

    at: datetime
    status: str
    status_code: int | None
    duration_ms: int
    error: str


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """A delivery of one event to one endpoint, with its attempts (oldest first)."""

    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status_code: int | None
    last_duration_ms: int | None
    last_error: str
    created_at: datetime
    log: tuple[AttemptView, ...]


def parse_event_types(values: Sequence[str]) -> list[str]:
    """Event types checked against :data:`EVENT_TYPES`, sorted and de-duplicated; ``*`` (or none) is every type."""
    types = sorted({v.strip() for v in values if v.strip()})
    if "*" in types:
        return []
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(
            "event_types", f"unknown event type {unknown[0]!r} (known: {', '.join(EVENT_TYPES)})"
        )
    return types


async def check_url(settings: Settings, url: str) -> str:
    """The URL if the SSRF rule lets the portal send to it (https and a public address, unless
    ``PORTAL_WEBHOOK_ALLOW_PRIVATE_ADDRESSES``), else :class:`InvalidInput` naming ``url``."""
    if len(url.strip()) > 2000:
        raise InvalidInput("url", "The URL is longer than 2000 characters.")
    allow = settings.webhook_allow_private_addresses
    target = await outbound.check(url, allow_private=allow, allow_http=allow, field="url")
    return target.url


def _description(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_DESCRIPTION:
        raise InvalidInput("description", f"At most {MAX_DESCRIPTION} characters.")
    return value


async def _endpoint_row(endpoint_id: str, organization_id: str | None) -> dict[str, Any]:
    where: Any = WebhookEndpoint.id == endpoint_id
    if organization_id is not None:
        where &= WebhookEndpoint.organization_id == organization_id  # tenant check
    row: dict[str, Any] | None = await WebhookEndpoint.select().where(where).first().output(load_json=True)
    if row is None:
        raise NotFound(endpoint_id)
    return row


async def create_endpoint(
    settings: Settings,
    url: str,
    *,
    event_types: Sequence[str] = (),
    organization_id: str | None = None,
    description: str = "",
    actor_id: str | None = None,
) -> tuple[EndpointView, str]:
    """Register an endpoint; returns it and its ``whsec_`` secret, which is shown only now (stored sealed)."""
    # The cheap checks first: the URL's check resolves its host name.
    types = parse_event_types(event_types)
    text = _description(description)
    if organization_id is not None and not await Organization.exists().where(
        Organization.id == organization_id
    ):
        raise InvalidInput("organization_id", "No such organization.")
    checked = await check_url(settings, url)
    secret = signing.new_secret()
    now = clock.utcnow()
    endpoint = WebhookEndpoint(
        url=checked,
        description=text,
        event_types=types,
        organization_id=organization_id,
        secret=crypto.seal(settings, SECRET_PURPOSE, secret.encode()),
        enabled=True,
        created_at=now,
        updated_at=now,
    )
    await endpoint.save()
    forget_endpoints()
    await accounts.audit(
        "webhook.endpoint_created",
        organization_id=organization_id,
        actor_id=actor_id,
        target=endpoint.id,
        details={"url": checked, "event_types": types},
    )
    return EndpointView.of(await _endpoint_row(endpoint.id, None)), secret


async def list_endpoints(*, organization_id: str | None = None) -> list[EndpointView]:
    """Every endpoint (of one organization, when given), oldest first."""
    query = WebhookEndpoint.select().order_by(WebhookEndpoint.created_at).order_by(WebhookEndpoint.id)
    if organization_id is not None:
        query = query.where(WebhookEndpoint.organization_id == organization_id)  # tenant check
    return [EndpointView.of(row) for row in await query.output(load_json=True)]


async def get_endpoint(endpoint_id: str, *, organization_id: str | None = None) -> EndpointView:
    """One endpoint; :class:`NotFound` if unknown (or outside ``organization_id``)."""
    return EndpointView.of(await _endpoint_row(endpoint_id, organization_id))


async def update_endpoint(
    settings: Settings,
    endpoint_id: str,
    *,
    organization_id: str | None = None,
    url: str | None = None,
    event_types: Sequence[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
    actor_id: str | None = None,
) -> EndpointView:
    """Change an endpoint's URL, event types, description or enabled state (disabling gives up its pending
    deliveries; re-enabling clears its failure record); fields left None stay."""
    row = await _endpoint_row(endpoint_id, organization_id)
    values: dict[Any, Any] = {}
    if url is not None:
        values[WebhookEndpoint.url] = await check_url(settings, url)
    if event_types is not None:
        values[WebhookEndpoint.event_types] = parse_event_types(event_types)
    if description is not None:
        values[WebhookEndpoint.description] = _description(description)
    if enabled is not None and enabled != row["enabled"]:
        values[WebhookEndpoint.enabled] = enabled
        values[WebhookEndpoint.disabled_reason] = None if enabled else "manual"
        values[WebhookEndpoint.disabled_at] = None if enabled else clock.utcnow()
        values[WebhookEndpoint.failing_since] = None
    if values:
        values[WebhookEndpoint.updated_at] = clock.utcnow()
        await WebhookEndpoint.update(values).where(WebhookEndpoint.id == endpoint_id)
        forget_endpoints()
        if enabled is False and row["enabled"]:
            # Nothing is kept for a disabled endpoint: what it was still owed is given up, not retried.
            await fail_pending(endpoint_id, "the endpoint was disabled")
        await accounts.audit(
            "webhook.endpoint_updated",
            organization_id=row["organization_id"],
            actor_id=actor_id,
            target=endpoint_id,
            details={
                "fields": sorted(
                    str(column._meta.name) for column in values if column is not WebhookEndpoint.updated_at
                )
            },
        )
    return await get_endpoint(endpoint_id)


async def delete_endpoint(
    endpoint_id: str, *, organization_id: str | None = None, actor_id: str | None = None
) -> None:
    """Delete an endpoint and its deliveries (nothing more is sent to it)."""
    row = await _endpoint_row(endpoint_id, organization_id)
    # Deliveries first, then the endpoint: the order a send job locks them in (it updates its delivery, then
    # the endpoint's failing_since). The other order, by cascade, deadlocked with a send in flight.
    await WebhookDelivery.delete().where(WebhookDelivery.endpoint == endpoint_id)
    await WebhookEndpoint.delete().where(WebhookEndpoint.id == endpoint_id)
    forget_endpoints()
    await accounts.audit(
        "webhook.endpoint_deleted",
        organization_id=row["organization_id"],
        actor_id=actor_id,
        target=endpoint_id,
        details={"url": row["url"]},
    )


async def list_deliveries(
    endpoint_id: str,
    *,
    organization_id: str | None = None,
    limit: int = PAGE,
    before: str | None = None,
) -> list[DeliveryView]:
    """An endpoint's deliveries, newest first, each with its attempt log; ``before`` (a delivery id) pages."""
    await _endpoint_row(endpoint_id, organization_id)
    where: Any = WebhookDelivery.endpoint == endpoint_id
    if before is not None:
        cursor = (
            await WebhookDelivery.select(WebhookDelivery.created_at)
            .where((WebhookDelivery.id == before) & where)
            .first()
        )
        if cursor is None:
            raise InvalidInput("before", "No such delivery of this endpoint.")
        where &= (WebhookDelivery.created_at < cursor["created_at"]) | (
            (WebhookDelivery.created_at == cursor["created_at"]) & (WebhookDelivery.id < before)
        )
    rows = (
        await WebhookDelivery.select(
            *WebhookDelivery.all_columns(),
            WebhookDelivery.event.type.as_alias("event_type"),
        )
        .where(where)
        .order_by(WebhookDelivery.created_at, ascending=False)
        .order_by(WebhookDelivery.id, ascending=False)
        .limit(max(1, min(limit, 500)))
    )
    return await _with_log(rows)


async def list_event_deliveries(event_id: str, *, organization_id: str | None = None) -> list[DeliveryView]:
    """Every delivery of one event (to the endpoints in scope)."""
    await _event_row(event_id, organization_id)
    where: Any = WebhookDelivery.event == event_id
    if organization_id is not None:
        where &= WebhookDelivery.endpoint.organization_id == organization_id  # tenant check
    rows = (
        await WebhookDelivery.select(
            *WebhookDelivery.all_columns(), WebhookDelivery.event.type.as_alias("event_type")
        )
        .where(where)
        .order_by(WebhookDelivery.created_at)
    )
    return await _with_log(rows)


async def _with_log(rows: list[dict[str, Any]]) -> list[DeliveryView]:
    ids = [row["id"] for row in rows]
    attempts: dict[str, list[AttemptView]] = {i: [] for i in ids}
    if ids:
        for a in (
            await WebhookAttempt.select()
            .where(WebhookAttempt.delivery.is_in(ids))
            .order_by(WebhookAttempt.id)
        ):
            attempts[a["delivery"]].append(
                AttemptView(a["at"], a["status"], a["status_code"], a["duration_ms"], a["error"])
            )
    return [
        DeliveryView(
            id=row["id"],
            endpoint_id=row["endpoint"],
            event_id=row["event"],
            event_type=row["event_type"],
            status=row["status"],
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            delivered_at=row["delivered_at"],
            last_status_code=row["last_status_code"],
            last_duration_ms=row["last_duration_ms"],
            last_error=row["last_error"],
            created_at=row["created_at"],
            log=tuple(attempts[row["id"]]),
        )
        for row in rows
    ]


async def _event_row(event_id: str, organization_id: str | None) -> dict[str, Any]:
    where: Any = WebhookEvent.id == event_id
    if organization_id is not None:
        where &= WebhookEvent.organization_id == organization_id  # tenant check
    row: dict[str, Any] | None = await WebhookEvent.select().where(where).first().output(load_json=True)
    if row is None:
        raise NotFound(event_id)
    return row


async def replay_event(
    event_id: str,
    *,
    organization_id: str | None = None,
    endpoint_id: str | None = None,
    actor_id: str | None = None,
) -> list[str]:
    """Send one event again, with the same ``webhook-id``, to each enabled endpoint it was delivered (or
    owed) to, or only to ``endpoint_id``: its deliveries start over as pending, due now. Returns their ids
    (queue them with ``delivery.enqueue``, or leave them to the dispatch cron)."""
    event = await _event_row(event_id, organization_id)
    where = (WebhookDelivery.event == event_id) & cast(Any, WebhookDelivery.endpoint.enabled).eq(True)
    if organization_id is not None:
        where &= WebhookDelivery.endpoint.organization_id == organization_id  # tenant check
    if endpoint_id is not None:
        where &= WebhookDelivery.endpoint == endpoint_id
    rows = await WebhookDelivery.select(WebhookDelivery.id).where(where)
    ids = [row["id"] for row in rows]
    if endpoint_id is not None and not ids:
        raise NotFound(endpoint_id)
    if ids:
        await WebhookDelivery.update(
            {
                WebhookDelivery.status: "pending",
                WebhookDelivery.attempts: 0,
                WebhookDelivery.next_attempt_at: clock.utcnow(),
                WebhookDelivery.lease_until: None,
                WebhookDelivery.delivered_at: None,
            }
        ).where(WebhookDelivery.id.is_in(ids))
    await accounts.audit(
        "webhook.event_replayed",
        organization_id=event["organization_id"],
        actor_id=actor_id,
        target=event_id,
        details={"type": event["type"], "deliveries": len(ids)},
    )
    return ids

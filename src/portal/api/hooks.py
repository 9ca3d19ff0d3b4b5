"""``/api/v1`` resources beyond the widgets: webhook endpoints and their delivery log (issue 11, DESIGN §14) and
admin-portal setup links (issue 14, DESIGN §18). The handlers call :mod:`portal.webhooks.service` and
:mod:`portal.links.service`, the same functions ``portal webhook`` and ``portal link`` use.

A key bound to one organization sees and manages only that organization's endpoints, and creates endpoints for
it; an unbound key manages every endpoint, app-wide ones included."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, patch, post
from litestar.params import JSONBody

from portal.api.http import caller_of, not_found, portal_state, settings_of
from portal.api.routes import IdempotencyKey, PathId, _opt, _org_row, errors
from portal.api.schemas import Body
from portal.core import db
from portal.links import service as links
from portal.webhooks import delivery
from portal.webhooks import service as webhooks

# --- schemas ---------------------------------------------------------------------------------------------


class WebhookEndpoint(msgspec.Struct, kw_only=True):
    id: str
    url: str
    description: str
    #: Event types it receives; empty: every type.
    event_types: list[str]
    #: Only this organization's events; null: every organization's and app-wide ones.
    organization_id: str | None
    enabled: bool
    #: ``failing`` when the portal disabled it after 5 days of failures.
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpoint, kw_only=True):
    #: ``whsec_…``: verify signatures with it. Shown in this answer only.
    secret: str


class WebhookEndpointPage(msgspec.Struct):
    data: list[WebhookEndpoint]
    next: str | None


class WebhookEndpointCreate(Body):
    url: Annotated[str, msgspec.Meta(max_length=2000)]
    event_types: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=100)]], msgspec.Meta(max_length=50)
    ] = []
    description: Annotated[str, msgspec.Meta(max_length=200)] = ""
    #: For an unbound key: limit the endpoint to one organization's events.
    organization_id: Annotated[str, msgspec.Meta(max_length=60)] | None = None


class WebhookEndpointUpdate(Body):
    url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    event_types: (
        Annotated[list[Annotated[str, msgspec.Meta(max_length=100)]], msgspec.Meta(max_length=50)] | None
    ) = None
    description: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    #: Turn a disabled endpoint back on (or off).
    enabled: bool | None = None


class WebhookAttempt(msgspec.Struct, kw_only=True):
    at: datetime
    status: str
    status_code: int | None
    duration_ms: int
    error: str


class WebhookDelivery(msgspec.Struct, kw_only=True):
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    #: ``pending``, ``delivered`` or ``failed``.
    status: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status_code: int | None
    last_duration_ms: int | None
    last_error: str
    created_at: datetime
    log: list[WebhookAttempt]


class WebhookDeliveryPage(msgspec.Struct):
    data: list[WebhookDelivery]
    next: str | None


class WebhookReplay(msgspec.Struct):
    #: The deliveries that start over (sent at once, with the event's original ``webhook-id``).
    delivery_ids: list[str]


class PortalLinkCreate(Body):
    #: ``sso``, ``scim`` or ``domain_verification``.
    intent: Annotated[str, msgspec.Meta(max_length=40)]
    #: Seconds the link can be opened (default ``PORTAL_ADMIN_PORTAL_LINK_TTL``).
    ttl: Annotated[int, msgspec.Meta(ge=1, le=7 * 86400)] | None = None


class PortalLink(msgspec.Struct, kw_only=True):
    id: str
    organization_id: str
    intent: str
    #: The one-time URL for the IT admin. Shown in this answer only.
    url: str
    expires_at: datetime


# --- webhook endpoints -----------------------------------------------------------------------------------

ENDPOINTS = "/webhook-endpoints"


def _endpoint(view: webhooks.EndpointView) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=view.id,
        url=view.url,
        description=view.description,
        event_types=list(view.event_types),
        organization_id=view.organization_id,
        enabled=view.enabled,
        disabled_reason=view.disabled_reason,
        disabled_at=view.disabled_at,
        failing_since=view.failing_since,
        created_at=view.created_at,
    )


def _delivery(view: webhooks.DeliveryView) -> WebhookDelivery:
    return WebhookDelivery(
        id=view.id,
        endpoint_id=view.endpoint_id,
        event_id=view.event_id,
        event_type=view.event_type,
        status=view.status,
        attempts=view.attempts,
        next_attempt_at=view.next_attempt_at,
        delivered_at=view.delivered_at,
        last_status_code=view.last_status_code,
        last_duration_ms=view.last_duration_ms,
        last_error=view.last_error,
        created_at=view.created_at,
        log=[
            WebhookAttempt(
                at=a.at, status=a.status, status_code=a.status_code, duration_ms=a.duration_ms, error=a.error
            )
            for a in view.log
        ],
    )


@get(ENDPOINTS, opt=_opt("webhooks:read"), responses=errors(), tags=["webhooks"])
async def list_webhook_endpoints(request: Request[Any, Any, Any]) -> WebhookEndpointPage:
    """The webhook endpoints (a bound key: its organization's), oldest first, in one page."""
    caller = caller_of(request)
    views = await webhooks.list_endpoints(organization_id=caller.organization_id)
    return WebhookEndpointPage(data=[_endpoint(v) for v in views], next=None)


@post(ENDPOINTS, opt=_opt("webhooks:write"), responses=errors(), tags=["webhooks"])
async def create_webhook_endpoint(
    request: Request[Any, Any, Any],
    data: JSONBody[WebhookEndpointCreate],
    idempotency_key: IdempotencyKey = None,
) -> Response[WebhookEndpointCreated]:
    """Register an endpoint (URL checked against the SSRF rule). The answer holds its ``whsec_`` secret, once."""
    caller = caller_of(request)
    organization_id = data.organization_id
    if caller.organization_id is not None:
        if organization_id not in (None, caller.organization_id):
            raise not_found("organization")
        organization_id = caller.organization_id
    async with db.write_transaction():
        if organization_id is not None:
            await _org_row(caller, organization_id)
        view, secret = await webhooks.create_endpoint(
            settings_of(request),
            data.url,
            event_types=data.event_types,
            organization_id=organization_id,
            description=data.description,
            actor_id=caller.key_id,
        )
    created = WebhookEndpointCreated(**msgspec.structs.asdict(_endpoint(view)), secret=secret)
    return Response(created, status_code=201, headers={"Cache-Control": "no-store"})


@get(ENDPOINTS + "/{endpoint_id:str}", opt=_opt("webhooks:read"), responses=errors(), tags=["webhooks"])
async def get_webhook_endpoint(request: Request[Any, Any, Any], endpoint_id: PathId) -> WebhookEndpoint:
    """One endpoint (never its secret)."""
    try:
        view = await webhooks.get_endpoint(endpoint_id, organization_id=caller_of(request).organization_id)
    except webhooks.NotFound:
        raise not_found("webhook endpoint") from None
    return _endpoint(view)


@patch(ENDPOINTS + "/{endpoint_id:str}", opt=_opt("webhooks:write"), responses=errors(), tags=["webhooks"])
async def update_webhook_endpoint(
    request: Request[Any, Any, Any], endpoint_id: PathId, data: JSONBody[WebhookEndpointUpdate]
) -> WebhookEndpoint:
    """Change the URL, event types or description, or enable/disable the endpoint."""
    caller = caller_of(request)
    try:
        async with db.write_transaction():
            view = await webhooks.update_endpoint(
                settings_of(request),
                endpoint_id,
                organization_id=caller.organization_id,
                url=data.url,
                event_types=data.event_types,
                description=data.description,
                enabled=data.enabled,
                actor_id=caller.key_id,
            )
    except webhooks.NotFound:
        raise not_found("webhook endpoint") from None
    return _endpoint(view)


@delete(
    ENDPOINTS + "/{endpoint_id:str}",
    opt=_opt("webhooks:write"),
    responses=errors(),
    tags=["webhooks"],
    status_code=204,
)
async def delete_webhook_endpoint(request: Request[Any, Any, Any], endpoint_id: PathId) -> None:
    """Delete an endpoint and its delivery log; nothing more is sent to it."""
    caller = caller_of(request)
    try:
        async with db.write_transaction():
            await webhooks.delete_endpoint(
                endpoint_id, organization_id=caller.organization_id, actor_id=caller.key_id
            )
    except webhooks.NotFound:
        raise not_found("webhook endpoint") from None


@get(
    ENDPOINTS + "/{endpoint_id:str}/deliveries",
    opt=_opt("webhooks:read"),
    responses=errors(),
    tags=["webhooks"],
)
async def list_webhook_deliveries(
    request: Request[Any, Any, Any], endpoint_id: PathId
) -> WebhookDeliveryPage:
    """The endpoint's latest deliveries, newest first, each with its attempts (status, code, duration, error)."""
    try:
        views = await webhooks.list_deliveries(
            endpoint_id, organization_id=caller_of(request).organization_id
        )
    except webhooks.NotFound:
        raise not_found("webhook endpoint") from None
    return WebhookDeliveryPage(data=[_delivery(v) for v in views], next=None)


@post(
    "/webhook-events/{event_id:str}/replay",
    opt=_opt("webhooks:write"),
    responses=errors(),
    tags=["webhooks"],
    status_code=202,
)
async def replay_webhook_event(
    request: Request[Any, Any, Any], event_id: PathId, idempotency_key: IdempotencyKey = None
) -> Response[WebhookReplay]:
    """Send one event again, with its original ``webhook-id``, to every enabled endpoint it was meant for."""
    caller = caller_of(request)
    try:
        async with db.write_transaction():
            ids = await webhooks.replay_event(
                event_id, organization_id=caller.organization_id, actor_id=caller.key_id
            )
    except webhooks.NotFound:
        raise not_found("webhook event") from None
    await delivery.enqueue(portal_state(request).jobs, ids)
    return Response(WebhookReplay(delivery_ids=ids), status_code=202)


# --- admin-portal setup links ------------------------------------------------------------------------------


@post(
    "/organizations/{organization_id:str}/portal-links",
    opt=_opt("portal_links:write"),
    responses=errors(),
    tags=["portal links"],
)
async def create_portal_link(
    request: Request[Any, Any, Any],
    organization_id: PathId,
    data: JSONBody[PortalLinkCreate],
    idempotency_key: IdempotencyKey = None,
) -> Response[PortalLink]:
    """A one-time setup link for an IT admin of the organization: opening it gives a session limited to the
    organization and the intent (``sso``, ``scim`` or ``domain_verification``), no account needed."""
    caller = caller_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        made = await links.create_link(
            settings_of(request),
            organization_id,
            data.intent,
            ttl=data.ttl,
            created_by=caller.key_id,
            ip=caller.ip,
        )
    link = PortalLink(
        id=made.id,
        organization_id=made.organization_id,
        intent=made.intent,
        url=made.url,
        expires_at=made.expires_at,
    )
    return Response(link, status_code=201, headers={"Cache-Control": "no-store"})


@delete(
    "/organizations/{organization_id:str}/portal-links/{link_id:str}",
    opt=_opt("portal_links:write"),
    responses=errors(),
    tags=["portal links"],
    status_code=204,
)
async def revoke_portal_link(
    request: Request[Any, Any, Any], organization_id: PathId, link_id: PathId
) -> None:
    """Revoke a setup link (and end the session it opened)."""
    caller = caller_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        revoked = await links.revoke_link(link_id, organization_id=organization_id, ip=caller.ip)
    if not revoked:
        raise not_found("portal link")


HANDLERS = [
    list_webhook_endpoints,
    create_webhook_endpoint,
    get_webhook_endpoint,
    update_webhook_endpoint,
    delete_webhook_endpoint,
    list_webhook_deliveries,
    replay_webhook_event,
    create_portal_link,
    revoke_portal_link,
]

"""Webhook tests: settings that allow loopback receivers, a receiver, and helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from portal.core import db
from portal.core.settings import Settings
from portal.core.tables import WebhookDelivery, WebhookEvent
from portal.webhooks import service
from tests.portal.webhooks.receiver import Receiver, receiver


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Loopback receivers: the SSRF rule would refuse them (tests for the rule build their own settings).
    return msgspec.structs.replace(settings, webhook_allow_private_addresses=True, webhook_timeout=5)


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as found:
        yield found


async def subscribe(
    settings: Settings, target: Receiver, *types: str, organization_id: str | None = None
) -> service.EndpointView:
    """An endpoint for ``target`` (whose secret it learns), committed."""
    async with db.write_transaction():
        endpoint, secret = await service.create_endpoint(
            settings, target.url, event_types=types, organization_id=organization_id
        )
    target.secret = secret
    return endpoint


async def events_of(event_type: str | None = None) -> list[dict[str, Any]]:
    query = WebhookEvent.select().order_by(WebhookEvent.created_at).order_by(WebhookEvent.id)
    if event_type is not None:
        query = query.where(WebhookEvent.type == event_type)
    return list(await query.output(load_json=True))


async def deliveries() -> list[dict[str, Any]]:
    return list(await WebhookDelivery.select().order_by(WebhookDelivery.created_at))

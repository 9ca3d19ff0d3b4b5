"""A request reads the enabled webhook endpoints once (events._enabled_endpoints); a change to an endpoint
within the request drops what it read, so the request's later events reach the new endpoint too."""

from __future__ import annotations

import pytest
from piccolo.engine.base import Engine

from portal.core import db as portal_db
from portal.core.settings import Settings
from portal.webhooks import events, service
from tests.portal.webhooks.conftest import deliveries
from tests.portal.webhooks.receiver import Receiver

pytestmark = pytest.mark.db


async def test_an_endpoint_made_during_the_request_gets_its_later_events(
    db: Engine, settings: Settings, hook: Receiver
) -> None:
    token = events._endpoint_cache.set({})  # what DispatchMiddleware sets for each request
    try:
        async with portal_db.write_transaction():
            await events.emit("user.created", organization_id=None, data={"target": "usr_1"})
            endpoint, _ = await service.create_endpoint(settings, hook.url)
            await events.emit("user.created", organization_id=None, data={"target": "usr_2"})
            endpoint_b, _ = await service.create_endpoint(settings, hook.url + "/b")
            await service.update_endpoint(settings, endpoint_b.id, enabled=False)
            await events.emit("user.created", organization_id=None, data={"target": "usr_3"})
    finally:
        events._endpoint_cache.reset(token)
    found = {(row["endpoint"], row["event"]) for row in await deliveries()}
    assert len(found) == 2
    assert {endpoint_id for endpoint_id, _ in found} == {endpoint.id}

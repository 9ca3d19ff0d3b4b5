"""With Redis: the web process only queues the request's deliveries; an arq worker sends them."""

from __future__ import annotations

import msgspec
import pytest
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core.settings import Settings
from portal.jobs import ArqQueue, make_worker
from portal.web.app import create_app
from portal.web.registry import WidgetRegistry
from portal.webhooks import delivery
from tests.conftest import empty_redis, run_burst_worker, serve
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in
from tests.portal.webhooks.conftest import deliveries, subscribe
from tests.portal.webhooks.receiver import Receiver

pytestmark = pytest.mark.db


async def test_the_web_queues_and_an_arq_worker_delivers(
    settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry, hook: Receiver
) -> None:
    redis_settings = msgspec.structs.replace(settings, redis_url=await empty_redis())
    acme = await make_org("acme", "Acme")
    alice = await make_user("alice@acme.test")
    await make_member(acme, alice, ["admin"])
    await subscribe(redis_settings, hook, "organization.updated")
    app = create_app(redis_settings, engine=db, policy=policy, registry=registry)
    assert isinstance(app.state.jobs, ArqQueue)
    async with serve(app) as client:
        await sign_in(client, alice, acme)
        token = await csrf_token(client, "/ui/")
        response = await client.post(
            "/ui/organization/settings",
            data={
                "_csrf_token": token,
                "name": "acme",
                "display_name": "Acme Corp",
                "allowed_email_domains": "",
            },
            headers={"accept": "text/html"},
        )
        assert response.status_code == 303
    [row] = await deliveries()
    assert row["status"] == "pending" and hook.requests == []  # the web process only queued it
    worker = make_worker(
        redis_settings,
        jobs={"webhook_deliver": delivery.deliver},
        crons=[],
        burst=True,
        poll_delay=0,
        handle_signals=False,
    )
    await run_burst_worker(worker, db)
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    [received] = hook.requests
    assert received.error == "" and received.verified["type"] == "organization.updated"
    [row] = await deliveries()
    assert row["status"] == "delivered"

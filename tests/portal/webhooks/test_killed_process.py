"""A web process killed between its commit and the delivery loses no event: the dispatch cron of a worker
(or of any other process) claims the delivery once the dead process's lease runs out, and sends it once."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from piccolo.engine.base import Engine

from portal.auth import sessions
from portal.core import clock
from portal.core.settings import Settings
from portal.jobs import InlineQueue
from portal.webhooks import delivery
from tests.conftest import POLICY_DIR, FrozenClock, free_port, portal_serve
from tests.factories import make_member, make_org, make_user
from tests.portal.webhooks.conftest import deliveries, events_of, subscribe
from tests.portal.webhooks.receiver import receiver

pytestmark = pytest.mark.db


async def test_a_web_process_killed_mid_delivery_loses_no_event(
    db: Engine, settings: Settings, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = await make_org("acme")
    alice = await make_user("alice@acme.test")
    await make_member(acme, alice, ["admin"])
    token, session_id = await sessions.create_session(
        alice["id"], auth_method="test", organization_id=acme["id"]
    )
    # The receiver never answers the first request: the web process is still sending when it is killed.
    with receiver(swallow=1) as hook:
        await subscribe(settings, hook, "user.logout")
        port = free_port()
        env = {
            "PORTAL_DATABASE_URL": database_url,
            "PORTAL_POLICY_DIR": str(POLICY_DIR),
            "PORTAL_DATA_DIR": str(tmp_path / "var"),
            "PORTAL_SECRET_KEY": settings.secret_key,
            "PORTAL_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
            "PORTAL_WEBHOOK_DISPATCH_INTERVAL": "1h",  # only the request's own job sends, then the worker
            "PORTAL_LOG_LEVEL": "WARNING",
        }
        with portal_serve(env, port, tmp_path / "server.log") as process:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers={"accept": "text/html"}
            ) as web:
                web.cookies.set(sessions.cookie_name(settings), token)
                page = await web.get("/ui/")
                csrf = page.text.split('name="_csrf_token" value="', 1)[1].split('"', 1)[0]
                signed_out = await web.post("/logout", data={"_csrf_token": csrf})
                assert signed_out.status_code == 303
            assert await asyncio.to_thread(hook.wait_arrived, 1), "the web process never started sending"
            process.kill()  # SIGKILL: no shutdown, no cleanup, the send is lost with it
            process.wait()
        # Committed before the kill: the session end, the event and its delivery, leased by the dead process.
        [event] = await events_of("user.logout")
        assert event["data"]["session_id"] == session_id
        [owed] = await deliveries()
        assert owed["status"] == "pending" and owed["attempts"] == 0 and owed["lease_until"] is not None
        worker = InlineQueue(settings, run_crons=False)
        assert await delivery.dispatch(worker.context) == {"delivered": 0, "failed": 0}  # lease still held
        # The dead process's lease (its own settings: the default timeout) runs out within minutes.
        later = FrozenClock(datetime.now(UTC) + timedelta(minutes=5))
        monkeypatch.setattr(clock, "utcnow", later)
        assert await delivery.dispatch(worker.context) == {"delivered": 1, "failed": 0}
        assert hook.successes() == Counter({event["id"]: 1})
        assert hook.requests[0].error == "" and hook.requests[0].verified["type"] == "user.logout"
    [row] = await deliveries()
    assert row["status"] == "delivered" and row["attempts"] == 1


async def test_events_committed_outside_a_request_are_sent_by_the_cron(
    db: Engine, settings: Settings, hook: Any
) -> None:
    await subscribe(settings, hook)
    await make_org("acme")  # the CLI, a job, the demo: no request to queue a send job
    worker = InlineQueue(settings, run_crons=False)
    assert await delivery.dispatch(worker.context) == {"delivered": 1, "failed": 0}
    assert [r.verified["type"] for r in hook.requests] == ["organization.created"]

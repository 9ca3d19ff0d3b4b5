"""Domain verification jobs: with Redis (the web process enqueues, an arq burst worker checks) and embedded
(the web process runs the same job functions itself), against a loopback DNS server."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import Domain
from portal.jobs import (
    ArqQueue,
    InlineQueue,
    JobContext,
    load_job_modules,
    make_worker,
    registered_crons,
    registered_jobs,
    worker_options,
)
from portal.web.app import create_app
from portal.web.registry import WidgetRegistry
from tests.conftest import REDIS_URL, ROOT, empty_redis, run_burst_worker, serve
from tests.dnsserver import LoopbackDNS, Zone, dns_server, zone
from tests.factories import make_member, make_org, make_user, sign_in
from widgets.domains import jobs as domain_jobs
from widgets.domains.verification import record_name, record_value

__all__ = ["dns_server", "zone"]

HTML = {"accept": "text/html"}
URL = "/ui/organization/domains"


@pytest.fixture
async def redis_settings(settings: Settings, dns_server: LoopbackDNS) -> Settings:
    return msgspec.structs.replace(dns_server.settings(settings), redis_url=await empty_redis())


@pytest.fixture
async def admin(db: Engine) -> dict[str, Any]:
    org = await make_org("acme", "Acme", features=["domain_verification"])
    user = await make_user("alice@acme.test")
    await make_member(org, user, ["admin"])
    return {"org": org, "user": user}


async def add_domain(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    token = re.search(r'name="_csrf_token" value="([^"]+)"', (await client.get(URL, headers=HTML)).text)
    assert token
    response = await client.post(URL, data={"_csrf_token": token.group(1), "domain": name}, headers=HTML)
    assert response.status_code == 303, response.text
    row = await Domain.select().where(Domain.domain == name).first()
    assert row is not None
    return dict(row)


async def verify_now(client: httpx.AsyncClient, domain_id: str) -> httpx.Response:
    token = re.search(r'name="_csrf_token" value="([^"]+)"', (await client.get(URL, headers=HTML)).text)
    assert token
    return await client.post(f"{URL}/{domain_id}/verify", data={"_csrf_token": token.group(1)}, headers=HTML)


async def burst(settings: Settings, engine: Engine, **jobs: Any) -> Any:
    worker = make_worker(settings, jobs=jobs, crons=[], burst=True, poll_delay=0, handle_signals=False)
    return await run_burst_worker(worker, engine)


async def test_with_redis_the_web_enqueues_and_the_worker_verifies(
    redis_settings: Settings,
    db: Engine,
    policy: PolicyEngine,
    registry: WidgetRegistry,
    admin: dict[str, Any],
    zone: Zone,
) -> None:
    app = create_app(redis_settings, engine=db, policy=policy, registry=registry)
    assert isinstance(app.state.jobs, ArqQueue)
    async with serve(app) as client:
        await sign_in(client, admin["user"], admin["org"])
        row = await add_domain(client, "example.com")
        zone.publish(record_name("example.com"), record_value(row["verification_token"]))
        await verify_now(client, row["id"])
        again = await verify_now(client, row["id"])  # same job id: queued once
        assert "already queued" in (await client.get(again.headers["location"], headers=HTML)).text
        page = await client.get(URL, headers=HTML)
        assert "Checking the TXT record now" in page.text and "data-refresh" in page.text
        stored = await Domain.select(Domain.status).where(Domain.id == row["id"]).first()
        assert stored == {"status": "pending"}  # the web process only enqueued

        worker = await burst(redis_settings, db, verify_domain=domain_jobs.verify_domain)
        assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)

        page = await client.get(URL, headers=HTML)
        assert '<span class="badge ok">Verified</span>' in page.text
        assert "data-refresh" not in page.text
    stored = await Domain.select(Domain.status, Domain.verified_domain).where(Domain.id == row["id"]).first()
    assert stored == {"status": "verified", "verified_domain": "example.com"}


async def test_a_finished_check_can_be_queued_again(
    redis_settings: Settings, db: Engine, admin: dict[str, Any], zone: Zone
) -> None:
    """Job ids deduplicate while queued or running only: arq keeps no result that would block "Verify now"."""
    now = clock.utcnow()
    row = Domain(
        organization=admin["org"]["id"], domain="example.com", verification_token="t" * 32, pending_since=now
    )
    await row.save()
    queue = ArqQueue(REDIS_URL)
    job_id = f"verify_domain:{row.id}"
    assert await queue.enqueue("verify_domain", row.id, job_id=job_id)
    assert not await queue.enqueue("verify_domain", row.id, job_id=job_id)
    await burst(redis_settings, db, verify_domain=domain_jobs.verify_domain)
    first = await Domain.select(Domain.last_checked_at).where(Domain.id == row.id).first()
    assert first is not None and first["last_checked_at"] is not None
    assert await queue.enqueue("verify_domain", row.id, job_id=job_id)
    worker = await burst(redis_settings, db, verify_domain=domain_jobs.verify_domain)
    assert worker.jobs_complete == 1
    await queue.stop()


async def test_the_scheduled_check_runs_on_a_worker(
    redis_settings: Settings, db: Engine, admin: dict[str, Any], zone: Zone
) -> None:
    long_ago = clock.utcnow() - timedelta(hours=80)
    rows = []
    for name, since in (("a.example.com", clock.utcnow()), ("b.example.com", long_ago)):
        row = Domain(
            organization=admin["org"]["id"], domain=name, verification_token=name[0] * 32, pending_since=since
        )
        await row.save()
        rows.append(row)
        zone.publish(record_name(name), record_value(row.verification_token))
    queue = ArqQueue(REDIS_URL)
    assert await queue.enqueue("check_pending_domains", job_id="cron:check_pending_domains:test")
    await queue.stop()
    await burst(redis_settings, db, check_pending_domains=domain_jobs.check_pending_domains)
    statuses = {r["domain"]: r["status"] for r in await Domain.select(Domain.domain, Domain.status)}
    assert statuses == {"a.example.com": "verified", "b.example.com": "failed"}


def test_the_worker_runs_both_jobs_and_a_unique_cron_on_the_configured_interval(settings: Settings) -> None:
    load_job_modules()
    assert registered_jobs()["verify_domain"] is domain_jobs.verify_domain
    [cron] = [c for c in registered_crons() if c.name == "check_pending_domains"]
    configured = msgspec.structs.replace(settings, redis_url=REDIS_URL, domain_check_interval=300)
    assert cron.interval(configured) == 300
    options = worker_options(configured)
    assert {"verify_domain", "check_pending_domains"} <= {f.name for f in options["functions"]}
    [arq_cron] = [c for c in options["cron_jobs"] if c.name == "cron:check_pending_domains"]
    assert arq_cron.unique
    assert arq_cron.minute == {0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55}
    verify = next(f for f in options["functions"] if f.name == "verify_domain")
    assert verify.keep_result_s == 0


async def test_embedded_queue_runs_the_same_jobs_in_process(
    settings: Settings, dns_server: LoopbackDNS, db: Engine, admin: dict[str, Any], zone: Zone
) -> None:
    settings = dns_server.settings(settings)
    row = Domain(
        organization=admin["org"]["id"],
        domain="example.com",
        verification_token="x" * 32,
        pending_since=clock.utcnow(),
    )
    await row.save()
    zone.publish(record_name("example.com"), record_value(row.verification_token))
    queue = InlineQueue(settings, run_crons=False)
    await queue.start()
    assert await queue.enqueue("check_pending_domains")
    await queue.drain()
    await queue.stop()
    stored = await Domain.select(Domain.status).where(Domain.id == row.id).first()
    assert stored == {"status": "verified"}
    result = await domain_jobs.check_pending_domains(JobContext(settings, queue))
    assert result == {
        "checked": 0,
        "verified": 0,
        "not_found": 0,
        "retry": 0,
        "lost": 0,
        "claims_failed": 0,
        "expired": 0,
    }


async def test_embedded_cron_timer_checks_pending_domains(
    settings: Settings,
    dns_server: LoopbackDNS,
    db: Engine,
    admin: dict[str, Any],
    zone: Zone,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    import portal.jobs as jobs_module

    settings = msgspec.structs.replace(dns_server.settings(settings), domain_check_interval=1)
    load_job_modules()
    crons = {name: c for name, c in jobs_module._CRONS.items() if name == "check_pending_domains"}
    monkeypatch.setattr(jobs_module, "_CRONS", crons)
    row = Domain(
        organization=admin["org"]["id"],
        domain="example.com",
        verification_token="y" * 32,
        pending_since=clock.utcnow(),
    )
    await row.save()
    zone.publish(record_name("example.com"), record_value(row.verification_token))
    queue = InlineQueue(settings)
    await queue.start()
    try:
        for _ in range(40):
            stored = await Domain.select(Domain.status).where(Domain.id == row.id).first()
            if stored == {"status": "verified"}:
                break
            await asyncio.sleep(0.1)
    finally:
        await queue.stop()
    assert stored == {"status": "verified"}


def test_procfile_runs_a_worker() -> None:
    procfile = (ROOT / "Procfile").read_text().splitlines()
    assert any(line.startswith("worker: portal worker") for line in procfile)

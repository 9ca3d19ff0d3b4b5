"""The checks behind the jobs: the scheduled pass over pending domains (window, batches, bounded
concurrency), one check by id, and one owner per domain under concurrent verification."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, cast

import msgspec
import pytest
from piccolo.engine.base import Engine

from portal.core import clock
from portal.core import db as portal_db
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Domain
from tests.dnsserver import LoopbackDNS, Mode, Zone
from tests.factories import make_org
from widgets.domains import service, verification
from widgets.domains.service import TAKEN, check_domain, check_pending_domains
from widgets.domains.verification import Finding, record_name, record_value

FEATURE = ["domain_verification"]


async def claim(
    org: dict[str, Any], domain: str, *, age: timedelta = timedelta(0), **values: Any
) -> dict[str, Any]:
    """A pending domain of ``org``, added ``age`` ago, with a fresh token."""
    at = clock.utcnow() - age
    row = Domain(
        organization=org["id"],
        domain=domain,
        verification_token=verification.new_token(),
        pending_since=at,
        created_at=at,
        **values,
    )
    await row.save()
    return await reread(row.id)


async def reread(domain_id: str) -> dict[str, Any]:
    row = await Domain.select().where(Domain.id == domain_id).first()
    assert row is not None
    return cast(dict[str, Any], row)


def publish(zone: Zone, row: dict[str, Any]) -> None:
    zone.publish(record_name(row["domain"]), record_value(row["verification_token"]))


async def events(action: str) -> list[dict[str, Any]]:
    return cast(
        list[dict[str, Any]],
        await AuditEvent.select()
        .where(AuditEvent.action == action)
        .order_by(AuditEvent.at)
        .output(load_json=True),
    )


@pytest.fixture
async def orgs(db: Engine) -> list[dict[str, Any]]:
    return [await make_org(f"org{i}", features=FEATURE) for i in range(3)]


async def test_scheduled_check_records_what_each_lookup_found(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, orgs: list[dict[str, Any]]
) -> None:
    settings = dns_server.settings(settings, timeout=0.5)
    acme = orgs[0]
    found = await claim(acme, "found.example.com")
    publish(zone, found)
    missing = await claim(acme, "missing.example.com")
    wrong = await claim(acme, "wrong.example.com")
    zone.publish(record_name("wrong.example.com"), "portal-verification=someoneelse")
    servfail = await claim(acme, "servfail.example.com")
    zone.set_mode(record_name("servfail.example.com"), Mode.SERVFAIL)
    silent = await claim(acme, "silent.example.com")
    zone.set_mode(record_name("silent.example.com"), Mode.SILENT)
    overdue = await claim(acme, "overdue.example.com", age=timedelta(hours=72, minutes=1))
    publish(zone, overdue)  # too late: the window has closed
    almost = await claim(acme, "almost.example.com", age=timedelta(hours=71, minutes=59))
    done = await claim(acme, "done.example.com", status="verified", verified_domain="done.example.com")
    given_up = await claim(acme, "given-up.example.com", status="failed", failure_reason="Earlier.")

    report = await check_pending_domains(settings)

    assert msgspec.structs.asdict(report) == {
        "checked": 6,
        "verified": 1,
        "not_found": 3,
        "retry": 2,
        "lost": 0,
        "claims_failed": 0,
        "expired": 1,
    }
    after = {
        row["domain"]: await reread(row["id"])
        for row in (found, missing, wrong, servfail, silent, overdue, almost)
    }
    assert after["found.example.com"]["status"] == "verified"
    assert after["found.example.com"]["verified_domain"] == "found.example.com"
    reasons = {
        name: (row["status"], row["failure_reason"])
        for name, row in after.items()
        if name != "found.example.com"
    }
    assert reasons == {
        "missing.example.com": ("pending", "No TXT record found: the record name does not exist in DNS yet."),
        "wrong.example.com": ("pending", verification.REASONS[Finding.MISMATCH]),
        "servfail.example.com": ("pending", "DNS answered with an error (SERVFAIL); we will retry."),
        "silent.example.com": ("pending", "DNS did not answer in time; we will retry."),
        "overdue.example.com": (
            "failed",
            "Not verified within 72 hours: the TXT record was not found in time.",
        ),
        "almost.example.com": ("pending", "No TXT record found: the record name does not exist in DNS yet."),
    }
    for name, row in after.items():
        assert (row["last_checked_at"] is None) == (name == "overdue.example.com"), name
    assert await reread(done["id"]) == done
    assert await reread(given_up["id"]) == given_up
    [verified] = await events("domain.verified")
    assert (verified["target"], verified["actor_id"], verified["organization_id"]) == (
        found["id"],
        None,
        acme["id"],
    )
    [failed] = await events("domain.failed")
    assert failed["target"] == overdue["id"] and failed["actor_id"] is None
    assert failed["details"]["reason"].startswith("Not verified within 72 hours")

    # Idempotent: a second run finds nothing new to verify or fail.
    again = await check_pending_domains(settings)
    assert (again.verified, again.expired, again.checked) == (0, 0, 5)
    assert len(await events("domain.verified")) == 1 and len(await events("domain.failed")) == 1


async def test_the_window_follows_the_setting(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, orgs: list[dict[str, Any]]
) -> None:
    settings = msgspec.structs.replace(dns_server.settings(settings), domain_verification_window=90 * 60)
    row = await claim(orgs[0], "example.com", age=timedelta(minutes=91))
    report = await check_pending_domains(settings)
    assert report.expired == 1 and report.checked == 0
    assert (await reread(row["id"]))["failure_reason"] == (
        "Not verified within 90 minutes: the TXT record was not found in time."
    )


async def test_many_domains_in_small_batches_with_few_lookups_at_once(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, orgs: list[dict[str, Any]]
) -> None:
    settings = dns_server.settings(settings)
    rows = [await claim(orgs[i % 3], f"d{i}.example.com") for i in range(23)]
    for row in rows[::2]:
        publish(zone, row)
    for row in rows[:3]:
        await claim(orgs[(rows.index(row) + 1) % 3], row["domain"])  # competing claims by other organizations
    zone.queries = 0
    report = await check_pending_domains(settings, batch_size=4, concurrency=3)
    # 12 published: 12 verified, and the 2 competing claims on published domains fail; the claim on d1
    # (not published) stays pending, looked up like the rest. A competing claim failed before the scan
    # reached it is not looked up at all.
    assert report.verified == 12
    assert report.claims_failed == 2
    assert 24 <= report.checked <= 26
    assert (report.not_found, report.retry, report.lost) == (report.checked - 12, 0, 0)
    statuses = {row["domain"]: (await reread(row["id"]))["status"] for row in rows}
    assert [name for name, status in statuses.items() if status == "verified"] == [
        r["domain"] for r in rows[::2]
    ]
    assert all(
        status == "pending"
        for name, status in statuses.items()
        if name not in {r["domain"] for r in rows[::2]}
    )
    assert zone.queries >= 23


async def test_first_claim_wins_when_two_organizations_publish_their_records(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, orgs: list[dict[str, Any]]
) -> None:
    settings = dns_server.settings(settings)
    first = await claim(orgs[1], "example.com", age=timedelta(hours=2))
    second = await claim(orgs[0], "example.com", age=timedelta(hours=1))
    third = await claim(orgs[2], "example.com")  # never published
    zone.publish(
        record_name("example.com"),
        record_value(second["verification_token"]),
        record_value(first["verification_token"]),
    )
    report = await check_pending_domains(settings)
    assert (report.verified, report.lost + report.claims_failed) == (1, 2)
    assert (await reread(first["id"]))["status"] == "verified"
    for loser in (second, third):
        row = await reread(loser["id"])
        assert (row["status"], row["failure_reason"], row["verified_domain"]) == ("failed", TAKEN, None)
    failed = await events("domain.failed")
    assert sorted(e["organization_id"] for e in failed) == sorted([orgs[0]["id"], orgs[2]["id"]])
    assert all(e["details"] == {"domain": "example.com", "reason": TAKEN} for e in failed)


async def test_claims_left_pending_by_an_interrupted_check_fail_at_the_next_one(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, orgs: list[dict[str, Any]]
) -> None:
    """A check killed between its two transactions (the verification committed, the other claims not yet
    failed): the next run fails those claims, without looking them up, and audits each once."""
    settings = dns_server.settings(settings)
    owner = await claim(orgs[0], "example.org", age=timedelta(hours=2))
    other = await claim(orgs[1], "example.org", age=timedelta(hours=1))
    unrelated = await claim(orgs[2], "unrelated.example")
    now = clock.utcnow()
    await Domain.update(
        {Domain.status: "verified", Domain.verified_domain: "example.org", Domain.verified_at: now}
    ).where(Domain.id == owner["id"])

    report = await check_pending_domains(settings)
    assert report.claims_failed == 1
    row = await reread(other["id"])
    assert (row["status"], row["failure_reason"]) == ("failed", TAKEN)
    assert (await reread(unrelated["id"]))["status"] == "pending"
    assert [e["target"] for e in await events("domain.failed")] == [other["id"]]
    again = await check_pending_domains(settings)
    assert again.claims_failed == 0
    assert len(await events("domain.failed")) == 1


async def test_concurrent_checks_leave_exactly_one_owner(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, orgs: list[dict[str, Any]]
) -> None:
    """Both organizations' records are published and both checks run at once: the database decides."""
    settings = dns_server.settings(settings)
    for attempt in range(5):
        name = f"race{attempt}.example.com"
        claims = [await claim(org, name) for org in orgs]
        zone.publish(record_name(name), *(record_value(c["verification_token"]) for c in claims))
        results = await asyncio.gather(*(check_domain(settings, c["id"]) for c in claims))
        assert all(r is not None and r.finding is Finding.FOUND for r in results)
        rows = [await reread(c["id"]) for c in claims]
        assert sorted(r["status"] for r in rows) == ["failed", "failed", "verified"]
        assert [r["verified_domain"] for r in rows if r["status"] == "verified"] == [name]
        assert all(r["failure_reason"] == TAKEN for r in rows if r["status"] == "failed")
    assert len(await events("domain.verified")) == 5
    assert len(await events("domain.failed")) == 10


async def test_scheduled_check_and_verify_now_at_once_leave_one_owner(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, orgs: list[dict[str, Any]]
) -> None:
    settings = dns_server.settings(settings)
    for attempt in range(3):
        names = [f"r{attempt}-{i}.example.com" for i in range(4)]
        claims = [await claim(org, name) for name in names for org in orgs]
        for name in names:
            tokens = [c["verification_token"] for c in claims if c["domain"] == name]
            zone.publish(record_name(name), *map(record_value, tokens))
        await asyncio.gather(
            check_pending_domains(settings, batch_size=3, concurrency=4),
            *(check_domain(settings, c["id"]) for c in claims[::2]),
        )
        for name in names:
            rows = await Domain.select().where(Domain.domain == name)
            assert sorted(r["status"] for r in rows) == ["failed", "failed", "verified"], name
        await Domain.delete(force=True)


async def test_the_database_refuses_a_second_owner(orgs: list[dict[str, Any]]) -> None:
    await claim(orgs[0], "example.com", status="verified", verified_domain="example.com")
    with pytest.raises(Exception) as raised:  # noqa: PT011 - the driver's own exception type
        await claim(orgs[1], "example.com", status="verified", verified_domain="example.com")
    assert portal_db.is_unique_violation(raised.value)


async def test_check_by_id_skips_what_is_not_pending(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, orgs: list[dict[str, Any]]
) -> None:
    settings = dns_server.settings(settings)
    verified = await claim(orgs[0], "v.example.com", status="verified", verified_domain="v.example.com")
    failed = await claim(orgs[0], "f.example.com", status="failed", failure_reason="Earlier.")
    zone.queries = 0
    assert await check_domain(settings, verified["id"]) is None
    assert await check_domain(settings, failed["id"]) is None
    assert await check_domain(settings, "dom_gone") is None
    assert zone.queries == 0
    assert await reread(verified["id"]) == verified and await reread(failed["id"]) == failed


async def test_check_by_id_fails_an_overdue_domain_without_looking_it_up(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, orgs: list[dict[str, Any]]
) -> None:
    settings = dns_server.settings(settings)
    row = await claim(orgs[0], "late.example.com", age=timedelta(days=4))
    publish(zone, row)
    zone.queries = 0
    assert await check_domain(settings, row["id"]) is None
    assert zone.queries == 0
    after = await reread(row["id"])
    assert after["status"] == "failed" and after["failure_reason"].startswith("Not verified within 72 hours")


def test_durations_read_naturally() -> None:
    assert service.describe_duration(72 * 3600) == "72 hours"
    assert service.describe_duration(3600) == "1 hour"
    assert service.describe_duration(15 * 60) == "15 minutes"
    assert service.describe_duration(14 * 86400) == "2 weeks"
    assert service.describe_duration(7 * 86400) == "168 hours"
    assert service.describe_duration(61) == "61 seconds"

"""Domain checks against DESIGN section 9: 10,000 pending domains checked in < 30 s against a loopback DNS
server, with bounded concurrency.

It runs the scheduled check itself (``widgets.domains.service.check_pending_domains``, the body of the
``check_pending_domains`` cron job) over 10,000 pending domains: half have the right TXT record published,
a quarter a wrong value, a quarter nothing (NXDOMAIN). The DNS server (dnslib, tests/dnsserver.py) runs in
a separate process, as a real one would.

Run: .venv/bin/python bench/domains.py [--domains N] [--concurrency C] [--batch B]
Database: a fresh SQLite file (the embedded default), or PORTAL_BENCH_DATABASE_URL=postgresql://.../db
(that database is dropped and created). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from portal.core import clock, db  # noqa: E402
from portal.core.migrate import migrate  # noqa: E402
from portal.core.settings import Settings  # noqa: E402
from portal.core.tables import Domain, Organization  # noqa: E402
from widgets.domains import service, verification  # noqa: E402

TARGET_SECONDS = 30
ORGANIZATIONS = 100


def serve_dns(port_queue: Any, records: dict[str, list[str]], stop: Any) -> None:
    """The DNS server process: publish ``records`` and answer until ``stop`` is set."""
    from tests.dnsserver import LoopbackDNS

    server = LoopbackDNS(threaded=False)
    for name, values in records.items():
        server.zone.publish(name, *values)
    server.start()
    port_queue.put(server.port)
    started = time.process_time()
    stop.wait()
    port_queue.put((server.zone.queries, time.process_time() - started))
    server.stop()


async def prepare(database_url: str, count: int) -> dict[str, list[str]]:
    """A migrated database with ``count`` pending domains; returns the TXT records to publish."""
    if database_url.startswith("postgres"):
        from tests.conftest import recreate_postgres_database

        await recreate_postgres_database(database_url)
    engine = db.bind(db.make_engine(database_url))
    await db.start(engine)
    await migrate()
    now = clock.utcnow()
    orgs = [Organization(name=f"bench-{i}", display_name=f"Bench {i}") for i in range(ORGANIZATIONS)]
    await Organization.insert(*orgs)
    records: dict[str, list[str]] = {}
    rows = []
    for i in range(count):
        name = f"d{i}.bench{i % ORGANIZATIONS}.example"
        token = verification.new_token()
        rows.append(
            Domain(
                organization=orgs[i % ORGANIZATIONS].id,
                domain=name,
                verification_token=token,
                pending_since=now,
                created_at=now,
            )
        )
        if i % 2 == 0:
            records[verification.record_name(name)] = [verification.record_value(token)]
        elif i % 4 == 1:
            records[verification.record_name(name)] = [verification.record_value(verification.new_token())]
    for start in range(0, count, 1000):
        await Domain.insert(*rows[start : start + 1000])
    return records


async def run(args: argparse.Namespace, database_url: str, port: int) -> tuple[float, service.CheckReport]:
    settings = Settings(
        database_url=database_url,
        dns_nameservers=["127.0.0.1"],
        dns_port=port,
        dns_timeout=5.0,
        secret_key="bench-" + "x" * 32,
    )
    started, cpu = time.perf_counter(), time.process_time()
    report = await service.check_pending_domains(
        settings, batch_size=args.batch, concurrency=args.concurrency
    )
    args.cpu_seconds = time.process_time() - cpu
    return time.perf_counter() - started, report


async def counts() -> dict[str, int]:
    from piccolo.query.functions.aggregate import Count

    rows = await Domain.select(Domain.status, Count(Domain.id, alias="n")).group_by(Domain.status)
    return {row["status"]: row["n"] for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=service.CONCURRENCY)
    parser.add_argument("--batch", type=int, default=service.BATCH_SIZE)
    args = parser.parse_args()
    database_url = os.environ.get("PORTAL_BENCH_DATABASE_URL") or (
        f"sqlite:///{tempfile.mkdtemp(prefix='portal-bench-')}/portal.sqlite3"
    )
    engine_name = "postgresql" if database_url.startswith("postgres") else "sqlite"
    loop = asyncio.new_event_loop()
    setup_started = time.perf_counter()
    records = loop.run_until_complete(prepare(database_url, args.domains))
    setup_seconds = time.perf_counter() - setup_started

    context = multiprocessing.get_context("spawn")
    port_queue, stop = context.Queue(), context.Event()
    dns = context.Process(target=serve_dns, args=(port_queue, records, stop), daemon=True)
    dns.start()
    port = port_queue.get(timeout=60)
    try:
        seconds, report = loop.run_until_complete(run(args, database_url, port))
        statuses = loop.run_until_complete(counts())
    finally:
        stop.set()
        queries, dns_cpu = port_queue.get(timeout=10)
        dns.join(timeout=10)
        loop.run_until_complete(db.stop(db.current_engine()))
        loop.close()

    expected_verified = (args.domains + 1) // 2
    ok = (
        seconds < TARGET_SECONDS
        and report.checked == args.domains
        and report.verified == expected_verified == statuses.get("verified", 0)
        and report.retry == 0
    )
    rate = args.domains / seconds
    print(f"domain checks: {args.domains} pending domains, {engine_name}, loopback DNS (dnslib, own process)")
    print(f"  {'setup (insert domains)':<34}{setup_seconds:>9.2f} s")
    print(f"  {'check all (target < 30 s)':<34}{seconds:>9.2f} s   {rate:,.0f} domains/s")
    print(f"  {'lookups in flight / batch':<34}{args.concurrency:>9} / {args.batch}")
    print(f"  {'DNS queries answered':<34}{queries:>9}")
    print(f"  {'CPU: checks / DNS server':<34}{args.cpu_seconds:>9.2f} s / {dns_cpu:.2f} s")
    for key in ("checked", "verified", "not_found", "retry"):
        print(f"  {key:<34}{getattr(report, key):>9}")
    print(f"  {'rows verified / pending':<34}{statuses.get('verified', 0):>9} / {statuses.get('pending', 0)}")
    print(
        json.dumps(
            {
                "bench": "domains",
                "domains": args.domains,
                "seconds": round(seconds, 2),
                "per_second": round(rate),
                "verified": report.verified,
                "not_found": report.not_found,
                "retry": report.retry,
                "concurrency": args.concurrency,
                "batch": args.batch,
                "database": engine_name,
                "cpu_seconds": round(args.cpu_seconds, 2),
                "dns_server_cpu_seconds": round(dns_cpu, 2),
                "target_seconds": TARGET_SECONDS,
                "ok": ok,
            }
        )
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

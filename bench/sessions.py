"""Session sweep speed against DESIGN section 9: 1,000,000 sessions checked in < 10 s on PostgreSQL.

Creates (and afterwards drops) its own database, migrates it, generates 1,000,000 sessions across five
session policies with set-based SQL (10% of them expired: by the absolute timeout, the idle timeout or
both), times ``portal.sweep.sweep_expired``, then checks that exactly the expired sessions were revoked,
each with the reason a request would have recorded. A second sweep (nothing left to revoke) is timed too.

Run: .venv/bin/python bench/sessions.py   (the last line printed is one JSON object)
     PORTAL_BENCH_DATABASE_URL=postgresql://user@host:5432/some_scratch_db  to use another server
     PORTAL_BENCH_SESSIONS=100000                                             for a quicker run
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import asyncpg  # noqa: E402

from portal.auth import accounts  # noqa: E402
from portal.auth.sweep import BATCH_SIZE, sweep_expired  # noqa: E402
from portal.core import clock, db  # noqa: E402
from portal.core.migrate import migrate  # noqa: E402
from portal.core.settings import Settings  # noqa: E402
from portal.core.tables import Organization  # noqa: E402

DATABASE_URL = os.environ.get(
    "PORTAL_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/portal_bench_sessions"
)
SESSIONS = int(os.environ.get("PORTAL_BENCH_SESSIONS", "1000000"))
TARGET_SECONDS = 10.0
#: The whole run gives up after this long (it takes about 80 s on a 2-core machine, mostly generating rows).
DEADLINE_SECONDS = 300
HOUR, DAY = 3600, 86400
SETTINGS = Settings(database_url=DATABASE_URL, session_absolute_timeout=7 * DAY, session_idle_timeout=DAY)

#: (label, organization name or None, custom (absolute, idle) or None). Session i belongs to POLICIES[(i // 10) % 5].
POLICIES: list[tuple[str, str | None, tuple[int, int] | None]] = [
    ("no active organization", None, None),
    ("application defaults", "bench-inherit", None),
    ("custom, stricter (8 h / 30 min)", "bench-strict", (8 * HOUR, 30 * 60)),
    ("custom, looser (30 d / 7 d)", "bench-loose", (30 * DAY, 7 * DAY)),
    ("custom, mixed (2 d / 36 h)", "bench-mixed", (2 * DAY, 36 * HOUR)),
]

# Session i (1-based) is expired when i % 10 = 0; then (i / 10) % 3 picks how: 0 absolute, 1 idle, 2 both
# (which a request records as absolute). Fresh sessions get ages spread over their policy's limits.
GENERATE = """
INSERT INTO portal_session (id, token_hash, "user", active_organization, auth_method, ip, user_agent,
                            created_at, authenticated_at, last_seen_at)
SELECT 'ses_bench_' || lpad(g.i::text, 7, '0'),
       encode(sha256(convert_to('bench-session-' || g.i, 'UTF8')), 'hex'),
       $1, ($2::text[])[(g.i / 10) % 5 + 1], 'bench', '127.0.0.1', 'bench',
       c.created, c.created, c.seen
FROM generate_series(1::bigint, $3::bigint) AS g(i)
CROSS JOIN LATERAL (
    SELECT ($4::int[])[(g.i / 10) % 5 + 1]::bigint AS a, ($5::int[])[(g.i / 10) % 5 + 1]::bigint AS d,
           g.i % 10 = 0 AS expired, (g.i / 10) % 3 AS how
) AS t
CROSS JOIN LATERAL (
    SELECT created, CASE
             WHEN NOT t.expired THEN GREATEST(created, $6::timestamptz
                                              - make_interval(secs => 60 + (g.i * 104729) % (t.d - 120)))
             WHEN t.how = 0 THEN $6::timestamptz - make_interval(secs => 60)
             ELSE $6::timestamptz - make_interval(secs => t.d + 1 + g.i % 600)
           END AS seen
    FROM (SELECT CASE
             WHEN NOT t.expired THEN $6::timestamptz - make_interval(secs => 60 + (g.i * 7919) % (t.a - 120))
             WHEN t.how = 1 THEN $6::timestamptz - make_interval(secs => t.a - 60)
             ELSE $6::timestamptz - make_interval(secs => t.a + 1 + g.i % 3600)
           END AS created) AS x
) AS c
"""

VERIFY = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE n % 10 = 0) AS expected,
       count(*) FILTER (WHERE revoked_at IS NOT NULL) AS revoked,
       count(*) FILTER (WHERE revoked_at IS NOT NULL AND n % 10 <> 0) AS wrongly_revoked,
       count(*) FILTER (WHERE revoked_at IS NULL AND n % 10 = 0) AS missed,
       count(*) FILTER (WHERE revoked_at IS NOT NULL AND revoke_reason IS DISTINCT FROM
                        CASE WHEN (n / 10) % 3 = 1 THEN 'idle' ELSE 'absolute' END) AS wrong_reason,
       count(*) FILTER (WHERE revoked_at IS NOT NULL AND revoked_at <> $1::timestamptz) AS wrong_time
FROM (SELECT substr(id, 11)::bigint AS n, revoked_at, revoke_reason FROM portal_session) AS s
"""

PER_POLICY = """
SELECT substr(id, 11)::bigint / 10 % 5 AS policy, count(*) AS sessions,
       count(*) FILTER (WHERE revoke_reason = 'absolute') AS absolute,
       count(*) FILTER (WHERE revoke_reason = 'idle') AS idle
FROM portal_session GROUP BY 1 ORDER BY 1
"""


def effective(custom: tuple[int, int] | None) -> tuple[int, int]:
    absolute, idle = SETTINGS.session_absolute_timeout, SETTINGS.session_idle_timeout
    if custom:
        absolute, idle = min(absolute, custom[0]), min(idle, custom[1])
    return absolute, idle


def duration(seconds: int) -> str:
    for unit, size in (("d", DAY), ("h", HOUR), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


async def admin_execute(statement: str) -> None:
    admin = await asyncpg.connect(DATABASE_URL.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def seed(now: datetime) -> None:
    user = await accounts.create_user("bench@example.test")
    org_ids: list[str | None] = []
    for _label, name, custom in POLICIES:
        if name is None:
            org_ids.append(None)
            continue
        org = await accounts.create_organization(name, name.title())
        if custom:
            await Organization.update(
                {
                    Organization.session_policy_source: "custom",
                    Organization.session_absolute_timeout: custom[0],
                    Organization.session_idle_timeout: custom[1],
                }
            ).where(Organization.id == org["id"])
        org_ids.append(org["id"])
    absolutes = [effective(custom)[0] for *_, custom in POLICIES]
    idles = [effective(custom)[1] for *_, custom in POLICIES]
    # asyncpg directly: the statement takes typed arrays, and one round trip makes the million rows.
    connection = await asyncpg.connect(DATABASE_URL)
    try:
        await connection.execute(GENERATE, user["id"], org_ids, SESSIONS, absolutes, idles, now)
        # What autovacuum does after a bulk load: hint bits, visibility map, statistics.
        await connection.execute("VACUUM ANALYZE portal_session")
        # Flush the load now, so that its checkpoint does not land in the middle of the timed sweep.
        try:
            await connection.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            print("(not allowed to CHECKPOINT: the load's writes may slow the timed sweep)")
    finally:
        await connection.close()


async def run() -> dict[str, Any]:
    name = DATABASE_URL.rsplit("/", 1)[1].split("?")[0]
    await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin_execute(f'CREATE DATABASE "{name}"')
    engine = db.bind(db.make_engine(DATABASE_URL))
    await db.start(engine)
    try:
        await migrate()
        now = clock.utcnow()
        started = time.perf_counter()
        await seed(now)
        generated = time.perf_counter() - started

        started = time.perf_counter()
        result = await sweep_expired(SETTINGS, now)
        seconds = time.perf_counter() - started

        started = time.perf_counter()
        again = await sweep_expired(SETTINGS, now)
        second = time.perf_counter() - started

        connection = await asyncpg.connect(DATABASE_URL)
        try:
            check = dict(await connection.fetchrow(VERIFY, now))
            per_policy = [dict(row) for row in await connection.fetch(PER_POLICY)]
        finally:
            await connection.close()
    finally:
        await db.stop(engine)
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"generated {SESSIONS:,} sessions in {generated:.1f} s; sweep batch size {BATCH_SIZE:,}")
    print()
    print(f"{'policy':34} {'effective absolute / idle':>26} {'sessions':>10} {'absolute':>9} {'idle':>8}")
    for (label, _name, custom), row in zip(POLICIES, per_policy, strict=True):
        absolute, idle = effective(custom)
        limits = f"{duration(absolute)} / {duration(idle)}"
        print(f"{label:34} {limits:>26} {row['sessions']:>10,} {row['absolute']:>9,} {row['idle']:>8,}")
    print()
    print(
        f"sweep: {result.revoked:,} revoked ({result.absolute:,} absolute, {result.idle:,} idle) "
        f"in {result.batches} statements, {seconds:.2f} s (target < {TARGET_SECONDS:.0f} s)"
    )
    print(f"second sweep (nothing left to revoke): {again.revoked} revoked, {second:.2f} s")
    print(
        f"check: expected {check['expected']:,}, revoked {check['revoked']:,}, wrongly revoked "
        f"{check['wrongly_revoked']}, missed {check['missed']}, wrong reason {check['wrong_reason']}, "
        f"wrong time {check['wrong_time']}"
    )
    ok = (
        check["revoked"] == check["expected"] == result.revoked
        and check["wrongly_revoked"] == check["missed"] == check["wrong_reason"] == check["wrong_time"] == 0
        and again.revoked == 0
        and seconds < TARGET_SECONDS
    )
    return {
        "bench": "sessions",
        "sessions": check["total"],
        "expired": check["expected"],
        "revoked": result.revoked,
        "absolute": result.absolute,
        "idle": result.idle,
        "statements": result.batches,
        "seconds": round(seconds, 3),
        "second_sweep_seconds": round(second, 3),
        "target_seconds": TARGET_SECONDS,
        "ok": ok,
    }


def main() -> None:
    summary = asyncio.run(asyncio.wait_for(run(), DEADLINE_SECONDS))
    print(json.dumps(summary))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()

"""Members list against DESIGN section 9, on PostgreSQL with an organization of 100,000 members.

1. The list's queries, timed through the service (widgets.members.service.list_members): the first page, a
   name search, and the 50th page reached by following "next" (keyset) - p99 < 50 ms each.
2. Requests per second of GET /ui/organization/members (20 rows, signed in as an admin) against a bare
   Litestar "hello world", both served the same way in this run (uvicorn, one worker, one process each) and
   loaded by the same client: a bounded set of keep-alive HTTP/1.1 connections on loopback - ratio >= 0.5.
   For reference, without a target: the portal's /healthz (one ``SELECT 1``, no session, no template) and
   /login (a small page, no session, no query), loaded the same way: the floor any portal page stands on;
   and the time to render only the 20 rows as a bare Jinja table, next to a whole hello-world request.

Run: .venv/bin/python bench/members.py   (PostgreSQL at PORTAL_BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/portal_bench; the database is created and dropped). The last line
printed is one JSON object. Options: --members N, --seconds S (per load run), --connections C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/portal_bench"
TARGETS = {"p99_ms": 50.0, "rps_ratio": 0.5}
SECRET = "bench-secret-key-" + "x" * 32

_GIVEN = (
    "Ada Alan Alice Amara Anil Ben Bianca Carlos Chen Chloe Dana Diego Elena Emil Farah Felix Grace Hana Hugo Ines "
    "Ivan Jamal Jana Jonas Kai Keiko Lars Leila Liam Lucia Malik Maria Mateo Mei Nadia Nils Noor Olga Omar Pablo "
    "Priya Quinn Rafael Rosa Sami Sofia Tariq Uma Victor Yara"
)
_FAMILY = (
    "Abe Baker Costa Dubois Eriksen Fischer Garcia Haddad Ito Jensen Kim Larsen Moreau Nakamura Okafor Petrov "
    "Quist Rossi Schmidt Tanaka Urbano Varga Weber Xu Yilmaz Zimmer Novak Silva Kowalski Horvat Lindqvist Meyer "
    "Nguyen Osei Patel Reyes Santos Tran Volkov Walsh Young Adams Bauer Cohen Dahl Ekstrom Fontaine Gruber Hale"
)
GIVEN, FAMILY = _GIVEN.split(), _FAMILY.split()


# --- setup ------------------------------------------------------------------------------------------------


async def recreate(url: str, drop_only: bool = False) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def populate(url: str, members: int) -> dict[str, Any]:
    """Migrate, then one organization with ``members`` users and memberships, inserted set-based."""
    import asyncpg

    from portal.auth import accounts, sessions
    from portal.core import db
    from portal.core.migrate import migrate

    engine = db.bind(db.make_engine(url))
    await db.start(engine)
    await migrate()
    org = await accounts.create_organization("bench", "Bench Corporation")
    admin = await accounts.create_user(
        "admin@bench.test", given_name="Avery", family_name="Admin", verified=True
    )
    await accounts.add_member(org["id"], admin["id"], ["admin"], known_roles=["admin"])
    started = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            INSERT INTO portal_user (id, email, email_verified, given_name, family_name, display_name, locale,
                                     created_at, updated_at)
            SELECT 'usr_b' || g, 'user' || g || '@bench.test', true, given, family, given || ' ' || family, 'en',
                   now() - make_interval(secs => g), now()
            FROM generate_series(1, $1::int) AS g,
                 LATERAL (SELECT ($2::text[])[1 + g % array_length($2::text[], 1)] AS given,
                                 ($3::text[])[1 + (g / 7) % array_length($3::text[], 1)] AS family) AS n
            """,
            members - 1,
            GIVEN,
            FAMILY,
        )
        # Keys as accounts.member_keys computes them (these names are ASCII: lower() is fold()).
        await conn.execute(
            """
            INSERT INTO membership (id, organization, "user", roles, status, source, created_at, updated_at,
                                    email, sort_key, family_key)
            SELECT 'mem_b' || substr(u.id, 6), $1, u.id,
                   (CASE WHEN substr(u.id, 6)::int % 100 = 0 THEN '["admin"]' ELSE '["member"]' END)::json,
                   'active', (ARRAY['portal', 'api', 'scim', 'jit'])[1 + substr(u.id, 6)::int % 4],
                   u.created_at, u.created_at, u.email, lower(u.display_name), lower(u.family_name)
            FROM portal_user u WHERE u.id LIKE 'usr\\_b%'
            """,
            org["id"],
        )
        await conn.execute("ANALYZE portal_user; ANALYZE membership; ANALYZE invitation")
        count = await conn.fetchval("SELECT count(*) FROM membership WHERE organization = $1", org["id"])
    finally:
        await conn.close()
    token, _ = await sessions.create_session(admin["id"], auth_method="bench", organization_id=org["id"])
    return {
        "org": org,
        "token": token,
        "members": int(count),
        "insert_s": time.perf_counter() - started,
        "engine": engine,
    }


# --- 1. query latency -------------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 2), "p99": round(p99, 2), "n": len(ordered)}


async def timed(call: Callable[[], Awaitable[Any]], runs: int) -> dict[str, float]:
    for _ in range(10):
        await call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


async def query_latency(org_id: str, runs: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    from policy import PolicyEngine
    from widgets.members import service
    from widgets.members.schemas import MemberQuery

    policy = PolicyEngine.from_dir(ROOT / "policies")

    async def page(query: MemberQuery) -> Any:
        return await service.list_members(policy, org_id, query)

    first = await page(MemberQuery())
    cursor = first.next_cursor or ""
    for _ in range(48):  # pages 2..49
        cursor = (await page(MemberQuery(after=cursor))).next_cursor or ""
    page49 = cursor
    page50 = await page(MemberQuery(after=page49))
    search = await page(MemberQuery(q="grace ha"))
    email = await page(MemberQuery(q="user4242"))
    checks = {
        "first_page_rows": len(first.members),
        "page50_rows": len(page50.members),
        "page50_first": page50.members[0].name if page50.members else None,
        "search_rows": len(search.members),
        "email_search_rows": len(email.members),
    }
    results = {
        "first_page": await timed(lambda: page(MemberQuery()), runs),
        "search": await timed(lambda: page(MemberQuery(q="grace ha")), runs),
        "page50": await timed(lambda: page(MemberQuery(after=page49)), runs),
        # Informational, no target: an email prefix, a one-letter search, the role filter (admins are 1%).
        "email_search": await timed(lambda: page(MemberQuery(q="user4242")), runs),
        "broad_search": await timed(lambda: page(MemberQuery(q="s")), runs // 4),
        "role_filter": await timed(lambda: page(MemberQuery(role="admin")), runs // 4),
    }
    return results, checks


# --- 2. requests per second -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(kind: str, port: int) -> None:
    """Child process: serve the portal or the hello world exactly the same way (what `portal serve` does)."""
    import logging

    import uvicorn

    if kind == "portal":
        from portal.core.settings import load_settings
        from portal.web.app import create_app

        settings = load_settings(os.environ)
        logging.basicConfig(level=settings.log_level.upper())
        app: Any = create_app(settings)
    else:
        from litestar import Litestar, get

        @get("/", sync_to_thread=False)
        def hello() -> str:
            return "Hello, world!"

        app = Litestar([hello])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[int, bytes]:
    writer.write(raw)
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    body = b""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return status, body
        body += await reader.readexactly(size)
        await reader.readline()


async def load(
    port: int, path: str, headers: dict[str, str], seconds: float, connections: int
) -> dict[str, Any]:
    """Keep ``connections`` keep-alive connections busy for ``seconds``; requests/s and latency."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    sample: list[bytes] = []

    async def worker(stop_at: float, record: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                status, body = await _request(reader, writer, raw)
                if record:
                    latencies.append((time.perf_counter() - start) * 1000)
                    statuses[status] += 1
                    if not sample:
                        sample.append(body)
        finally:
            writer.close()

    warm = time.perf_counter() + 1.0
    await asyncio.gather(*(worker(warm, False) for _ in range(connections)))
    started = time.perf_counter()
    await asyncio.gather(*(worker(started + seconds, True) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    total = sum(statuses.values())
    return {
        "rps": round(total / elapsed, 1),
        "requests": total,
        "statuses": dict(statuses),
        "latency_ms": percentiles(latencies) if latencies else {},
        "sample": sample[0] if sample else b"",
    }


def start_server(kind: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, port
        except OSError:
            if process.poll() is not None:
                output = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"{kind} did not start: {output}") from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{kind} did not start within 30 s")


def set_cookies(port: int, path: str, headers: dict[str, str]) -> list[str]:
    """The ``name=value`` of each cookie one GET of ``path`` sets."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        return [v.split(";", 1)[0] for k, v in response.getheaders() if k.lower() == "set-cookie"]
    finally:
        connection.close()


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def throughput(url: str, token: str, seconds: float, connections: int, rounds: int) -> dict[str, Any]:
    """Both servers up side by side; loaded in alternation (``rounds`` times each), so that a change in what
    else the machine is doing affects both alike. Medians of the rounds."""
    data_dir = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")},
        "PORTAL_DATABASE_URL": url,
        "PORTAL_DATA_DIR": str(data_dir),
        "PORTAL_POLICY_DIR": str(ROOT / "policies"),
        "PORTAL_SECRET_KEY": SECRET,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    # name: (server, path, headers). The two portal routes after the members page have no target; they
    # show where the portal's own floor is: /healthz is one `SELECT 1` and a JSON body (no session, no
    # template), /login a small page (no session, no query).
    targets = {
        "hello": ("hello", "/", {}),
        "portal": (
            "portal",
            "/ui/organization/members",
            {"Cookie": f"portal_session={token}", "Accept": "text/html"},
        ),
        "portal_healthz": ("portal", "/healthz", {}),
        "portal_login": ("portal", "/login", {"Accept": "text/html"}),
    }
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    try:
        for kind in ("hello", "portal"):
            servers[kind] = start_server(kind, env)
        # A browser sends back the cookies it was given (the CSRF cookie): so does the load client.
        _, path, headers = targets["portal"]
        headers["Cookie"] += "".join(f"; {c}" for c in set_cookies(servers["portal"][1], path, headers))
        for _ in range(rounds):
            for name, (kind, path, headers) in targets.items():
                runs[name].append(await load(servers[kind][1], path, headers, seconds / rounds, connections))
    finally:
        for process, _ in servers.values():
            stop_server(process)
        shutil.rmtree(data_dir, ignore_errors=True)
    results: dict[str, Any] = {}
    for kind, rows in runs.items():
        middle = sorted(rows, key=lambda r: r["rps"])[len(rows) // 2]
        statuses: Counter[int] = Counter()
        for row in rows:
            statuses.update(row["statuses"])
        results[kind] = {**middle, "rounds_rps": [r["rps"] for r in rows], "statuses": dict(statuses)}
    return results


def bare_table_render_us(runs: int = 2000) -> float:
    """Microseconds to render just the 20 rows of the list as a bare Jinja table (no layout, no forms, no
    macros): the least any Jinja-rendered members page pays per request, for comparison with hello world's
    whole request (about 1 / hello_rps seconds)."""
    import datetime as dt

    import jinja2

    template = jinja2.Environment(autoescape=True, auto_reload=False).from_string(
        "<table>{% for m in rows %}<tr id='member-{{ m.id }}'><td><a href='/m/{{ m.id }}'>{{ m.name }}</a></td>"
        "<td>{{ m.email }}</td><td>{% for r in m.roles %}<span>{{ r }}</span>{% endfor %}</td>"
        "<td>{{ m.status }}</td><td>{{ m.source }}</td><td>{{ m.joined.strftime('%Y-%m-%d') }}</td></tr>"
        "{% endfor %}</table>"
    )
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "id": f"mem_{i}",
            "name": "Ada Lovelace",
            "email": f"user{i}@bench.test",
            "roles": ["member"],
            "status": "active",
            "source": "portal",
            "joined": now,
        }
        for i in range(20)
    ]
    for _ in range(100):
        template.render(rows=rows)
    start = time.perf_counter()
    for _ in range(runs):
        template.render(rows=rows)
    return round((time.perf_counter() - start) / runs * 1e6, 1)


# --- main -------------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = os.environ.get("PORTAL_BENCH_DATABASE_URL", DEFAULT_URL)
    await recreate(url)
    from portal.core import db

    try:
        world = await populate(url, args.members)
        print(f"inserted {world['members']:,} members in {world['insert_s']:.1f} s", flush=True)
        latency, checks = await query_latency(world["org"]["id"], args.runs)
        await db.stop(world["engine"])
        print("query (through the service)        p50 ms    p99 ms", flush=True)
        for name, figures in latency.items():
            print(f"  {name:<32} {figures['p50']:>8.2f}  {figures['p99']:>8.2f}", flush=True)
        rps = await throughput(url, world["token"], args.seconds, args.connections, args.rounds)
    finally:
        await recreate(url, drop_only=True)
    page = rps["portal"].pop("sample").decode("utf-8", "replace")
    for name in ("hello", "portal_healthz", "portal_login"):
        rps[name].pop("sample")
    checks["members_page_rows"] = page.count('<tr id="member-')
    ratio = rps["portal"]["rps"] / rps["hello"]["rps"] if rps["hello"]["rps"] else 0.0
    print(f"{'served':<34} {'req/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}")
    for name, label in (
        ("hello", "bare Litestar hello world"),
        ("portal", "/ui/organization/members (20 rows)"),
        ("portal_healthz", "portal /healthz (no target)"),
        ("portal_login", "portal /login (no target)"),
    ):
        r = rps[name]
        print(
            f"  {label:<32} {r['rps']:>8.1f}  {r['latency_ms']['p50']:>8.2f}  {r['latency_ms']['p99']:>8.2f}"
        )
    print(f"  ratio {ratio:.2f} (target >= {TARGETS['rps_ratio']})")
    floor = {
        name: round(rps[name]["rps"] / rps["hello"]["rps"], 3) if rps["hello"]["rps"] else 0.0
        for name in ("portal_healthz", "portal_login")
    }
    print(
        f"  for reference: /healthz {floor['portal_healthz']:.2f}, /login {floor['portal_login']:.2f} of hello world"
    )
    render_us = bare_table_render_us()
    hello_us = 1e6 / rps["hello"]["rps"] if rps["hello"]["rps"] else 0.0
    print(
        f"  a bare Jinja table of the 20 rows takes {render_us:.0f} µs to render;"
        f" a whole hello-world request {hello_us:.0f} µs"
    )
    p99_ok = all(latency[k]["p99"] < TARGETS["p99_ms"] for k in ("first_page", "search", "page50"))
    served_ok = all(r["statuses"].keys() == {200} for r in rps.values())
    rows_ok = (
        checks["first_page_rows"] == 20 and checks["page50_rows"] == 20 and checks["members_page_rows"] == 20
    )
    return {
        "bench": "members",
        "engine": "postgresql",
        "members": world["members"],
        "first_page_ms": latency["first_page"],
        "search_ms": latency["search"],
        "page50_ms": latency["page50"],
        "email_search_ms": latency["email_search"],
        "broad_search_ms": latency["broad_search"],
        "role_filter_ms": latency["role_filter"],
        "members_page_rps": rps["portal"]["rps"],
        "hello_rps": rps["hello"]["rps"],
        "rps_ratio": round(ratio, 3),
        "healthz_rps": rps["portal_healthz"]["rps"],
        "login_rps": rps["portal_login"]["rps"],
        "healthz_ratio": floor["portal_healthz"],
        "login_ratio": floor["portal_login"],
        "bare_table_render_us": render_us,
        "hello_request_us": round(hello_us, 1),
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds_rps": {name: r["rounds_rps"] for name, r in rps.items()},
        # Both servers share this machine's CPUs with PostgreSQL and the load generator; say how busy it was.
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "checks": checks,
        "targets": TARGETS,
        "p99_ok": p99_ok,
        "ratio_ok": ratio >= TARGETS["rps_ratio"],
        "ok": p99_ok and ratio >= TARGETS["rps_ratio"] and served_ok and rows_ok,
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=400, help="timed calls per query")
    parser.add_argument("--seconds", type=float, default=9.0, help="load duration per server, all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="alternating load runs per server")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""SCIM server (DESIGN section 16) on PostgreSQL, next to the reference server scim2-server served the same way in
the same run (uvicorn, one worker each; bench/members.py's harness).

1. A directory with 100,000 users (inserted in bulk): ``GET /Users?filter=userName eq "..."`` for random
   users, one at a time over keep-alive: p50/p99 (target p99 < 50 ms), and a 100-user page of that directory.
2. Throughput, the same requests against both servers (each with an empty directory of its own first):
   create (POST /Users, a new user each, ``--creates`` of them or ``--seconds``, whichever ends first, so that
   both hold about as many users), PATCH (replace title and displayName of the users just created) and list
   (GET /Users?count=50) for ``--seconds`` each, over ``--connections`` keep-alive connections.
   The portal does its full work per request (bearer token, rate limit, request log, membership of the
   organization per created user); the reference keeps everything in memory without authentication.
3. The ratios portal / reference (target >= 2).

Run: .venv/bin/python bench/scim.py [--users N] [--seconds S] [--connections C]
PostgreSQL from PORTAL_BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/portal_bench_scim,
created and dropped). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import members as harness

ROOT = Path(__file__).resolve().parents[1]
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
FLOOR_TOKEN = "floor-token-" + "f" * 32


def serve_reference(port: int) -> None:
    """Child process: scim2-server's ASGI application over its in-memory storage, under uvicorn."""
    import uvicorn
    from scim2_server.applications.asgi import ASGIApplication
    from scim2_server.memory import AsyncInMemoryStorage
    from scim2_server.utils import load_default_provider

    app = ASGIApplication(AsyncInMemoryStorage(), load_default_provider())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


#: The raw floor's tables: what a SCIM create must store at the least (the SCIM resource, the account, the
#: membership, the audit row) and the request log, without the portal's columns, indexes or webhooks.
FLOOR_TABLES = (
    "CREATE TABLE floor_token (hash text PRIMARY KEY, directory text NOT NULL)",
    "CREATE TABLE floor_scim_user (id text PRIMARY KEY, directory text NOT NULL, user_name_key text NOT NULL,"
    " resource jsonb NOT NULL, version int NOT NULL, UNIQUE (directory, user_name_key))",
    "CREATE TABLE floor_user (id text PRIMARY KEY, email text UNIQUE NOT NULL, given text, family text)",
    "CREATE TABLE floor_membership (id text PRIMARY KEY, org text NOT NULL, user_id text NOT NULL, roles jsonb)",
    "CREATE TABLE floor_audit (id bigserial PRIMARY KEY, action text, target text, details jsonb,"
    " at timestamptz DEFAULT now())",
    "CREATE TABLE floor_request (id bigserial PRIMARY KEY, directory text, method text, path text, status int,"
    " at timestamptz DEFAULT now())",
)


def floor_app() -> Any:
    """The raw floor: one Litestar app, raw asyncpg, json. Per request what any SCIM server over PostgreSQL
    must do: look the bearer token up by its hash, then in one transaction store the change (create: the
    SCIM resource, an account, a membership and an audit row; PATCH: lock, apply, update, audit row), and log
    the request. No validation beyond JSON, no rate limit, no webhooks, no middleware."""
    import hashlib
    import secrets as secrets_module
    from contextlib import asynccontextmanager

    import asyncpg
    from litestar import Litestar, Request, Response, patch, post

    @asynccontextmanager
    async def lifespan(app: Litestar) -> Any:
        app.state.pool = await asyncpg.create_pool(os.environ["PORTAL_DATABASE_URL"], min_size=1, max_size=10)
        try:
            yield
        finally:
            await app.state.pool.close()

    async def directory_of(conn: Any, request: Request[Any, Any, Any]) -> str | None:
        token = request.headers.get("authorization", "").partition(" ")[2]
        found = await conn.fetchval(
            "SELECT directory FROM floor_token WHERE hash = $1", hashlib.sha256(token.encode()).hexdigest()
        )
        return str(found) if found else None

    def answer(body: Any, status: int) -> Response[bytes]:
        return Response(json.dumps(body).encode(), status_code=status, media_type="application/scim+json")

    @post("/floor/Users")
    async def create(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = json.loads(await request.body())
        async with request.app.state.pool.acquire() as conn:
            directory = await directory_of(conn, request)
            if directory is None:
                return answer({"detail": "unauthorized"}, 401)
            email = body["emails"][0]["value"]
            uid, account, membership = (secrets_module.token_hex(10) for _ in range(3))
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO floor_user VALUES ($1, $2, $3, $4)",
                    account, email, body["name"]["givenName"], body["name"]["familyName"],
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO floor_membership VALUES ($1, 'org', $2, '[\"member\"]')", membership, account
                )
                await conn.execute(
                    "INSERT INTO floor_scim_user VALUES ($1, $2, $3, $4, 1)",
                    uid, directory, body["userName"].lower(), json.dumps(body),
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO floor_audit (action, target, details) VALUES ('scim.user.created', $1, $2)",
                    uid, json.dumps({"userName": body["userName"]}),
                )  # fmt: skip
            await conn.execute(
                "INSERT INTO floor_request (directory, method, path, status) VALUES ($1, 'POST', '/Users', 201)",
                directory,
            )
        return answer({**body, "id": uid, "meta": {"resourceType": "User", "version": 'W/"1"'}}, 201)

    @patch("/floor/Users/{user_id:str}")
    async def update(request: Request[Any, Any, Any], user_id: str) -> Response[bytes]:
        body = json.loads(await request.body())
        async with request.app.state.pool.acquire() as conn:
            directory = await directory_of(conn, request)
            if directory is None:
                return answer({"detail": "unauthorized"}, 401)
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT resource, version FROM floor_scim_user WHERE id = $1 AND directory = $2 FOR UPDATE",
                    user_id, directory,
                )  # fmt: skip
                if row is None:
                    return answer({"detail": "not found"}, 404)
                resource = json.loads(row["resource"])
                for op in body["Operations"]:
                    resource[op["path"]] = op["value"]
                await conn.execute(
                    "UPDATE floor_scim_user SET resource = $1, version = version + 1 WHERE id = $2",
                    json.dumps(resource), user_id,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO floor_audit (action, target, details) VALUES ('scim.user.updated', $1, '{}')",
                    user_id,
                )
            await conn.execute(
                "INSERT INTO floor_request (directory, method, path, status) VALUES ($1, 'PATCH', '/Users', 200)",
                directory,
            )
        return answer({**resource, "id": user_id, "meta": {"version": f'W/"{row["version"] + 1}"'}}, 200)

    namespace = {"Request": Request, "Response": Response, "Any": Any}
    return Litestar(
        [create, update],
        lifespan=[lifespan],
        signature_namespace=namespace,
        openapi_config=None,
        debug=False,
    )


def start_reference() -> tuple[subprocess.Popen[bytes], int]:
    import socket

    port = harness.free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-reference", str(port)],
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
                raise RuntimeError("scim2-server did not start: " + output) from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("scim2-server did not start within 30 s")


async def prepare(url: str, users: int) -> dict[str, Any]:
    """Migrate; an organization with a big directory (``users`` rows in bulk) and an empty one."""
    from datetime import timedelta

    from portal.auth import accounts
    from portal.core import clock, db
    from portal.core.migrate import migrate
    from portal.core.tables import ScimUser
    from portal.scim import service

    engine = db.bind(db.make_engine(url))
    await db.start(engine)
    try:
        await migrate()
        org = await accounts.create_organization("acme", "Acme", features=["scim"])
        big = await service.create_directory(org["id"], "Big", "okta", actor_id=None)
        big_token = await service.issue_token(big, overlap=timedelta(hours=1), actor_id=None)
        small = await service.create_directory(org["id"], "Throughput", "okta", actor_id=None)
        small_token = await service.issue_token(small, overlap=timedelta(hours=1), actor_id=None)
        now = clock.utcnow()
        batch: list[ScimUser] = []
        for n in range(users):
            name = f"user{n:06d}@example.com"
            resource = {
                "userName": name,
                "name": {"givenName": f"Given{n}", "familyName": f"Family{n}"},
                "emails": [{"value": name, "type": "work", "primary": True}],
                "active": True,
            }
            batch.append(
                ScimUser(
                    directory=big.id,
                    organization_id=org["id"],
                    user_name=name,
                    user_name_key=name,
                    email=name,
                    resource=resource,
                    created_at=now,
                    updated_at=now,
                )
            )
            if len(batch) == 1000:
                await ScimUser.insert(*batch)
                batch = []
        if batch:
            await ScimUser.insert(*batch)
        await engine.run_ddl("ANALYZE scim_user")
        for statement in FLOOR_TABLES:
            await engine.run_ddl(statement)
        await engine.run_ddl(
            f"INSERT INTO floor_token VALUES ('{hashlib.sha256(FLOOR_TOKEN.encode()).hexdigest()}', 'floor')"
        )
        return {"big": big.id, "big_token": big_token, "small": small.id, "small_token": small_token}
    finally:
        await db.stop(engine)


def _raw(method: str, path: str, port: int, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines += ["Content-Type: application/scim+json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def drive(
    port: int, make: Any, seconds: float, connections: int, collect: list[bytes] | None = None
) -> dict[str, Any]:
    """``connections`` keep-alive connections sending ``make(i)`` requests for ``seconds``."""
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    counter = iter(range(10**9))

    async def worker(stop_at: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                raw = make(next(counter))
                if raw is None:
                    return
                start = time.perf_counter()
                status, body = await harness._request(reader, writer, raw)
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[status] += 1
                if collect is not None and status < 300:
                    collect.append(body)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(started + seconds) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    total = sum(statuses.values())
    return {
        "rps": round(total / elapsed, 1),
        "requests": total,
        "statuses": {str(k): v for k, v in statuses.items()},
        "latency_ms": harness.percentiles(latencies) if latencies else {},
    }


async def workloads(
    port: int,
    base: str,
    headers: dict[str, str],
    tag: str,
    seconds: float,
    connections: int,
    creates: int,
    *,
    listing: bool = True,
) -> dict[str, Any]:
    """create (at most ``creates`` users, so both servers then hold as many), then PATCH the created users,
    then list: the same requests for either server."""
    created: list[bytes] = []

    def create(i: int) -> bytes | None:
        if i >= creates:
            return None
        body = {
            "schemas": [USER],
            "userName": f"{tag}-{i}@bench.example",
            "name": {"givenName": "Bench", "familyName": f"User{i}"},
            "emails": [{"value": f"{tag}-{i}@bench.example", "type": "work", "primary": True}],
            "active": True,
        }
        return _raw("POST", f"{base}/Users", port, headers, json.dumps(body).encode())

    out: dict[str, Any] = {"create": await drive(port, create, seconds, connections, created)}
    ids = [json.loads(body)["id"] for body in created]
    random.shuffle(ids)

    def patch(i: int) -> bytes | None:
        uid = ids[i % len(ids)]
        body = {
            "schemas": [PATCH],
            "Operations": [
                {"op": "replace", "path": "title", "value": f"Title {i}"},
                {"op": "replace", "path": "displayName", "value": f"Bench User {i}"},
            ],
        }
        return _raw("PATCH", f"{base}/Users/{uid}", port, headers, json.dumps(body).encode())

    out["patch"] = await drive(port, patch, seconds, connections)
    out["users_created"] = len(ids)
    if not listing:
        return out
    listing_request = _raw("GET", f"{base}/Users?startIndex=1&count=50", port, headers)
    out["list"] = await drive(port, lambda i: listing_request, seconds, connections)
    return out


async def filter_latency(port: int, directory: str, token: str, users: int, runs: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    samples: list[float] = []
    misses = 0
    try:
        for _ in range(runs):
            n = random.randrange(users)
            query = f"filter=userName%20eq%20%22USER{n:06d}%40example.com%22"
            raw = _raw("GET", f"/scim/v2/{directory}/Users?{query}", port, headers)
            start = time.perf_counter()
            status, body = await harness._request(reader, writer, raw)
            samples.append((time.perf_counter() - start) * 1000)
            if status != 200 or json.loads(body)["totalResults"] != 1:
                misses += 1
        page_samples = []
        for _ in range(max(20, runs // 10)):
            start_index = random.randrange(1, max(2, users - 100))
            raw = _raw("GET", f"/scim/v2/{directory}/Users?startIndex={start_index}&count=100", port, headers)
            start = time.perf_counter()
            status, body = await harness._request(reader, writer, raw)
            page_samples.append((time.perf_counter() - start) * 1000)
    finally:
        writer.close()
    return {
        "filter_userName_eq_ms": harness.percentiles(samples),
        "filter_misses": misses,
        "page_of_100_ms": harness.percentiles(page_samples),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = os.environ.get(
        "PORTAL_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/portal_bench_scim"
    )
    await harness.recreate(url)
    portal = reference = floor = None
    try:
        started = time.perf_counter()
        ids = await prepare(url, args.users)
        populate_s = round(time.perf_counter() - started, 1)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")},
            "PORTAL_DATABASE_URL": url,
            "PORTAL_POLICY_DIR": str(ROOT / "policies"),
            "PORTAL_DATA_DIR": str(Path("/tmp") / f"portal-bench-scim-{os.getpid()}"),
            "PORTAL_SECRET_KEY": "bench-scim-secret-" + "k" * 32,
            "PORTAL_LOG_LEVEL": "WARNING",
            # The limit is checked on every request (the cost is in the figures), set above the load.
            "PORTAL_SCIM_RATE_LIMIT": "100000",
        }
        portal, portal_port = harness.start_server("portal", env)
        reference, reference_port = start_reference()
        latency = await filter_latency(portal_port, ids["big"], ids["big_token"], args.users, args.runs)
        ours = await workloads(
            portal_port,
            f"/scim/v2/{ids['small']}",
            {"Authorization": f"Bearer {ids['small_token']}"},
            "portal",
            args.seconds,
            args.connections,
            args.creates,
        )
        theirs = await workloads(
            reference_port, "/v2", {}, "reference", args.seconds, args.connections, args.creates
        )
        floor, floor_port = harness.start_server("bench.scim:floor_app", env)
        raw = await workloads(
            floor_port, "/floor", {"Authorization": f"Bearer {FLOOR_TOKEN}"}, "floor", args.seconds,
            args.connections, args.creates, listing=False,
        )  # fmt: skip
        ratios = {
            k: round(ours[k]["rps"] / theirs[k]["rps"], 2) if theirs[k]["rps"] else None
            for k in ("create", "patch", "list")
        }
        floor_ratios = {
            k: round(raw[k]["rps"] / theirs[k]["rps"], 2) if theirs[k]["rps"] else None
            for k in ("create", "patch")
        }
        return {
            "bench": "scim",
            "engine": "postgresql",
            "users_in_directory": args.users,
            "populate_s": populate_s,
            **latency,
            "filter_p99_target_ms": 50,
            "portal": ours,
            "scim2_server": theirs,
            "ratio_portal_over_reference": ratios,
            "ratio_target": 2,
            "raw_floor": raw,
            "ratio_raw_floor_over_reference": floor_ratios,
            "ratio_portal_over_raw_floor": {
                k: round(ours[k]["rps"] / raw[k]["rps"], 2) if raw[k]["rps"] else None
                for k in ("create", "patch")
            },
            "connections": args.connections,
            "seconds_per_workload": args.seconds,
        }
    finally:
        for server in (portal, floor):
            if server is not None:
                harness.stop_server(server)
        if reference is not None:
            reference.terminate()
            reference.wait(timeout=15)
        await harness.recreate(url, drop_only=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument(
        "--creates", type=int, default=400, help="users each server creates (then PATCH, list)"
    )
    parser.add_argument("--serve-reference", type=int, default=None)
    args = parser.parse_args()
    if args.serve_reference is not None:
        serve_reference(args.serve_reference)
        return
    result = asyncio.run(run(args))
    for key in ("portal", "scim2_server"):
        for name in ("create", "patch", "list"):
            figures = result[key][name]
            print(
                f"{key:12} {name:6} {figures['rps']:8} req/s  p99 {figures['latency_ms'].get('p99')} ms  {figures['statuses']}"
            )
    for name in ("create", "patch"):
        figures = result["raw_floor"][name]
        print(
            f"{'raw floor':12} {name:6} {figures['rps']:8} req/s  p99 {figures['latency_ms'].get('p99')} ms"
        )
    print(f"filter userName eq over {result['users_in_directory']} users: {result['filter_userName_eq_ms']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

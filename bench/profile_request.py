"""Where a portal request spends its time: one path called many times straight through the ASGI app (no HTTP
server, no client), timed and profiled with pyinstrument. The same data as bench/members.py (one organization
of N members on PostgreSQL, signed in as its admin).

Run: .venv/bin/python bench/profile_request.py /ui/organization/members [--requests 2000] [--members 100000]
     [--keep] [--time-only] [--raw (bench/members.py's raw floor instead of the portal)]
Prints the CPU time per request (best of three runs) and writes pyinstrument's text tree to
``profile-<path>.txt`` (and ``.html``) in the current directory. PostgreSQL at PORTAL_BENCH_DATABASE_URL
(default postgresql://postgres@127.0.0.1:5432/portal_profile); the database is created, and dropped at the
end unless --keep (a kept database with the same member count is reused by the next run).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench import members as bench  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/portal_profile"


async def _world(url: str, count: int, keep: bool) -> str:
    """The admin's session token, in a database with ``count`` members (made unless kept from a run before)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url)
        try:
            members = await conn.fetchval("SELECT count(*) FROM membership")
            token = await conn.fetchval("SELECT value FROM bench_token") if members == count else None
        finally:
            await conn.close()
        if keep and token:
            return str(token)
    except (OSError, asyncpg.PostgresError):
        pass
    await bench.recreate(url)
    world = await bench.populate(url, count)
    from portal.core import db

    await db.stop(world["engine"])
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE bench_token (value text)")
        await conn.execute("INSERT INTO bench_token VALUES ($1)", world["token"])
    finally:
        await conn.close()
    return str(world["token"])


async def _run(args: argparse.Namespace) -> None:
    url = os.environ.get("PORTAL_BENCH_DATABASE_URL", DEFAULT_URL)
    token = await _world(url, args.members, args.keep)
    os.environ.update(
        PORTAL_DATABASE_URL=url,
        PORTAL_POLICY_DIR=str(ROOT / "policies"),
        PORTAL_SECRET_KEY=bench.SECRET,
        PORTAL_DATA_DIR=tempfile.mkdtemp(prefix="portal-profile-"),
    )
    factory = bench.raw_app if args.raw else (bench.hello_app if args.path == "/" else bench.portal_app)
    app = factory()
    # Log lines go to stderr as in production; keep them out of the way of the figures.
    logging.getLogger("portal.request").setLevel(args.log_level)

    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started

    headers = [(b"host", b"127.0.0.1"), (b"accept", b"text/html")]
    if args.path not in ("/", "/healthz", "/login"):
        csrf = "a" * 128  # a CSRF cookie as a browser sends it back (its value is not checked on GET)
        headers.append((b"cookie", f"portal_session={token}; portal_csrf={csrf}".encode()))
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    path, _, query = args.path.partition("?")

    async def one() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": list(headers),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await app(scope, receive, send)

    for _ in range(200):
        await one()
    if set(statuses) != {200}:
        raise SystemExit(f"{args.path} answered {sorted(set(statuses))}, not 200")
    runs = []
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.requests):
            await one()
        runs.append(
            ((time.perf_counter() - wall) / args.requests, (time.process_time() - cpu) / args.requests)
        )
    wall_s, cpu_s = min(runs, key=lambda r: r[1])
    print(
        f"{args.path}: {cpu_s * 1e6:.0f} µs CPU, {wall_s * 1e6:.0f} µs wall per request (best of 3 x {args.requests})"
    )
    if not args.time_only:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0001, async_mode="disabled")
        profiler.start()
        for _ in range(args.requests):
            await one()
        profiler.stop()
        name = "profile-" + ("raw-" if args.raw else "") + (path.strip("/").replace("/", "_") or "root")
        _write(f"{name}.txt", profiler.output_text(unicode=False, show_all=True))
        _write(f"{name}.html", profiler.output_html())
        print(f"wrote {name}.txt and {name}.html")
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await lifespan
    shutil.rmtree(os.environ["PORTAL_DATA_DIR"], ignore_errors=True)
    if not args.keep:
        await bench.recreate(url, drop_only=True)


def _write(name: str, text: str) -> None:
    Path(name).write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="/healthz, /login, /ui/organization/members (or / for hello world)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    parser.add_argument(
        "--raw", action="store_true", help="bench/members.py's raw floor instead of the portal"
    )
    parser.add_argument("--time-only", action="store_true", help="no profile, the timing only")
    parser.add_argument("--log-level", default="INFO", help="of portal.request (INFO: a line per request)")
    args = parser.parse_args()
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()

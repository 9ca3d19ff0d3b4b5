"""Load test (issue 15 item 5): concurrent sign-ins by email code plus members-page traffic, on loopback.

Creates (and afterwards drops) its own PostgreSQL database, migrates it, seeds organization "load" with
``--users`` members and an admin, starts a loopback SMTP server and ``portal serve --workers 2
--proxy-headers`` (each simulated person comes through the "load balancer" from an address of their own,
as they would in production), then for ``--seconds``:

- every simulated person (``--users`` of them, all at once) signs in by email code again and again: GET
  /login, POST the email, read the code from the mail the SMTP server received, POST it, land on /ui/,
  open the members page, sign out; and tries the code once more from another browser (it must be refused);
- ``--readers`` signed-in admins load the members page (and its next page) without pause.

Refusals the portal means to give are counted apart: 429 (5 codes per address per 15 minutes) and the
replayed code's 400. Anything else (another status, a cut connection, a timeout) is an error. Afterwards the
database is checked: every session row has its user, every code signed someone in at most once, every
successful sign-in has its session. Stops by itself; the last line printed is one JSON object; exit status 1
on any error.

Run: .venv/bin/python bench/load.py   (PostgreSQL at PORTAL_BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/portal_bench_load; the database is created and dropped).
Options: --seconds 60 --users 200 --readers 8 --workers 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import asyncpg  # noqa: E402
import httpx  # noqa: E402

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/portal_bench_load"
SECRET = "bench-load-secret-key-" + "x" * 32
_CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')
_CHALLENGE = re.compile(r"challenge=([A-Za-z0-9_\-]+)")
#: A whole run gives up after --seconds plus this (start-up, the last sign-ins, the checks).
GRACE_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, name: str) -> str:
    base, _, rest = url.rpartition("/")
    _, question, query = rest.partition("?")
    return f"{base}/{name}{question}{query}"


async def recreate(url: str, drop_only: bool = False) -> None:
    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = await asyncpg.connect(with_database(url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def seed(url: str, users: int, readers: int) -> dict[str, Any]:
    """Organization "load" with ``users`` members and ``readers`` signed-in admins."""
    from portal.auth import accounts, sessions
    from portal.core import db

    engine = db.bind(db.make_engine(url))
    await db.start(engine)
    try:
        org = await accounts.create_organization("load", "Load Test", features=[])
        emails = []
        for i in range(users):
            email = f"person{i:04d}@load.test"
            user = await accounts.create_user(email, given_name=f"Person {i}", family_name="Load")
            await accounts.add_member(org["id"], user["id"], ["member"], known_roles=("member",))
            emails.append(email)
        tokens = []
        for i in range(readers):
            admin = await accounts.create_user(f"admin{i}@load.test", given_name="Admin", family_name=str(i))
            await accounts.add_member(org["id"], admin["id"], ["admin"], known_roles=("admin",))
            token, _ = await sessions.create_session(
                admin["id"], auth_method="bench", organization_id=org["id"]
            )
            tokens.append(token)
        return {"emails": emails, "tokens": tokens}
    finally:
        await db.stop(engine)


class Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.statuses: Counter[str] = Counter()
        self.errors: list[str] = []
        self.sign_ins = 0
        self.rate_limited = 0
        self.replays_refused = 0
        self.replays_accepted = 0
        self.member_pages = 0
        self.latencies: list[float] = []

    def error(self, what: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(what)
        self.statuses["error"] += 1


async def request(
    tally: Tally, client: httpx.AsyncClient, method: str, url: str, expect: set[int], **kwargs: Any
) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        tally.requests += 1
        tally.error(f"{method} {url}: {type(exc).__name__} {exc}")
        return None
    tally.requests += 1
    tally.latencies.append(time.perf_counter() - started)
    tally.statuses[str(response.status_code)] += 1
    if response.status_code not in expect:
        tally.error(f"{method} {url}: {response.status_code} {response.text[:200]!r}")
        return None
    return response


async def wait_for_code(box: Any, email: str, seen: int, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        if len(box.to(email)) > seen:
            return str(box.last_code(email))
        await asyncio.sleep(0.05)
    return None


async def person(base: str, email: str, address: str, box: Any, tally: Tally, until: float) -> None:
    """One person signing in by email code, again and again, until ``until``."""
    headers = {"accept": "text/html", "x-forwarded-for": address}
    while time.monotonic() < until:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as browser:
            page = await request(tally, browser, "GET", "/login", {200})
            if page is None:
                return
            csrf = _CSRF.search(page.text)
            seen = len(box.to(email))
            sent = await request(
                tally,
                browser,
                "POST",
                "/login",
                {303, 429},
                data={
                    "email": email,
                    "return_to": "/ui/organization/members",
                    "_csrf_token": csrf.group(1) if csrf else "",
                },
            )
            if sent is None:
                return
            if sent.status_code == 429:
                tally.rate_limited += 1
                return  # this address has had its 5 codes for the quarter hour: the intended refusal
            location = sent.headers["location"]
            challenge = _CHALLENGE.search(location)
            code_page = await request(tally, browser, "GET", location, {200})
            code = await wait_for_code(box, email, seen, time.monotonic() + 30)
            if code_page is None or challenge is None or code is None:
                tally.error(f"no code for {email}" if code is None else f"no code page for {email}")
                return
            csrf = _CSRF.search(code_page.text)
            form = {
                "challenge": challenge.group(1),
                "code": code,
                "return_to": "/ui/organization/members",
                "_csrf_token": csrf.group(1) if csrf else "",
            }
            signed_in = await request(tally, browser, "POST", "/login/code", {303}, data=form)
            if signed_in is None:
                return
            tally.sign_ins += 1
            members = await request(tally, browser, "GET", signed_in.headers["location"], {200})
            if members is not None:
                tally.member_pages += 1
            # The same code again, from another browser: it worked once and must not work twice.
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as other:
                other_page = await request(tally, other, "GET", "/login", {200})
                if other_page is not None:
                    other_csrf = _CSRF.search(other_page.text)
                    replay = await request(
                        tally,
                        other,
                        "POST",
                        "/login/code",
                        {400, 303},
                        data={**form, "_csrf_token": other_csrf.group(1) if other_csrf else ""},
                    )
                    if replay is not None and replay.status_code == 303:
                        tally.replays_accepted += 1
                        tally.error(f"a used code signed {email} in again")
                    elif replay is not None:
                        tally.replays_refused += 1
            if members is not None:
                logout = _CSRF.search(members.text)
                await request(
                    tally,
                    browser,
                    "POST",
                    "/logout",
                    {303},
                    data={"_csrf_token": logout.group(1) if logout else ""},
                )


async def reader(base: str, token: str, tally: Tally, until: float) -> None:
    """A signed-in admin loading the members page and its next page without pause."""
    cookies = {"portal_session": token}
    async with httpx.AsyncClient(
        base_url=base, cookies=cookies, headers={"accept": "text/html"}, timeout=30
    ) as c:
        while time.monotonic() < until:
            page = await request(tally, c, "GET", "/ui/organization/members", {200})
            if page is None:
                return
            tally.member_pages += 1
            nxt = re.search(r'rel="next" href="([^"]+)"', page.text)
            if nxt and await request(tally, c, "GET", nxt.group(1).replace("&amp;", "&"), {200}) is not None:
                tally.member_pages += 1


async def check_database(url: str) -> dict[str, Any]:
    """What must hold afterwards, read straight from the tables."""
    connection = await asyncpg.connect(url)
    try:
        orphans = await connection.fetchval(
            'SELECT count(*) FROM portal_session s LEFT JOIN portal_user u ON u.id = s."user" WHERE u.id IS NULL'
        )
        reused = await connection.fetchval(
            """SELECT count(*) FROM (
                 SELECT details->>'challenge_id' FROM audit_event WHERE action = 'login.succeeded'
                 GROUP BY 1 HAVING count(*) > 1) AS twice"""
        )
        succeeded = await connection.fetchval(
            "SELECT count(*) FROM audit_event WHERE action = 'login.succeeded'"
        )
        without_session = await connection.fetchval(
            """SELECT count(*) FROM audit_event a WHERE a.action = 'login.succeeded'
                 AND NOT EXISTS (SELECT 1 FROM portal_session s WHERE s.id = a.details->>'session_id')"""
        )
        consumed = await connection.fetchval(
            "SELECT count(*) FROM login_challenge WHERE purpose = 'login' AND consumed_at IS NOT NULL"
        )
        sessions = await connection.fetchval(
            "SELECT count(*) FROM portal_session WHERE auth_method = 'email_code'"
        )
    finally:
        await connection.close()
    return {
        "sessions_without_user": orphans,
        "codes_used_twice": reused,
        "sign_ins_recorded": succeeded,
        "sign_ins_without_session": without_session,
        "codes_consumed": consumed,
        "email_code_sessions": sessions,
    }


def start_portal(url: str, smtp_url: str, port: int, workers: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(
        {
            "PORTAL_DATABASE_URL": url,
            "PORTAL_SMTP_URL": smtp_url,
            "PORTAL_SECRET_KEY": SECRET,
            "PORTAL_DATA_DIR": str(data_dir),
            "PORTAL_POLICY_DIR": str(ROOT / "policies"),
            "PORTAL_LOG_LEVEL": "INFO",
        }
    )
    command = [sys.executable, "-m", "portal.cli", "serve", "--port", str(port), "--workers", str(workers)]
    log = (data_dir / "serve.log").open("wb")
    return subprocess.Popen(
        [*command, "--proxy-headers"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )


async def wait_healthy(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=base, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"portal serve exited:\n{_read(log)}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"portal serve did not become ready:\n{_read(log)}")


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from portal.core import db
    from portal.core.migrate import migrate
    from tests.mailserver import MailServer

    url = os.environ.get("PORTAL_BENCH_DATABASE_URL", DEFAULT_URL)
    await recreate(url)
    try:
        engine = db.bind(db.make_engine(url))
        await db.start(engine)
        await migrate()
        await db.stop(engine)
        seeded = await seed(url, args.users, args.readers)
        mail = MailServer()
        box = mail.start()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory(prefix="portal-load-") as directory:
            data_dir = Path(directory)
            process = start_portal(url, box.url, port, args.workers, data_dir)
            try:
                await wait_healthy(base, process, data_dir / "serve.log")
                tally = Tally()
                started = time.monotonic()
                until = started + args.seconds
                tasks = [
                    person(base, email, f"10.{i // 250}.{i % 250}.{1 + i % 7}", box, tally, until)
                    for i, email in enumerate(seeded["emails"])
                ]
                tasks += [reader(base, token, tally, until) for token in seeded["tokens"]]
                await asyncio.wait_for(asyncio.gather(*tasks), args.seconds + GRACE_SECONDS)
                elapsed = time.monotonic() - started
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                serve_log = (data_dir / "serve.log").read_text(errors="replace")
            mail.stop()
        checks = await check_database(url)
    finally:
        await recreate(url, drop_only=True)
    latencies = sorted(tally.latencies)

    def pct(p: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else 0.0
        )

    errors = tally.statuses["error"]
    problems = [
        name
        for name, bad in (
            ("errors", errors),
            ("sessions_without_user", checks["sessions_without_user"]),
            ("codes_used_twice", checks["codes_used_twice"]),
            ("sign_ins_without_session", checks["sign_ins_without_session"]),
            ("replays_accepted", tally.replays_accepted),
            ("sign_ins_not_recorded", tally.sign_ins != checks["sign_ins_recorded"]),
        )
        if bad
    ]
    if "Traceback" in serve_log:
        problems.append("traceback_in_server_log")
    server_events = {
        "workers_replaced": serve_log.count(" died"),
        "unhandled_errors": serve_log.count("unhandled error"),
        "requests_logged": serve_log.count("portal.request"),
        "database_unavailable": serve_log.count("database unavailable"),
    }
    if problems:
        print("\n".join(serve_log.splitlines()[-40:]), file=sys.stderr)
    return {
        "bench": "load",
        "seconds": round(elapsed, 1),
        "users": args.users,
        "readers": args.readers,
        "workers": args.workers,
        "requests": tally.requests,
        "requests_per_second": round(tally.requests / elapsed, 1),
        "sign_ins": tally.sign_ins,
        "member_pages": tally.member_pages,
        "intended_429": tally.rate_limited,
        "replays_refused": tally.replays_refused,
        "errors": errors,
        "error_samples": tally.errors[:5],
        "statuses": dict(tally.statuses),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "database": checks,
        "server": server_events,
        "ok": not problems,
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Members list and the portal's request path against DESIGN section 9, on PostgreSQL, 100,000 members.

1. The list's queries, timed through the service (widgets.members.service.list_members): the first page, a
   name search, and the 50th page reached by following "next" (keyset) - p99 < 50 ms each.
2. Served, all in this one run and all the same way (uvicorn --loop uvloop --http httptools --workers N,
   one child process per app, N = 1 then 2): a bare Litestar hello world; the portal's /healthz, /login and
   /ui/organization/members (20 rows, signed in as an admin); and a raw floor, a minimal Litestar app in this
   file that does the members page's session lookup, membership and member-list queries with raw asyncpg
   and renders the portal's own templates with Jinja, without the portal's middleware (its HTML is checked
   to be the portal's, CSRF tokens aside). Targets: /healthz >= 0.8 x hello, members >= 0.8 x raw floor,
   members p99 < 50 ms at 16 connections.

The load client is wrk with one thread when it is on PATH (``apt-get install wrk``): on two cores the client
competes with the servers, and wrk costs a fraction of what a Python client does (its CPU share of one core is
reported per target, next to the servers' CPU time per request). Without wrk, an asyncio client in this
process is used. The targets are loaded in alternation, several rounds each; medians of the rounds.

Run: .venv/bin/python bench/members.py   (PostgreSQL at PORTAL_BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/portal_bench; the database is created and dropped). The last line
printed is one JSON object. Options: --members N, --seconds S (per load run), --rounds R, --connections C,
--workers 1 2, --client auto|wrk|python.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
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
TARGETS = {"query_p99_ms": 50.0, "healthz_ratio": 0.8, "members_ratio": 0.8, "members_p99_ms": 50.0}
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
#
# Every app is served the same way, in a child process started here: uvicorn with uvloop and httptools,
# ``--workers N`` (what a production deploy runs), access log off. The app factories below are what uvicorn
# imports (``bench.members:<kind>_app``).


def hello_app() -> Any:
    """A bare Litestar hello world: the ceiling of this stack on this machine."""
    from litestar import Litestar, get

    @get("/", sync_to_thread=False)
    def hello() -> str:
        return "Hello, world!"

    return Litestar([hello])


def portal_app() -> Any:
    """The portal as ``portal serve`` builds it (settings from the environment, log lines to stderr)."""
    import logging

    from portal.core.settings import load_settings
    from portal.web.app import create_app

    settings = load_settings(os.environ)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    return create_app(settings)


#: The raw floor's queries: what the portal asks for the members page, written out for asyncpg. The session
#: with its user and active organization, the user's active memberships, the first 20 members (+1 to know
#: whether there is a next page) and the first pending invitations (+1).
RAW_SESSION = (
    "SELECT s.id, s.created_at, s.last_seen_at, s.revoked_at, u.id AS user_id, u.email, u.display_name,"
    " o.id AS org_id, o.display_name AS org_display_name, o.features, o.session_policy_source,"
    " o.session_absolute_timeout, o.session_idle_timeout"
    ' FROM portal_session s JOIN portal_user u ON u.id = s."user"'
    " LEFT JOIN organization o ON o.id = s.active_organization WHERE s.token_hash = $1"
)
RAW_MEMBERSHIPS = (
    "SELECT o.id, o.name, o.display_name, m.roles FROM membership m JOIN organization o ON o.id = m.organization"
    " WHERE m.\"user\" = $1 AND m.status = 'active' ORDER BY o.display_name, o.id"
)
RAW_MEMBERS = (
    'SELECT m.id, m."user" AS user_id, m.roles, m.status, m.source, m.created_at, m.sort_key,'
    " u.email, u.display_name, u.given_name, u.family_name"
    ' FROM membership m JOIN portal_user u ON u.id = m."user"'
    " WHERE m.organization = $1 ORDER BY m.sort_key ASC, m.id ASC LIMIT 21"
)
RAW_INVITATIONS = (
    "SELECT i.id, i.email, i.roles, i.created_at, i.expires_at, u.display_name, u.email AS by_email"
    " FROM invitation i LEFT JOIN portal_user u ON u.id = i.invited_by"
    " WHERE i.organization = $1 AND i.accepted_at IS NULL AND i.revoked_at IS NULL ORDER BY i.email LIMIT 11"
)


def raw_app() -> Any:
    """The raw floor: one Litestar handler, no portal middleware, raw asyncpg and the portal's own Jinja
    templates. It does what the members page must do per request (session lookup and its expiry, the
    memberships, the members and invitations queries, the HTML) and nothing else: no CSRF middleware, no
    request log, no security headers. What depends only on the policy files (navigation, ``can``, the role
    descriptions) is computed once per (roles, features), as any hand-written handler would."""
    import base64
    import hashlib
    import json as jsonlib
    from contextlib import asynccontextmanager
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    import asyncpg
    import jinja2
    from litestar import Litestar, Request, Response, get
    from litestar.datastructures import State

    from policy import Permission, PolicyEngine
    from portal.web.app import template_dirs
    from portal.web.registry import discover

    policy = PolicyEngine.from_dir(ROOT / "policies")
    registry = discover()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dirs(registry)), autoescape=True, auto_reload=False
    )
    template = env.get_template("members/index.html")
    widget = registry.get("members")
    absolute = int(os.environ.get("PORTAL_SESSION_ABSOLUTE_TIMEOUT", 12 * 3600))
    idle = int(os.environ.get("PORTAL_SESSION_IDLE_TIMEOUT", 2 * 3600))
    static: dict[tuple[tuple[str, ...], frozenset[str]], dict[str, Any]] = {}
    csrf = '<input type="hidden" name="_csrf_token" value="raw-floor" />'

    def for_roles(roles: tuple[str, ...], features: frozenset[str]) -> dict[str, Any]:
        key = (roles, features)
        if key not in static:
            allowed = {
                p.value for p in Permission if policy.decide(roles, features, p, requires=widget.feature)
            }
            nav: dict[str, list[Any]] = {"organization": [], "account": []}
            for item in registry.visible(policy, roles, features):
                nav[item.section.value].append(item)
            choices = [
                (
                    role,
                    policy.role_title(role),
                    policy.role_description(role),
                    policy.grants_subset(list(roles), [role]),
                )
                for role in policy.roles
            ]
            static[key] = {"allowed": allowed, "nav": nav, "choices": choices}
        return static[key]

    def cursor(*parts: str) -> str:
        return base64.urlsafe_b64encode(jsonlib.dumps(parts).encode()).decode().rstrip("=")

    def as_list(value: Any) -> list[str]:
        return [str(v) for v in (jsonlib.loads(value) if isinstance(value, str) else value or [])]

    @asynccontextmanager
    async def lifespan(app: Litestar) -> Any:
        app.state.pool = await asyncpg.create_pool(os.environ["PORTAL_DATABASE_URL"], min_size=1, max_size=10)
        try:
            yield
        finally:
            await app.state.pool.close()

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/ui/organization/members")
    async def members(request: Request[Any, Any, Any]) -> Response[str]:
        token = request.cookies.get("portal_session", "")
        pool: asyncpg.Pool = request.app.state.pool
        async with pool.acquire() as conn:
            row = await conn.fetchrow(RAW_SESSION, hashlib.sha256(token.encode()).hexdigest())
            now = datetime.now(UTC)
            if row is None or row["revoked_at"] is not None or row["org_id"] is None:
                return Response("", status_code=303, headers={"Location": "/login"})
            limit_abs, limit_idle = absolute, idle
            if row["session_policy_source"] == "custom":
                limit_abs = min(limit_abs, row["session_absolute_timeout"] or limit_abs)
                limit_idle = min(limit_idle, row["session_idle_timeout"] or limit_idle)
            if now >= row["created_at"] + timedelta(seconds=limit_abs) or now >= row[
                "last_seen_at"
            ] + timedelta(seconds=limit_idle):
                return Response("", status_code=303, headers={"Location": "/login"})
            orgs = await conn.fetch(RAW_MEMBERSHIPS, row["user_id"])
            mine = next((o for o in orgs if o["id"] == row["org_id"]), None)
            if mine is None:
                return Response("Not a member", status_code=403)
            roles = tuple(as_list(mine["roles"]))
            features = frozenset(as_list(row["features"]))
            fixed = for_roles(roles, features)
            if "sk_org_users_read" not in fixed["allowed"]:
                return Response("Not allowed", status_code=403)
            rows = await conn.fetch(RAW_MEMBERS, row["org_id"])
            invitations = await conn.fetch(RAW_INVITATIONS, row["org_id"])
        people = []
        for m in rows[:20]:
            name = (
                m["display_name"] or ""
            ).strip() or f"{m['given_name'] or ''} {m['family_name'] or ''}".strip()
            people.append(
                SimpleNamespace(
                    id=m["id"],
                    user_id=m["user_id"],
                    name=name,
                    email=m["email"],
                    roles=as_list(m["roles"]),
                    status=m["status"],
                    source=m["source"],
                    joined=m["created_at"],
                )
            )
        pending = [
            SimpleNamespace(
                id=i["id"],
                email=i["email"],
                roles=as_list(i["roles"]),
                invited_by=i["display_name"] or i["by_email"] or "",
                created_at=i["created_at"],
                expires_at=i["expires_at"],
                expired=i["expires_at"] <= now,
            )
            for i in invitations[:10]
        ]
        next_url = None
        if len(rows) > 20:
            next_url = "/ui/organization/members?after=" + cursor(rows[19]["sort_key"], rows[19]["id"])
        allowed = fixed["allowed"]
        html = template.render(
            brand={"name": os.environ.get("PORTAL_BRAND_NAME", "Portal"), "logo_url": "", "favicon_url": ""},
            auth={
                "user": {"email": row["email"], "display_name": row["display_name"]},
                "organization": {"id": row["org_id"], "display_name": row["org_display_name"]},
                "organizations": [{"id": o["id"], "display_name": o["display_name"]} for o in orgs],
            },
            nav=fixed["nav"],
            widget=widget,
            can=lambda permission, feature=None: str(permission) in allowed,
            flash=None,
            path=request.url.path,
            csrf_input=csrf,
            page=SimpleNamespace(members=people, invitations=pending, more_invitations=len(invitations) > 10),
            query=SimpleNamespace(q="", role="", status=""),
            search="",
            filtered=False,
            next_url=next_url,
            prev_url=None,
            invited_url="/ui/organization/members?status=invited",
            roles=policy.roles,
            role_choices=fixed["choices"],
            invite_form=SimpleNamespace(emails="", submission_id=secrets.token_urlsafe(16)),
            invite_roles=["member"] if "member" in policy.roles else [],
            invite_errors={},
            labels={"emails": "Email addresses", "roles": "Roles"},
            ttl_days=max(1, round(int(os.environ.get("PORTAL_INVITATION_TTL", 7 * 86400)) / 86400)),
            me=row["user_id"],
            outranks=lambda m: m.user_id == row["user_id"] or policy.grants_subset(roles, m.roles),
        )
        return Response(html, media_type="text/html")

    # Handlers defined in a function: their annotations are resolved from this namespace.
    namespace = {"Request": Request, "Response": Response, "Any": Any}
    return Litestar(
        [healthz, members],
        lifespan=[lifespan],
        state=State(),
        signature_namespace=namespace,
        openapi_config=None,
        debug=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One app in a child process: ``python -m uvicorn --factory bench.members:<kind>_app`` on a free port."""

    def __init__(self, kind: str, workers: int, env: dict[str, str], log_dir: Path) -> None:
        self.kind, self.workers = kind, workers
        self.port = free_port()
        # ``kind`` names an app of this file, or is a whole ``module:factory`` (the other benches' apps).
        factory = kind if ":" in kind else f"bench.members:{kind}_app"
        name = kind.rpartition(":")[2]
        self.log = open(log_dir / f"{name}-{workers}.log", "wb")  # noqa: SIM115 - closed in stop()
        command = [
            sys.executable, "-m", "uvicorn", "--factory", factory,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
            "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        # Server logs go to a file: a pipe nobody reads would block the server once it is full.
        self.process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=self.log, stderr=self.log)

    def wait_ready(
        self, path: str, headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200,)
    ) -> None:
        import http.client

        deadline = time.monotonic() + 60
        ready = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log_text()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", path, headers=headers or {})
                if connection.getresponse().status in ok:
                    ready += 1
                    # With several workers, each should have answered once (the kernel spreads connections).
                    if ready >= 4 * self.workers:
                        return
                connection.close()
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.kind} not ready within 60 s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def pids(self) -> list[int]:
        """The server's processes (the uvicorn supervisor and its workers)."""
        found = [self.process.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    found.append(int(entry.name))
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server's processes."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def start_server(kind: str, env: dict[str, str], workers: int = 1) -> tuple[Server, int]:
    """For the other benches: one :class:`Server` of ``kind``, ready (its logs in a temporary directory)."""
    server = Server(kind, workers, env, Path(tempfile.mkdtemp(prefix=f"portal-bench-{kind}-")))
    try:
        server.wait_ready(
            "/healthz" if kind == "portal" else "/", ok=(200,) if ":" not in kind else (404, 405)
        )
    except BaseException:
        server.stop()
        raise
    return server, server.port


def stop_server(server: Server) -> None:
    server.stop()
    shutil.rmtree(Path(server.log.name).parent, ignore_errors=True)


async def load(
    port: int, path: str, headers: dict[str, str], seconds: float, connections: int
) -> dict[str, Any]:
    """For the other benches (inside their event loop): :func:`load_wrk` when wrk is installed, else
    :func:`load_python`, in a thread."""
    runner = load_wrk if shutil.which("wrk") else load_python
    figures = await asyncio.to_thread(runner, port, path, headers, seconds, connections)
    figures["latency_ms"] = {q: figures.get(f"{q}_ms") for q in ("p50", "p90", "p99")}
    return figures


def get_once(port: int, path: str, headers: dict[str, str]) -> tuple[int, str, list[str]]:
    """One GET: status, body, and the ``name=value`` of each cookie it sets."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        cookies = [v.split(";", 1)[0] for k, v in response.getheaders() if k.lower() == "set-cookie"]
        return response.status, body, cookies
    finally:
        connection.close()


def _ms(text: str) -> float:
    """wrk's ``1.23ms`` / ``850.00us`` / ``1.02s`` in milliseconds."""
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def load_wrk(
    port: int, path: str, headers: dict[str, str], seconds: float, connections: int
) -> dict[str, Any]:
    """wrk (C, epoll) with one thread: the cheapest client at hand, so that it takes as little of the two
    cores from the server as possible. Its CPU time is measured and reported."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    before = os.times()
    out = subprocess.run(
        [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    after = os.times()
    figures: dict[str, Any] = {"errors": 0, "non_2xx": 0}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            figures["rps"] = float(words[1])
        elif len(words) == 2 and words[0] in ("50%", "90%", "99%"):
            figures[f"p{words[0][:-1]}_ms"] = round(_ms(words[1]), 2)
        elif "requests in" in line:
            figures["requests"] = int(words[0])
        elif line.strip().startswith("Non-2xx"):
            figures["non_2xx"] = int(words[-1])
        elif line.strip().startswith("Socket errors"):
            figures["errors"] = sum(int(w.strip(",")) for w in words[3::2])
    client = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    figures["client_cpu_share"] = round(client / seconds, 3)
    return figures


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


def load_python(
    port: int, path: str, headers: dict[str, str], seconds: float, connections: int
) -> dict[str, Any]:
    """Fallback without wrk: keep-alive connections from asyncio in this process (costs the server far more
    CPU than wrk does, so the figures are lower)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []

    async def worker(stop_at: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                status, _ = await _request(reader, writer, raw)
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[status] += 1
        finally:
            writer.close()

    async def main() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds) for _ in range(connections)))
        return time.perf_counter() - started

    before = time.process_time()
    elapsed = asyncio.run(main())
    cpu = time.process_time() - before
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2) if ordered else 0.0

    total = sum(statuses.values())
    return {
        "rps": round(total / elapsed, 1),
        "requests": total,
        "p50_ms": at(0.5),
        "p90_ms": at(0.9),
        "p99_ms": at(0.99),
        "errors": 0,
        "non_2xx": total - statuses[200],
        "client_cpu_share": round(cpu / elapsed, 3),
    }


def normalized(html: str) -> str:
    """A page with its per-request values (CSRF tokens, the invite form's submission id) blanked."""
    import re

    html = re.sub(r'name="_csrf_token" value="[^"]*"', 'name="_csrf_token" value=""', html)
    return re.sub(r'name="submission_id" value="[^"]*"', 'name="submission_id" value=""', html)


#: name: (server, path, needs the session cookie)
TARGETS_SERVED = {
    "hello": ("hello", "/", False),
    "healthz": ("portal", "/healthz", False),
    "login": ("portal", "/login", False),
    "members": ("portal", "/ui/organization/members", True),
    "raw_floor": ("raw", "/ui/organization/members", True),
}


def throughput(
    url: str, token: str, seconds: float, connections: int, rounds: int, workers: int, client: str
) -> dict[str, Any]:
    """The three servers up side by side with ``workers`` workers each; every target loaded ``rounds`` times
    in alternation, so that what else the machine does meanwhile affects them alike. Medians of the rounds."""
    data_dir = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")},
        "PORTAL_DATABASE_URL": url,
        "PORTAL_DATA_DIR": str(data_dir),
        "PORTAL_POLICY_DIR": str(ROOT / "policies"),
        "PORTAL_SECRET_KEY": SECRET,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    }
    loader = load_wrk if client == "wrk" else load_python
    servers: dict[str, Server] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in TARGETS_SERVED}
    checks: dict[str, Any] = {}
    try:
        for kind in ("hello", "portal", "raw"):
            servers[kind] = Server(kind, workers, env, data_dir)
        cookie = {"Cookie": f"portal_session={token}", "Accept": "text/html"}
        servers["hello"].wait_ready("/")
        servers["portal"].wait_ready("/healthz")
        servers["raw"].wait_ready("/healthz")
        # A browser sends back the cookies it was given (the CSRF cookie): so does the load client.
        status, page, cookies = get_once(servers["portal"].port, "/ui/organization/members", cookie)
        headers = {"Accept": "text/html"}
        session_headers = {**cookie, "Cookie": "; ".join([cookie["Cookie"], *cookies])}
        raw_status, raw_page, _ = get_once(servers["raw"].port, "/ui/organization/members", cookie)
        checks.update(
            members_status=status,
            members_page_rows=page.count('<tr id="member-'),
            raw_status=raw_status,
            raw_page_rows=raw_page.count('<tr id="member-'),
            same_html=normalized(page) == normalized(raw_page),
            page_bytes=len(page.encode()),
        )
        if not checks["same_html"]:
            import difflib

            diff = difflib.unified_diff(
                normalized(page).splitlines(),
                normalized(raw_page).splitlines(),
                "portal",
                "raw",
                lineterm="",
                n=1,
            )
            print(
                "the raw floor's page differs from the portal's:\n" + "\n".join(list(diff)[:40]), flush=True
            )
        for kind, path, signed_in in TARGETS_SERVED.values():  # warm-up, not counted
            loader(servers[kind].port, path, session_headers if signed_in else headers, 1.0, connections)
        for _ in range(rounds):
            for name, (kind, path, signed_in) in TARGETS_SERVED.items():
                server = servers[kind]
                cpu = server.cpu_seconds()
                row = loader(
                    server.port, path, session_headers if signed_in else headers, seconds, connections
                )
                cpu = server.cpu_seconds() - cpu
                row["server_cpu_us"] = round(cpu / row["requests"] * 1e6, 1) if row.get("requests") else 0.0
                runs[name].append(row)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    results: dict[str, Any] = {"checks": checks}
    for name, rows in runs.items():
        middle = sorted(rows, key=lambda r: r["rps"])[len(rows) // 2]
        results[name] = {
            **middle,
            "rounds_rps": [r["rps"] for r in rows],
            "rounds_p99_ms": [r["p99_ms"] for r in rows],
            "non_2xx": sum(r["non_2xx"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
        }
    return results


# --- main -------------------------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


async def prepare(
    url: str, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    from portal.core import db

    world = await populate(url, args.members)
    print(f"inserted {world['members']:,} members in {world['insert_s']:.1f} s", flush=True)
    latency, checks = await query_latency(world["org"]["id"], args.runs)
    await db.stop(world["engine"])
    print("query (through the service)        p50 ms    p99 ms", flush=True)
    for name, figures in latency.items():
        print(f"  {name:<32} {figures['p50']:>8.2f}  {figures['p99']:>8.2f}", flush=True)
    return world, latency, checks


def run(args: argparse.Namespace) -> dict[str, Any]:
    url = os.environ.get("PORTAL_BENCH_DATABASE_URL", DEFAULT_URL)
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    asyncio.run(recreate(url))
    served: dict[int, dict[str, Any]] = {}
    try:
        world, latency, checks = asyncio.run(prepare(url, args))
        for workers in args.workers:
            print(
                f"serving with {workers} worker(s), client {client}, {args.connections} connections",
                flush=True,
            )
            served[workers] = throughput(
                url, world["token"], args.seconds, args.connections, args.rounds, workers, client
            )
    finally:
        asyncio.run(recreate(url, drop_only=True))
    figures: dict[str, Any] = {}
    labels = {
        "hello": "bare Litestar hello world",
        "healthz": "portal /healthz",
        "login": "portal /login",
        "members": "portal /ui/organization/members",
        "raw_floor": "raw floor (asyncpg + Jinja)",
    }
    all_ok = True
    for workers, rps in served.items():
        print(
            f"{workers} worker(s)                          req/s    p50 ms    p99 ms  server CPU µs/req  rounds"
        )
        for name, label in labels.items():
            r = rps[name]
            print(
                f"  {label:<32} {r['rps']:>8.1f}  {r['p50_ms']:>8.2f}  {r['p99_ms']:>8.2f}  {r['server_cpu_us']:>10.0f}"
                f"         {r['rounds_rps']}"
            )
        w = {
            "hello_rps": rps["hello"]["rps"],
            "healthz_rps": rps["healthz"]["rps"],
            "login_rps": rps["login"]["rps"],
            "members_rps": rps["members"]["rps"],
            "raw_floor_rps": rps["raw_floor"]["rps"],
            "healthz_ratio": ratio(rps["healthz"]["rps"], rps["hello"]["rps"]),
            "members_ratio": ratio(rps["members"]["rps"], rps["raw_floor"]["rps"]),
            "login_ratio": ratio(rps["login"]["rps"], rps["hello"]["rps"]),
            "members_hello_ratio": ratio(rps["members"]["rps"], rps["hello"]["rps"]),
            # The same two ratios from the servers' CPU time per request (no target): what the requests cost
            # when CPU is the limit, and far less moved than requests/s by what else the machine is doing.
            "healthz_cpu_ratio": ratio(rps["hello"]["server_cpu_us"], rps["healthz"]["server_cpu_us"]),
            "members_cpu_ratio": ratio(rps["raw_floor"]["server_cpu_us"], rps["members"]["server_cpu_us"]),
            "members_p50_ms": rps["members"]["p50_ms"],
            "members_p99_ms": rps["members"]["p99_ms"],
            "raw_floor_p99_ms": rps["raw_floor"]["p99_ms"],
            "server_cpu_us": {name: rps[name]["server_cpu_us"] for name in labels},
            "client_cpu_share": {name: rps[name]["client_cpu_share"] for name in labels},
            "rounds_rps": {name: rps[name]["rounds_rps"] for name in labels},
            "rounds_p99_ms": {name: rps[name]["rounds_p99_ms"] for name in labels},
            "non_2xx": sum(rps[name]["non_2xx"] for name in labels),
            "errors": sum(rps[name]["errors"] for name in labels),
            "checks": rps["checks"],
        }
        w["healthz_ok"] = w["healthz_ratio"] >= TARGETS["healthz_ratio"]
        w["members_ok"] = w["members_ratio"] >= TARGETS["members_ratio"]
        w["p99_ok"] = w["members_p99_ms"] < TARGETS["members_p99_ms"]
        served_ok = (
            w["non_2xx"] == 0
            and w["errors"] == 0
            and rps["checks"]["members_status"] == 200
            and rps["checks"]["members_page_rows"] == 20
            and rps["checks"]["same_html"]
        )
        w["ok"] = w["healthz_ok"] and w["members_ok"] and w["p99_ok"] and served_ok
        all_ok = all_ok and w["ok"]
        figures[f"workers_{workers}"] = w
        print(
            f"  /healthz / hello {w['healthz_ratio']:.2f} (target >= {TARGETS['healthz_ratio']}),"
            f" members / raw floor {w['members_ratio']:.2f} (target >= {TARGETS['members_ratio']}),"
            f" members p99 {w['members_p99_ms']:.1f} ms (target < {TARGETS['members_p99_ms']:.0f});"
            f" by server CPU per request: /healthz {w['healthz_cpu_ratio']:.2f}, members {w['members_cpu_ratio']:.2f};"
            f" same HTML as the portal: {rps['checks']['same_html']}",
            flush=True,
        )
    queries_ok = all(latency[k]["p99"] < TARGETS["query_p99_ms"] for k in ("first_page", "search", "page50"))
    rows_ok = checks["first_page_rows"] == 20 and checks["page50_rows"] == 20
    return {
        "bench": "members",
        "engine": "postgresql",
        "members": world["members"],
        "client": client,
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "first_page_ms": latency["first_page"],
        "search_ms": latency["search"],
        "page50_ms": latency["page50"],
        "email_search_ms": latency["email_search"],
        "broad_search_ms": latency["broad_search"],
        "role_filter_ms": latency["role_filter"],
        **figures,
        # Every server shares this machine's CPUs with PostgreSQL and the load client; say how busy it was.
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "checks": checks,
        "targets": TARGETS,
        "queries_ok": queries_ok,
        "ok": all_ok and queries_ok and rows_ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=400, help="timed calls per query")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of one load run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating load runs per target")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="uvicorn workers, one pass each"
    )
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

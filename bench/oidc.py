"""OpenID Provider (DESIGN section 12): the token endpoint and an access-token check, next to a bare Litestar
"hello world" served the same way in the same run (uvicorn, one worker; bench/members.py's servers).

1. POST /oauth/token, grant_type=authorization_code (a fresh code per request, client_secret_basic): the
   whole exchange with a database write, ID + access + refresh token signed (ES256): requests/s and p99.
2. An access-token check as a resource server does it: the token verified with joserfc against the JWKS
   fetched over HTTP (signature + exp/iss/aud), per call; and GET /oauth/userinfo (the portal verifying the
   token and reading the user) requests/s and p99.
3. The hello world's requests/s and p99, and the ratios.

Run: .venv/bin/python bench/oidc.py [--seconds S] [--connections C]   (SQLite in a temporary directory).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import members as harness

ROOT = Path(__file__).resolve().parents[1]
CALLBACK = "https://bench.example/callback"


async def prepare(url: str, codes: int, settings: Any) -> dict[str, Any]:
    from portal.auth import accounts, sessions
    from portal.core import clock, db
    from portal.core.ids import hash_secret, new_secret
    from portal.core.migrate import migrate
    from portal.core.tables import OidcGrant, Session
    from portal.oidc import clients, keys

    engine = db.bind(db.make_engine(url))
    await db.start(engine)
    try:
        await migrate()
        org = await accounts.create_organization("acme", "Acme", features=["sso", "scim"])
        user = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
        await accounts.add_member(org["id"], user["id"], ["admin"], known_roles=("admin",))
        _token, session_id = await sessions.create_session(
            user["id"], auth_method="email_code", organization_id=org["id"]
        )
        session = await Session.select().where(Session.id == session_id).first()
        client, secret = await clients.create("Bench", redirect_uris=[CALLBACK])
        await keys.signing_key(settings, "ES256")
        now = clock.utcnow()
        values = []
        rows = []
        for _ in range(codes):
            code = new_secret("code")
            values.append(code)
            rows.append(
                OidcGrant(
                    client=client.id,
                    user=user["id"],
                    session_id=session_id,
                    organization_id=org["id"],
                    scope="openid email profile",
                    redirect_uri=CALLBACK,
                    code_hash=hash_secret(code),
                    code_expires_at=now.replace(year=now.year + 1),
                    auth_time=session["authenticated_at"],
                    amr=["otp"],
                )
            )
        for start in range(0, len(rows), 500):
            await OidcGrant.insert(*rows[start : start + 500])
        return {"client_id": client.id, "secret": secret, "codes": values}
    finally:
        await db.stop(engine)


async def post_load(
    port: int, bodies: list[bytes], auth: str, seconds: float, connections: int
) -> dict[str, Any]:
    """POST /oauth/token over keep-alive connections, one fresh code per request."""
    from collections import Counter

    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    queue = list(reversed(bodies))

    async def worker(stop_at: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at and queue:
                body = queue.pop()
                head = (
                    f"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                start = time.perf_counter()
                status, _ = await harness._request(reader, writer, head + body)
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[status] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(started + seconds) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    total = sum(statuses.values())
    return {
        "rps": round(total / elapsed, 1),
        "requests": total,
        "statuses": dict(statuses),
        "latency_ms": harness.percentiles(latencies) if latencies else {},
    }


def verify_loop(token: str, jwks: dict[str, Any], issuer: str, audience: str, runs: int) -> dict[str, float]:
    from joserfc import jwt
    from joserfc.jwk import KeySet
    from joserfc.jwt import JWTClaimsRegistry

    keyset = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    registry = JWTClaimsRegistry(
        iss={"essential": True, "value": issuer}, aud={"essential": True, "value": audience}
    )
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        decoded = jwt.decode(token, keyset)
        registry.validate(decoded.claims)
        samples.append((time.perf_counter() - start) * 1_000_000)
    samples.sort()
    return {
        "p50_us": round(samples[len(samples) // 2], 1),
        "p99_us": round(samples[int(len(samples) * 0.99)], 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from portal.core.settings import load_settings

    workdir = Path(tempfile.mkdtemp(prefix="portal-bench-oidc-"))
    url = f"sqlite:///{workdir / 'portal.sqlite3'}"
    secret_key = "bench-secret-key-" + "b" * 32
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")},
        "PORTAL_DATABASE_URL": url,
        "PORTAL_DATA_DIR": str(workdir),
        "PORTAL_POLICY_DIR": str(ROOT / "policies"),
        "PORTAL_SECRET_KEY": secret_key,
        "PORTAL_LOG_LEVEL": "WARNING",
    }
    settings = load_settings({k: v for k, v in env.items() if k.startswith("PORTAL_")})
    seeded = await prepare(url, args.codes, settings)
    auth = "Basic " + base64.b64encode(f"{seeded['client_id']}:{seeded['secret']}".encode()).decode()
    bodies = [
        f"grant_type=authorization_code&code={code}&redirect_uri={CALLBACK}".encode()
        for code in seeded["codes"]
    ]
    portal, portal_port = harness.start_server("portal", env)
    hello, hello_port = harness.start_server("hello", env)
    try:
        base = f"http://127.0.0.1:{portal_port}"
        issuer = settings.public_url.rstrip("/")
        # Warm-up: the first exchange unseals the key; also gives the access token for the checks.
        async with httpx.AsyncClient(base_url=base) as http:
            form = {"authorization": auth, "content-type": "application/x-www-form-urlencoded"}
            first = await http.post("/oauth/token", content=bodies.pop(), headers=form)
            first.raise_for_status()
            access = first.json()["access_token"]
            jwks = (await http.get("/oauth/jwks")).json()
        token_run = await post_load(portal_port, bodies, auth, args.seconds, args.connections)
        userinfo = await harness.load(
            portal_port,
            "/oauth/userinfo",
            {"Authorization": f"Bearer {access}"},
            args.seconds,
            args.connections,
        )
        hello_run = await harness.load(hello_port, "/", {}, args.seconds, args.connections)
        check = verify_loop(access, jwks, issuer, seeded["client_id"], args.runs)
    finally:
        harness.stop_server(portal)
        harness.stop_server(hello)
    userinfo.pop("sample", None)
    hello_run.pop("sample", None)
    result = {
        "bench": "oidc",
        "token_endpoint": token_run,
        "userinfo": userinfo,
        "hello_world": hello_run,
        "access_token_check_joserfc": check,
        "ratio_token_to_hello": round(token_run["rps"] / hello_run["rps"], 3),
        "ratio_userinfo_to_hello": round(userinfo["rps"] / hello_run["rps"], 3),
        "hello_requests_per_access_token_check": round((1_000_000 / check["p50_us"]) / hello_run["rps"], 1),
    }
    print(f"token endpoint: {token_run['rps']} req/s, p99 {token_run['latency_ms'].get('p99')} ms")
    print(f"userinfo:       {userinfo['rps']} req/s, p99 {userinfo['latency_ms'].get('p99')} ms")
    print(f"hello world:    {hello_run['rps']} req/s, p99 {hello_run['latency_ms'].get('p99')} ms")
    print(f"access-token check (joserfc, JWKS over HTTP): p50 {check['p50_us']} µs, p99 {check['p99_us']} µs")
    print(
        f"ratios: token/hello {result['ratio_token_to_hello']}, userinfo/hello {result['ratio_userinfo_to_hello']}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per endpoint")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--codes", type=int, default=6000, help="authorization codes prepared for the run")
    parser.add_argument("--runs", type=int, default=2000, help="timed access-token checks")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()

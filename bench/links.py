"""What setup-link sessions and organization branding cost per request (issue 14).

GETs of the Domains widget through the whole app (in-process, httpx ASGI transport) for four principals:
an account session and a setup-link session, each in an organization without and with ``org_branding``
(a brand row: one more query per request). No target in DESIGN §9; it shows the cost stays flat.

Run: .venv/bin/python bench/links.py [--requests N]
Database: a fresh SQLite file. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import httpx  # noqa: E402

from policy import PolicyEngine  # noqa: E402
from portal.auth import accounts, sessions  # noqa: E402
from portal.core import db  # noqa: E402
from portal.core.migrate import migrate  # noqa: E402
from portal.core.settings import Settings  # noqa: E402
from portal.core.tables import OrganizationBrand  # noqa: E402
from portal.links import service  # noqa: E402
from portal.web.app import create_app  # noqa: E402

PAGE = "/ui/organization/domains"


async def run(requests: int) -> dict[str, dict[str, float]]:
    folder = tempfile.mkdtemp()
    settings = Settings(
        database_url=f"sqlite:///{folder}/bench.sqlite3",
        data_dir=folder,
        policy_dir=str(ROOT / "policies"),
        secret_key="bench-" + "x" * 40,
        log_level="WARNING",
    )
    engine = db.bind(db.make_engine(settings.database_url))
    await db.start(engine)
    await migrate()
    plain = await accounts.create_organization("plain", "Plain", features=["domain_verification"])
    branded = await accounts.create_organization(
        "branded", "Branded", features=["domain_verification", "org_branding"]
    )
    await OrganizationBrand(organization=branded["id"], primary_color="#1d4ed8").save()
    user = await accounts.create_user("admin@bench.test")
    for org in (plain, branded):
        await accounts.add_member(org["id"], user["id"], ["admin"], known_roles=["admin"])
    app = create_app(settings, engine=engine, policy=PolicyEngine.from_dir(settings.policy_dir))
    results: dict[str, dict[str, float]] = {}
    async with app.lifespan():
        for label, org, kind in (
            ("account", plain, "account"),
            ("account_branded", branded, "account"),
            ("setup_link", plain, "link"),
            ("setup_link_branded", branded, "link"),
        ):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
                if kind == "account":
                    token, _ = await sessions.create_session(
                        user["id"], auth_method="bench", organization_id=org["id"]
                    )
                    client.cookies.set(sessions.cookie_name(settings), token)
                else:
                    created = await service.create_link(settings, org["id"], "domain_verification")
                    token, _ = await service.open_link(settings, created.url.rsplit("/", 1)[1])
                    client.cookies.set(service.cookie_name(settings), token)
                for _ in range(20):
                    await client.get(PAGE, headers={"accept": "text/html"})
                times = []
                for _ in range(requests):
                    started = time.perf_counter()
                    response = await client.get(PAGE, headers={"accept": "text/html"})
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.status_code
                times.sort()
                results[label] = {
                    "median_ms": round(statistics.median(times), 2),
                    "p95_ms": round(times[int(len(times) * 0.95)], 2),
                }
                print(
                    f"{label:20s} median {results[label]['median_ms']:.2f} ms  p95 {results[label]['p95_ms']:.2f} ms"
                )
    await db.stop(engine)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    results = asyncio.run(run(args.requests))
    print(json.dumps({"bench": "links", "requests": args.requests, "page": PAGE, **results}))


if __name__ == "__main__":
    main()

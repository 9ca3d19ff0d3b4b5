"""Management API latency: ``portal serve`` (SQLite, one uvicorn process) on loopback, an all-scopes key,
sequential requests for GET one organization, GET a page of memberships and PATCH an organization;
p50/p99 per operation and a final JSON line. Each request also pays the key lookup and the per-key rate limit
(one insert and one range read in ``rate_event``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
# bench/policy.py would shadow the policy package: this script imports from the repository root instead.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

from tests.conftest import free_port, portal_serve  # noqa: E402

REQUESTS = int(os.environ.get("PORTAL_BENCH_API_REQUESTS", "300"))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.sqlite3"
        seeded = subprocess.run(
            [sys.executable, "-m", "tests.portal.api.fuzz_seed", url],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        ids = json.loads(seeded.stdout.strip().splitlines()[-1])
        port = free_port()
        env = {
            "PORTAL_DATABASE_URL": url,
            "PORTAL_DATA_DIR": f"{tmp}/var",
            "PORTAL_POLICY_DIR": str(ROOT / "policies"),
            "PORTAL_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "PORTAL_API_RATE_LIMIT": "1000000",
            "PORTAL_LOG_LEVEL": "WARNING",
        }
        org = ids["organization_id"]
        operations = {
            "get_organization": ("GET", f"/api/v1/organizations/{org}", None),
            "list_memberships": ("GET", f"/api/v1/organizations/{org}/memberships", None),
            "patch_organization": ("PATCH", f"/api/v1/organizations/{org}", "metadata"),
        }
        results: dict[str, dict[str, float]] = {}
        with portal_serve(env, port, Path(tmp) / "serve.log"):
            headers = {"authorization": f"Bearer {ids['key']}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
                for name, (method, path, body) in operations.items():
                    timings = []
                    for n in range(REQUESTS + 20):
                        payload = {"metadata": {"n": n}} if body else None
                        started = time.perf_counter()
                        response = client.request(method, path, json=payload)
                        elapsed = (time.perf_counter() - started) * 1000
                        assert response.status_code == 200, response.text
                        if n >= 20:  # warm-up
                            timings.append(elapsed)
                    timings.sort()
                    results[name] = {
                        "p50_ms": round(statistics.median(timings), 2),
                        "p99_ms": round(timings[int(len(timings) * 0.99) - 1], 2),
                    }
        for name, figures in results.items():
            print(f"{name:20} p50 {figures['p50_ms']:7.2f} ms   p99 {figures['p99_ms']:7.2f} ms")
        print(json.dumps({"bench": "api", "engine": "sqlite", "requests": REQUESTS, **results}))


if __name__ == "__main__":
    main()

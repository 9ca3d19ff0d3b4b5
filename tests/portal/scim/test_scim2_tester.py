"""scim2-tester (an independent SCIM 2.0 conformance checker) against a real ``portal serve`` process: every
check it runs must pass. It discovers the schemas and resource types we publish, then creates, reads,
queries, replaces, patches and deletes Users and Groups with values it generates from those schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from policy import Feature
from tests.conftest import POLICY_DIR, free_port, portal_serve
from tests.factories import make_org
from tests.portal.scim.conftest import make_directory


@pytest.fixture
def portal(database_url: str, tmp_path: Path, db: Any) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
        "PORTAL_SECRET_KEY": "scim-test-secret-" + "k" * 32,
        "PORTAL_PUBLIC_URL": url,
        "PORTAL_LOG_LEVEL": "WARNING",
        # The checker sends requests back to back, faster than an IdP; the limit itself is tested elsewhere.
        "PORTAL_SCIM_RATE_LIMIT": "10000",
    }
    with portal_serve(env, port, tmp_path / "server.log"):
        yield url


async def test_scim2_tester_every_check_passes(portal: str, tmp_path: Path) -> None:
    org = await make_org(features=[Feature.SCIM])
    directory, token = await make_directory(org)
    base = f"{portal}/scim/v2/{directory.id}"
    http = httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    client = SyncSCIMClient(http)
    # The checker is synchronous and the server is another process: run it off the event loop.
    import asyncio

    try:
        results = await asyncio.to_thread(check_server, client)
    finally:
        http.close()
    failed = [r for r in results if r.status not in (Status.SUCCESS, Status.SKIPPED)]
    report = "\n".join(f"{r.status.name} {r.title}: {r.reason}" for r in failed)
    (tmp_path / "results.txt").write_text("\n".join(f"{r.status.name} {r.title}" for r in results))
    print(f"scim2-tester: {len(results)} checks, {sum(r.status == Status.SUCCESS for r in results)} passed")
    assert results, "scim2-tester ran no checks"
    assert not failed, report + "\n\nserver log:\n" + (tmp_path / "server.log").read_text()[-5000:]
    assert sum(r.status == Status.SUCCESS for r in results) >= 20

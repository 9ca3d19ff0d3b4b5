from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from litestar import get
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core.settings import Settings
from portal.web.app import create_app
from portal.web.registry import Section, Widget, WidgetRegistry
from tests.conftest import serve

SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
}


@get("/ui/account/boom", opt={"public": True}, sync_to_thread=False)
def boom() -> str:
    raise RuntimeError("secret internals: password=hunter2")


def boom_registry() -> WidgetRegistry:
    return WidgetRegistry([Widget("boom", "Boom", "/ui/account/boom", Section.ACCOUNT, handlers=(boom,))])


@pytest.fixture
def registry() -> WidgetRegistry:
    return boom_registry()


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/static/portal.css"])
async def test_health_checks_and_static_files_set_no_cookie(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert "set-cookie" not in response.headers


async def test_pages_still_get_their_csrf_cookie(client: httpx.AsyncClient) -> None:
    response = await client.get("/login", headers={"accept": "text/html"})
    assert "portal_csrf=" in response.headers["set-cookie"]


async def test_readyz_checks_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}


async def test_readyz_reports_unreachable_redis(
    settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry
) -> None:
    app = create_app(_replace(settings, "redis://127.0.0.1:1/0"), engine=db, policy=policy, registry=registry)
    async with serve(app) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "redis": "error: ConnectionError"}


async def test_readyz_with_redis(
    settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry
) -> None:
    from tests.conftest import REDIS_URL

    app = create_app(_replace(settings, REDIS_URL), engine=db, policy=policy, registry=registry)
    async with serve(app) as client:
        response = await client.get("/readyz")
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def _replace(settings: Settings, redis_url: str) -> Settings:
    import msgspec

    return msgspec.structs.replace(settings, redis_url=redis_url)


@pytest.mark.parametrize("path", ["/healthz", "/no-such-page", "/ui/account/boom"])
async def test_security_headers_on_every_response(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "strict-transport-security" not in response.headers  # plain http
    assert len(response.headers["x-request-id"]) == 16


async def test_hsts_on_https(
    settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry
) -> None:
    import msgspec

    secure = msgspec.structs.replace(settings, public_url="https://portal.example.com")
    async with serve(create_app(secure, engine=db, policy=policy, registry=registry)) as client:
        response = await client.get("/healthz")
    assert response.headers["strict-transport-security"].startswith("max-age=")


async def test_unknown_page_is_a_404_page_for_browsers_and_json_for_apis(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/no-such-page", headers={"accept": "text/html"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in page.text
    api = await client.get("/no-such-page", headers={"accept": "application/json"})
    assert api.status_code == 404
    assert api.json()["error"]["status"] == 404
    assert api.json()["error"]["request_id"] == api.headers["x-request-id"]


async def test_unexpected_errors_show_no_internals_and_are_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for accept in ("text/html", "application/json"):
        response = await client.get("/ui/account/boom", headers={"accept": accept})
        assert response.status_code == 500
        assert "hunter2" not in response.text
        assert "Traceback" not in response.text
        assert "RuntimeError" not in response.text
        assert response.headers["x-request-id"] in response.text
    logged = [r for r in caplog.records if r.name == "portal.error"]
    assert logged and logged[-1].exc_info is not None
    assert "request_id=" in logged[-1].getMessage()


async def test_one_log_line_per_request(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="portal.request")
    response = await client.get("/healthz")
    lines = [r.getMessage() for r in caplog.records if r.name == "portal.request"]
    assert len(lines) == 1
    assert lines[0].startswith("GET /healthz 200 ")
    assert lines[0].endswith(f"request_id={response.headers['x-request-id']}")


async def test_shutdown_does_not_wait_forever_for_a_connection_in_use(
    database_url: str, db: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from piccolo.engine.postgres import PostgresEngine

    from portal.core import db as portal_db

    engine = portal_db.make_engine(database_url)
    await portal_db.start(engine)
    if not isinstance(engine, PostgresEngine):
        await portal_db.stop(engine)  # SQLite opens a connection per query: no pool to wait for
        return
    monkeypatch.setattr(portal_db, "CLOSE_TIMEOUT", 0.2)
    assert engine.pool is not None
    await engine.pool.acquire()  # e.g. a request still running at shutdown, never released
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="portal.db"):
        await asyncio.wait_for(portal_db.stop(engine), 5)
    assert time.monotonic() - started < 2
    assert engine.pool is None
    assert "still in use after 0.2 s at shutdown" in caplog.text

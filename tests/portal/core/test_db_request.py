"""One pooled connection per request (portal.core.db.ConnectionPerRequest), on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from piccolo.engine.base import Engine

from portal.core import db as portal_db
from portal.core.tables import Organization

#: The connection-per-request layer of the PostgreSQL engine; the SQLite run deselects these.
pytestmark = pytest.mark.postgres

PID = "SELECT pg_backend_pid() AS pid"


def _postgres(engine: Engine) -> portal_db.PortalPostgresEngine:
    if not isinstance(engine, portal_db.PortalPostgresEngine):
        raise AssertionError("a PostgreSQL connection pool only (the module is marked postgres)")
    return engine


async def _pid() -> int:
    rows = await Organization.raw(PID)
    return int(rows[0]["pid"])


def _in_use(engine: portal_db.PortalPostgresEngine) -> int:
    pool: Any = engine.pool
    return int(pool.get_size() - pool.get_idle_size())


async def _request(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` as the handler of one HTTP request behind ConnectionPerRequest."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await body()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    await portal_db.ConnectionPerRequest(app)({"type": "http", "path": "/"}, receive, send)


async def test_a_request_runs_its_queries_on_one_connection_and_gives_it_back(db: Engine) -> None:
    engine = _postgres(db)
    before = _in_use(engine)
    seen: list[int] = []
    in_use: list[int] = []

    async def handler() -> None:
        for _ in range(3):
            seen.append(await _pid())
            in_use.append(_in_use(engine))

    await _request(handler)
    assert len(set(seen)) == 1
    assert in_use == [before + 1] * 3
    assert _in_use(engine) == before  # back in the pool once the response is sent


async def test_a_transaction_takes_the_request_connection_over(db: Engine) -> None:
    engine = _postgres(db)
    before = _in_use(engine)
    pids: dict[str, int] = {}
    in_use: list[int] = []

    async def handler() -> None:
        pids["before"] = await _pid()
        async with engine.transaction():
            pids["inside"] = await _pid()
            in_use.append(_in_use(engine))
            await Organization.insert(Organization(name="tx-org", display_name="Tx"))
        pids["after"] = await _pid()
        in_use.append(_in_use(engine))

    await _request(handler)
    assert pids["inside"] == pids["before"]  # the same connection, never a second one
    assert in_use == [before + 1, before + 1]
    assert _in_use(engine) == before
    assert await Organization.exists().where(Organization.name == "tx-org")  # committed


async def test_concurrent_queries_of_one_request_both_run(db: Engine) -> None:
    engine = _postgres(db)
    before = _in_use(engine)
    results: list[Any] = []

    async def handler() -> None:
        await _pid()  # the request now holds a connection
        results.extend(await asyncio.gather(_pid(), _pid(), _pid()))

    await _request(handler)
    assert len(results) == 3
    assert _in_use(engine) == before


async def test_the_connection_goes_back_when_the_handler_fails(db: Engine) -> None:
    engine = _postgres(db)
    before = _in_use(engine)

    async def handler() -> None:
        await _pid()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await _request(handler)
    assert _in_use(engine) == before


async def test_a_failed_query_leaves_the_connection_usable(db: Engine) -> None:
    engine = _postgres(db)
    before = _in_use(engine)
    pids: list[int] = []

    async def handler() -> None:
        pids.append(await _pid())
        with pytest.raises(Exception, match="no_such_table"):
            await Organization.raw("SELECT * FROM no_such_table")
        pids.append(await _pid())

    await _request(handler)
    assert pids[0] == pids[1]
    assert _in_use(engine) == before


async def test_outside_a_request_each_query_uses_the_pool(db: Engine) -> None:
    engine = _postgres(db)
    before = _in_use(engine)
    await _pid()
    assert _in_use(engine) == before  # nothing held between queries


async def test_fetch_answers_like_piccolo_raw(db: Engine) -> None:
    # Both engines: asyncpg straight on PostgreSQL, piccolo's Table.raw otherwise.
    for name in ("acme", "beta", "gamma"):
        await Organization.insert(Organization(name=name, display_name=name.title()))
    sql = "SELECT name, display_name FROM organization WHERE name >= {} AND name < {} ORDER BY name"
    rows = await portal_db.fetch(sql, "b", "h")
    assert rows == [{"name": "beta", "display_name": "Beta"}, {"name": "gamma", "display_name": "Gamma"}]
    assert rows == await Organization.raw(sql, "b", "h")
    async with db.transaction():  # inside a transaction: piccolo's path, on the transaction's connection
        await Organization.insert(Organization(name="delta", display_name="Delta"))
        assert [r["name"] for r in await portal_db.fetch(sql, "b", "h")] == ["beta", "delta", "gamma"]


async def test_the_connection_can_go_back_before_the_request_ends(db: Engine) -> None:
    # The app gives it back when the handler returns (after_request), so rendering holds no connection.
    engine = _postgres(db)
    before = _in_use(engine)
    in_use: list[int] = []

    async def handler() -> None:
        await _pid()
        in_use.append(_in_use(engine))
        await portal_db.release_request_connection()
        in_use.append(_in_use(engine))
        await _pid()  # a later query checks one out again
        in_use.append(_in_use(engine))

    await _request(handler)
    assert in_use == [before + 1, before, before + 1]
    assert _in_use(engine) == before

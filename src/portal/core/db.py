"""Database engines: SQLite (embedded default) or PostgreSQL, chosen by ``database_url``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from piccolo.apps.migrations.tables import Migration
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine, PostgresTransaction
from piccolo.engine.sqlite import SQLiteEngine, TransactionType
from piccolo.table import Table

from portal.core.tables import TABLES, Organization

_engine: Engine[Any] | None = None
log = logging.getLogger("portal.db")


def make_engine(database_url: str) -> Engine[Any]:
    """An engine for ``sqlite:///path`` or ``postgresql://...``; creates the SQLite file's folder."""
    scheme = urlsplit(database_url).scheme
    if scheme == "sqlite":
        path = Path(database_url.removeprefix("sqlite:").removeprefix("///").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite opens a connection per query; the timeout lets concurrent writers wait instead of failing.
        return SQLiteEngine(path=str(path), timeout=30)
    return PortalPostgresEngine(config={"dsn": database_url})


# --- one pooled connection per request ------------------------------------------------------------------
#
# Checking a connection out of asyncpg's pool and back costs more CPU than a small query itself (about 40 µs
# against 25 µs, measured with bench/members.py's database), and piccolo checks one out for every query.
# Within a request (see ConnectionPerRequest) the first query checks one out and the request's later queries
# reuse it; it goes back to the pool when the response is sent. Nothing is cached but the connection: every
# query still runs, so a revoked session or a removed member is refused on the very next request.


class _Held:
    """The connection a request has checked out, if any."""

    __slots__ = ("busy", "connection", "done", "pool")

    def __init__(self) -> None:
        self.connection: Any = None
        self.pool: Any = None
        self.busy = False
        self.done = False

    async def release(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            await self.pool.release(connection)


_HELD: ContextVar[_Held | None] = ContextVar("portal_request_connection", default=None)


class PortalPostgresEngine(PostgresEngine):
    """piccolo's PostgreSQL engine, with queries outside a transaction run on the request's connection."""

    async def _run_in_pool(self, query: str, args: Sequence[Any] | None = None) -> Any:
        held = _HELD.get()
        pool = self.pool
        # Not in a request, finished, or in use by a concurrent query of the same request: the pool as usual.
        if held is None or held.done or held.busy or pool is None or held.pool not in (None, pool):
            return await super()._run_in_pool(query, args)
        held.busy = True
        try:
            if held.connection is None:
                held.connection, held.pool = await pool.acquire(), pool
            return await held.connection.fetch(query, *(args or ()))
        finally:
            held.busy = False
            if held.done:  # the request ended while this query ran (a task it started)
                await held.release()

    def transaction(self, allow_nested: bool = True) -> PostgresTransaction:
        return _Transaction(engine=self, allow_nested=allow_nested)


class _Transaction(PostgresTransaction):
    """A transaction begun in a request takes over the request's connection (and returns it to the pool at its
    end, as piccolo does): a request never holds two connections, so a full pool cannot deadlock."""

    async def get_connection(self) -> Any:
        held = _HELD.get()
        if (
            held is not None
            and held.connection is not None
            and not held.busy
            and held.pool is self.engine.pool
        ):
            connection, held.connection = held.connection, None
            return connection
        return await super().get_connection()  # type: ignore[no-untyped-call]


@functools.lru_cache(maxsize=512)
def _numbered(sql: str, count: int) -> str:
    """piccolo's ``{}`` placeholders as PostgreSQL's ``$1``, ``$2``... (each distinct SQL text once)."""
    return sql.format(*(f"${n}" for n in range(1, count + 1)))


async def fetch(sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of a raw query written with ``{}`` placeholders, like piccolo's ``Table.raw`` and with the same
    result. On PostgreSQL outside a transaction it goes to asyncpg straight (on the request's connection),
    without piccolo's per-query SQL compilation; otherwise through piccolo."""
    engine = current_engine()
    if (
        isinstance(engine, PortalPostgresEngine)
        and engine.pool is not None
        and engine.current_transaction.get() is None
    ):
        rows = await engine._run_in_pool(_numbered(sql, len(args)), args)
        return [dict(row) for row in rows]
    result: list[dict[str, Any]] = await Organization.raw(sql, *args)  # any table: it only names the engine
    return result


async def release_request_connection() -> None:
    """Give the request's connection back to the pool now (the app calls it when the handler has returned, so
    that rendering the page does not keep a connection from the next request); a later query checks one out
    again."""
    held = _HELD.get()
    if held is not None and not held.busy:
        await held.release()


class ConnectionPerRequest:
    """Pure ASGI: each HTTP request reuses one pooled connection for its queries (see above)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held = _Held()
        token = _HELD.set(held)
        try:
            await self.app(scope, receive, send)
        finally:
            _HELD.reset(token)
            held.done = True
            if not held.busy:
                await held.release()


def bind(engine: Engine[Any]) -> Engine[Any]:
    """Point every portal table, and piccolo's migration runner, at ``engine``."""
    global _engine
    _engine = engine
    tables: tuple[type[Table], ...] = (*TABLES, Migration)
    for table in tables:
        table._meta.db = engine
    # piccolo's migration runner finds its engine through a conf module; ours reads `_engine`.
    os.environ.setdefault("PICCOLO_CONF", "portal.core.piccolo_conf")
    return engine


def current_engine() -> Engine[Any]:
    """The engine installed by :func:`bind`."""
    if _engine is None:
        raise RuntimeError("no database engine is bound; call portal.db.bind() first")
    return _engine


async def start(engine: Engine[Any]) -> bool:
    """Open the connection pool (PostgreSQL) unless one is open; True if this call opened it."""
    if isinstance(engine, PostgresEngine) and engine.pool is None:
        options: dict[str, Any] = {"max_size": 10, "reset": _no_session_reset, "timeout": CONNECT_TIMEOUT}
        try:
            await engine.start_connection_pool(min_size=1, **options)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            # issue 15: a database that is down at start-up must not keep the portal from starting; pages
            # answer 503 (and /readyz says why) until it is back, then the pool connects on demand.
            log.warning("the database is not answering (%s: %s); starting anyway", type(exc).__name__, exc)
            await engine.start_connection_pool(min_size=0, **options)
        return True
    return False


#: Seconds to wait for a new database connection (asyncpg's default is 60).
CONNECT_TIMEOUT = 5.0


async def _no_session_reset(connection: Any) -> None:
    """Release pooled connections without asyncpg's reset query (``RESET ALL; UNLISTEN *; CLOSE ALL;``
    advisory unlock): the portal keeps no session state, and that query is a second round trip for every
    query made outside a transaction. asyncpg still rolls back a transaction left open."""


#: How long a shutdown waits for pooled connections still in use.
CLOSE_TIMEOUT = 10.0


async def stop(engine: Engine[Any]) -> None:
    """Close the connection pool (PostgreSQL): wait up to :data:`CLOSE_TIMEOUT` for connections in use to come
    back, then close the rest by force (a connection that never comes back must not stop a shutdown)."""
    if isinstance(engine, PostgresEngine) and engine.pool is not None:
        pool, engine.pool = engine.pool, None
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await pool.close()
        except TimeoutError:
            log.warning(
                "database connections still in use after %s s at shutdown: closing them", CLOSE_TIMEOUT
            )
            pool.terminate()


def json_value(value: Any) -> Any:
    """A JSON column's value read by a raw query (SQLite and asyncpg hand it over as text)."""
    return json.loads(value) if isinstance(value, str) else value


#: How long ``/readyz`` waits for the database before calling it down.
PING_TIMEOUT = 3.0


async def ping(engine: Engine[Any]) -> None:
    """Raise if the database does not answer (within :data:`PING_TIMEOUT`)."""
    async with asyncio.timeout(PING_TIMEOUT):
        await engine.run_ddl("SELECT 1")


# --- issue 15: serving through faults
#: SQLSTATE classes and codes meaning "the server is not there right now": 08 connection exceptions, 57P01
#: admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now (starting up or shutting down).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database file", "disk i/o error")


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database cannot be reached at the moment, as opposed
    to a bug or bad data: refused or dropped connections, a server shutting down or starting up, a pool
    closed under us, a timeout. Pages then answer 503 and the next request tries again."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _unavailable(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return str(exc).lower().startswith(_SQLITE_UNAVAILABLE)
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
        return True
    # asyncpg's InterfaceError family without a SQLSTATE: "connection is closed", "pool is closing",
    # ConnectionDoesNotExistError (recognised by module, without importing asyncpg on SQLite installs).
    module = type(exc).__module__
    if module.startswith("asyncpg"):
        name = type(exc).__name__
        text = str(exc).lower()
        # InternalClientError "cannot switch to state ...; another operation is in progress": seen on a pooled
        # connection the server dropped mid-query (PostgreSQL restarted under load).
        return (
            name in {"ConnectionDoesNotExistError", "ConnectionFailureError"}
            or (name == "InterfaceError" and ("closed" in text or "closing" in text))
            or (name == "InternalClientError" and "another operation" in text)
        )
    return False


# --- end issue 15: serving through faults


# --- shared by the settings and members widgets ------------------------------------------------------------


def write_transaction(engine: Engine[Any] | None = None) -> Any:
    """A transaction for a read-then-write. On SQLite it takes the write lock up front (BEGIN IMMEDIATE), so
    writers are serialized and a check made inside it still holds at commit; on PostgreSQL lock what the
    check depends on (see :func:`lock_organization`)."""
    engine = engine or current_engine()
    if isinstance(engine, SQLiteEngine):
        return engine.transaction(transaction_type=TransactionType.immediate)
    return engine.transaction()


def bookkeeping(engine: Engine[Any] | None = None) -> Any:
    """Around single-statement writes to the unlogged bookkeeping tables (rate counters, the SCIM request
    log): on PostgreSQL nothing (the statement commits by itself, without waiting for a WAL flush, see
    portal_0020); on SQLite the write lock taken up front, as for every write there."""
    engine = engine or current_engine()
    if isinstance(engine, SQLiteEngine):
        return engine.transaction(transaction_type=TransactionType.immediate)
    return contextlib.nullcontext()


async def lock_organization(organization_id: str) -> None:
    """Inside a write transaction: serialize writers that check organization-wide rules (the last member who
    can change roles). PostgreSQL row lock; SQLite's BEGIN IMMEDIATE already serializes all writers."""
    engine = current_engine()
    if isinstance(engine, PostgresEngine):
        await Organization.raw("SELECT id FROM organization WHERE id = {} FOR UPDATE", organization_id)


def is_unique_violation(exc: BaseException) -> bool:
    """True for a unique-index violation on SQLite or PostgreSQL (recognised without importing asyncpg)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc).upper()
    return getattr(exc, "sqlstate", None) == "23505"

"""Session timeouts in bulk (DESIGN §5): the rule of :func:`portal.sessions.expiry_reason` as SQL.

Every request already revokes its own session when it has run out; the sweep revokes the expired sessions
nobody is using any more, so that no expired session stays "active" in lists and counts. It is set-based:
one ``UPDATE`` per batch joins each session to its active organization for the organization's custom
timeouts (sessions without one use the app defaults) and records ``absolute`` or ``idle`` as the reason,
``absolute`` when both have run out, exactly as a request would.

The same SQL runs on PostgreSQL and SQLite; only the cut-off arithmetic differs (see :func:`_custom_cutoff`).
"""

from __future__ import annotations

import calendar
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from piccolo.columns.combination import And, Or
from piccolo.engine.postgres import PostgresEngine

from portal.auth import sessions
from portal.auth.sessions import Timeouts
from portal.core import clock, db
from portal.core.settings import Settings
from portal.core.tables import Session

log = logging.getLogger("portal.sweep")

#: Sessions revoked per statement: big enough to be quick, small enough to keep each write short.
BATCH_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep revoked, by reason."""

    absolute: int = 0
    idle: int = 0
    #: UPDATE statements run (the last one finds fewer than a batch).
    batches: int = 0

    @property
    def revoked(self) -> int:
        return self.absolute + self.idle


def expired(timeouts: Timeouts, now: datetime) -> Or:
    """A piccolo filter for sessions that have run out under constant ``timeouts`` at ``now``.

    ``now >= created_at + absolute`` is ``created_at <= now - absolute``: the rule of ``expiry_reason``.
    """
    return (Session.created_at <= now - timedelta(seconds=timeouts.absolute)) | (
        Session.last_seen_at <= now - timedelta(seconds=timeouts.idle)
    )


def live(timeouts: Timeouts, now: datetime) -> And:
    """The opposite of :func:`expired`: sessions that have run out of neither timeout at ``now``."""
    return (Session.created_at > now - timedelta(seconds=timeouts.absolute)) & (
        Session.last_seen_at > now - timedelta(seconds=timeouts.idle)
    )


_MARKER = re.compile(r"@([a-z_]+)")


def _bind(sql: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
    """``@name`` markers to piccolo's positional ``{}`` placeholders, with the arguments in text order."""
    args: list[Any] = []

    def placeholder(match: re.Match[str]) -> str:
        args.append(params[match.group(1)])
        return "{}"

    return _MARKER.sub(placeholder, sql), args


def _custom_cutoff(column: str, default: int, postgres: bool) -> str:
    """SQL for ``now - <the organization's custom timeout>`` where that custom timeout is stricter than the
    app default, else NULL (then the app default's cut-off applies): ``sessions.effective_timeouts`` in SQL.

    The cut-off is computed once per organization, not once per session.
    """
    if postgres:
        cutoff = f"CAST(@now AS timestamptz) - o.{column} * INTERVAL '1 second'"
    else:
        # SQLite (piccolo) stores a timestamptz as the text of the UTC datetime, "2026-11-22 06:00:00+00:00"
        # or "2026-11-22 06:00:00.123456+00:00", which sorts in time order. Timeouts are whole seconds, so
        # the cut-off has now's fraction: format the whole seconds, then append now's fraction and offset.
        cutoff = f"strftime('%Y-%m-%d %H:%M:%S', @epoch - o.{column}, 'unixepoch') || @suffix"
    return f"CASE WHEN o.{column} <> 0 AND o.{column} < {int(default)} THEN {cutoff} END"


def _batch_statement(
    settings: Settings, now: datetime, batch_size: int, organization_id: str | None, postgres: bool
) -> tuple[str, list[Any]]:
    """One batch: revoke up to ``batch_size`` expired sessions with the reason a request would record."""
    absolute_cutoff = _custom_cutoff("session_absolute_timeout", settings.session_absolute_timeout, postgres)
    idle_cutoff = _custom_cutoff("session_idle_timeout", settings.session_idle_timeout, postgres)
    scope = "AND s.active_organization = @organization" if organization_id else ""
    # Rows are addressed by their physical locator (PostgreSQL's ctid, SQLite's rowid): a TID scan for the
    # batch, where joining back on the primary key is planned as a hash over the whole table.
    locator = "ctid" if postgres else "rowid"
    # Only fixed SQL and integers are formatted in; every value is a bound parameter (@name).
    select = f"""
        SELECT s.{locator}
        FROM portal_session AS s
        LEFT JOIN (
            SELECT o.id, {absolute_cutoff} AS absolute_cutoff, {idle_cutoff} AS idle_cutoff
            FROM organization AS o WHERE o.session_policy_source = 'custom'
        ) AS policy ON policy.id = s.active_organization
        WHERE s.revoked_at IS NULL {scope}
          AND (s.created_at <= COALESCE(policy.absolute_cutoff, @app_absolute)
               OR s.last_seen_at <= COALESCE(policy.idle_cutoff, @app_idle))
        LIMIT @batch_size
    """  # noqa: S608
    batch = f"ctid = ANY(ARRAY({select}))" if postgres else f"rowid IN ({select})"
    # Absolute wins when both have run out, as in sessions.expiry_reason.
    sql = f"""
        UPDATE portal_session
        SET revoked_at = @now,
            revoke_reason = CASE WHEN created_at <= COALESCE(
                (SELECT {absolute_cutoff} FROM organization AS o
                 WHERE o.id = portal_session.active_organization AND o.session_policy_source = 'custom'),
                @app_absolute) THEN 'absolute' ELSE 'idle' END
        WHERE revoked_at IS NULL AND {batch}
        RETURNING id, "user" AS user_id, revoke_reason AS reason
    """  # noqa: S608
    return _bind(
        sql,
        {
            "now": now,
            "epoch": calendar.timegm(now.utctimetuple()),
            "suffix": (f".{now.microsecond:06d}" if now.microsecond else "") + "+00:00",
            "app_absolute": now - timedelta(seconds=settings.session_absolute_timeout),
            "app_idle": now - timedelta(seconds=settings.session_idle_timeout),
            "organization": organization_id,
            "batch_size": int(batch_size),
        },
    )


async def sweep_expired(
    settings: Settings,
    now: datetime | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    organization_id: str | None = None,
) -> SweepResult:
    """Revoke every session that has run out at ``now`` (default: the clock), ``batch_size`` per statement.

    Idempotent: revoked sessions are never touched again. ``organization_id`` limits the sweep to the
    sessions whose active organization it is (after a policy change).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    now = now or clock.utcnow()
    postgres = isinstance(Session._meta.db, PostgresEngine)
    sql, args = _batch_statement(settings, now, batch_size, organization_id, postgres)
    counts = {"absolute": 0, "idle": 0}
    batches = 0
    while True:
        # A batch and its announcements (session ends, ``user.logout`` webhooks) commit together.
        async with db.write_transaction():
            rows = await Session.raw(sql, *args)
            for reason in ("absolute", "idle"):
                await sessions.ended([(r["id"], r["user_id"]) for r in rows if r["reason"] == reason], reason)
        batches += 1
        for row in rows:
            counts[row["reason"]] += 1
        if len(rows) < batch_size:
            break
    result = SweepResult(absolute=counts["absolute"], idle=counts["idle"], batches=batches)
    if result.revoked:
        log.info(
            "session sweep revoked %d sessions (%d absolute, %d idle) in %d statements",
            result.revoked,
            result.absolute,
            result.idle,
            batches,
        )
    return result

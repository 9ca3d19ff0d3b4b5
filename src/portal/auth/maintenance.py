"""Housekeeping jobs of the portal itself."""

from __future__ import annotations

from datetime import timedelta

from portal.core import clock
from portal.core.tables import LoginChallenge, RateEvent, Session
from portal.jobs import JobContext, cron

#: Finished login challenges and rate-limit events are kept this long (for support questions), then deleted.
RETENTION = timedelta(days=1)
#: Revoked sessions are kept this long, then deleted (sign-ins and sign-outs stay in the audit log).
SESSION_RETENTION = timedelta(days=30)
#: Sessions deleted per statement, so that a first purge of a large backlog holds no long lock.
PURGE_BATCH = 5000


@cron("purge_login_records", interval=lambda settings: 3600)
async def purge_login_records(ctx: JobContext) -> None:
    """Delete login challenges and rate-limit events older than a day (idempotent)."""
    cutoff = clock.utcnow() - RETENTION
    await LoginChallenge.delete().where(LoginChallenge.expires_at < cutoff)
    await RateEvent.delete().where(RateEvent.at < cutoff)


@cron("purge_revoked_sessions", interval=lambda settings: 3600)
async def purge_revoked_sessions(ctx: JobContext) -> int:
    """Delete sessions revoked more than :data:`SESSION_RETENTION` ago, in batches; the number deleted."""
    cutoff = clock.utcnow() - SESSION_RETENTION
    deleted = 0
    while True:
        batch = Session.select(Session.id).where(Session.revoked_at < cutoff).limit(PURGE_BATCH)
        rows = await Session.delete().where(Session.id.is_in(batch)).returning(Session.id)
        deleted += len(rows)
        if len(rows) < PURGE_BATCH:
            return deleted

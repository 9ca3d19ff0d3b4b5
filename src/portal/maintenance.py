"""Housekeeping jobs of the portal itself."""

from __future__ import annotations

from datetime import timedelta

from portal import clock
from portal.jobs import JobContext, cron
from portal.tables import LoginChallenge, RateEvent

#: Finished login challenges and rate-limit events are kept this long (for support questions), then deleted.
RETENTION = timedelta(days=1)


@cron("purge_login_records", interval=lambda settings: 3600)
async def purge_login_records(ctx: JobContext) -> None:
    """Delete login challenges and rate-limit events older than a day (idempotent)."""
    cutoff = clock.utcnow() - RETENTION
    await LoginChallenge.delete().where(LoginChallenge.expires_at < cutoff)
    await RateEvent.delete().where(RateEvent.at < cutoff)

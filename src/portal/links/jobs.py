"""Housekeeping for setup links (issue 14): links that can no longer be used are deleted after a while."""

from __future__ import annotations

from datetime import timedelta

from portal.core import clock
from portal.core.tables import SetupLink
from portal.jobs import JobContext, cron

#: Dead links (expired unopened, revoked, or their session over) stay listed this long, then go; the audit
#: log keeps their story.
RETENTION = timedelta(days=30)


@cron("purge_setup_links", interval=lambda settings: 3600)
async def purge_setup_links(ctx: JobContext) -> int:
    """Delete links whose last possible use ended more than :data:`RETENTION` ago (idempotent); the number."""
    cutoff = clock.utcnow() - RETENTION
    rows = await (
        SetupLink.delete()
        .where(
            (SetupLink.revoked_at < cutoff)
            | (SetupLink.opened_at.is_null() & (SetupLink.expires_at < cutoff))
            | (SetupLink.session_expires_at < cutoff)
        )
        .returning(SetupLink.id)
    )
    return len(rows)

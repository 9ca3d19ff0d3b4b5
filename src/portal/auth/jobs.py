"""Session timeouts in bulk (DESIGN §5, §7): a cron job that revokes every expired session.

Requests revoke their own expired session on the spot; this job catches the sessions nobody uses any more.
It runs every ``PORTAL_SESSION_SWEEP_INTERVAL`` (default one minute), never twice at once, and is
idempotent: a late or repeated run revokes nothing twice.
"""

from __future__ import annotations

from portal.auth.sweep import sweep_expired
from portal.core import clock
from portal.jobs import JobContext, cron


@cron("sweep_sessions", interval=lambda settings: settings.session_sweep_interval)
async def sweep_sessions(ctx: JobContext) -> dict[str, int]:
    """Revoke expired sessions in batches; returns how many, by reason (arq keeps it as the job result)."""
    result = await sweep_expired(ctx.settings, clock.utcnow())
    return {"absolute": result.absolute, "idle": result.idle, "batches": result.batches}

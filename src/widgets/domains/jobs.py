"""Domain verification jobs (DESIGN §6, §7): thin wrappers around the Domains widget's service.

- ``verify_domain(domain_id)``: "Verify now". Queued with the job id ``verify_domain:<id>``, so pressing the
  button twice queues one check. Re-reads the row; does nothing unless the domain is still pending.
- ``check_pending_domains``: every ``PORTAL_DOMAIN_CHECK_INTERVAL`` (default 15 minutes), never twice at
  once. Fails the domains still pending after ``PORTAL_DOMAIN_VERIFICATION_WINDOW`` (default 72 hours), then
  looks up every other pending domain itself, in batches with a bounded number of lookups in flight.
  Enqueuing one job per pending domain instead would cost a Redis round trip, a row read and a commit per
  domain, and, without Redis, one unbounded task each; the batch pass reads and writes 500 rows at a time.
"""

from __future__ import annotations

from typing import Any

from portal.jobs import JobContext, cron, job
from widgets.domains import service


@job("verify_domain")
async def verify_domain(ctx: JobContext, domain_id: str) -> str | None:
    """Check one domain now; returns what the lookup found (None: not pending, nothing checked)."""
    result = await service.check_domain(ctx.settings, domain_id)
    return None if result is None else result.finding.value


@cron("check_pending_domains", interval=lambda settings: settings.domain_check_interval)
async def check_pending_domains(ctx: JobContext) -> dict[str, Any]:
    """Fail overdue domains and check the other pending ones; returns the counts."""
    report = await service.check_pending_domains(ctx.settings)
    return {field: getattr(report, field) for field in report.__struct_fields__}

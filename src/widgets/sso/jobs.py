"""SSO cron jobs (DESIGN §15): thin wrappers around the widget's service.

- ``refresh_sso_metadata``: every ``PORTAL_SSO_METADATA_REFRESH_INTERVAL`` (default 12 hours), fetches again
  the metadata of SAML connections configured by URL; a failure keeps the last good values and is shown on
  the connection.
- ``warn_sso_certificates``: hourly, audits ``sso.certificate.expiring`` once per IdP certificate that
  expires within 30 days (the widget shows the warning from the stored expiry at any time).
- ``purge_sso_requests``: hourly, deletes sign-in requests a day past their expiry and remembered assertion
  ids past theirs.
"""

from __future__ import annotations

from typing import Any

from portal.jobs import JobContext, cron
from portal.sso import service as sso
from widgets.sso import service


@cron("refresh_sso_metadata", interval=lambda settings: settings.sso_metadata_refresh_interval)
async def refresh_sso_metadata(ctx: JobContext) -> dict[str, Any]:
    """Re-fetch due metadata URLs; returns the counts."""
    return await service.refresh_metadata(ctx.settings)


@cron("warn_sso_certificates", interval=lambda settings: 3600)
async def warn_sso_certificates(ctx: JobContext) -> int:
    """Audit the certificates that expire within 30 days (once each); returns how many."""
    return await service.warn_certificates()


@cron("purge_sso_requests", interval=lambda settings: 3600)
async def purge_sso_requests(ctx: JobContext) -> dict[str, int]:
    """Delete expired SSO requests and assertion ids; returns the counts."""
    return await sso.purge_expired()

"""Forms and output of the Domains widget.

Form fields are plain strings with defaults: the service validates them, so that bad input comes back as a
message next to its field. Unknown fields (a forged ``organization_id``) are ignored by msgspec.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class AddDomainForm(msgspec.Struct):
    """The add-a-domain form as the browser sent it."""

    domain: str = ""


class DomainView(msgspec.Struct, frozen=True, kw_only=True):
    """One domain as the page shows it."""

    id: str
    #: Normalized ASCII form (IDNA), as DNS knows it.
    domain: str
    #: The Unicode form people read (equals ``domain`` unless it is an internationalized name).
    display_name: str
    #: ``pending``, ``verified`` or ``failed``.
    status: str
    #: The TXT record to publish.
    record_name: str
    record_value: str
    #: Pending: what the last check found; failed: why it failed; verified: None.
    reason: str | None
    created_at: datetime
    pending_since: datetime | None
    #: Pending only: when the verification window closes.
    verify_by: datetime | None
    last_checked_at: datetime | None
    check_requested_at: datetime | None
    #: "Verify now" was pressed and the check has not reported yet.
    check_queued: bool
    #: ... and has not for several minutes (no worker running, or the job failed).
    check_stalled: bool = False
    verified_at: datetime | None


class CheckRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A recorded "Verify now" (or "Try again"), to be handed to the job queue after commit."""

    domain_id: str
    domain: str
    #: True when a failed domain was made pending again with a fresh verification window.
    restarted: bool
    #: ``check_requested_at`` before this request (restored if the job cannot be queued).
    previous_requested_at: datetime | None

    @property
    def job_id(self) -> str:
        """One queued check per domain: pressing "Verify now" twice queues it once."""
        return f"verify_domain:{self.domain_id}"


class CheckReport(msgspec.Struct, kw_only=True):
    """What one scheduled run did (the cron job's result, and the benchmark's figures)."""

    #: Domains looked up in DNS.
    checked: int = 0
    verified: int = 0
    #: Looked up, record missing or wrong: still pending.
    not_found: int = 0
    #: DNS timed out or failed: still pending, retried next run.
    retry: int = 0
    #: Found, but another organization had verified the domain first.
    lost: int = 0
    #: Other organizations' pending claims failed because a domain was verified now.
    claims_failed: int = 0
    #: Pending past the verification window: failed.
    expired: int = 0

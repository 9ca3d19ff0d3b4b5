"""Forms and output of the Session policy widget.

Form fields are plain strings with defaults: the service validates them, so that bad input comes back as a
message next to its field. Unknown fields (a forged ``organization_id``) are ignored by msgspec.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from portal.auth.sessions import Timeouts


class PolicyForm(msgspec.Struct):
    """The policy form as the browser sent it."""

    #: ``application`` or ``custom``.
    source: str = ""
    absolute_value: str = ""
    #: ``minutes``, ``hours`` or ``days``.
    absolute_unit: str = ""
    idle_value: str = ""
    idle_unit: str = ""
    #: Empty on the first submit; ``yes`` from the confirmation page; ``edit`` to go back to the form.
    confirm: str = ""
    #: How many sessions the confirmation page said the change ends (it asks again if that grew).
    confirmed_count: str = ""


class Policy(msgspec.Struct, frozen=True):
    """An organization's own session policy (custom timeouts in seconds, None with the app defaults)."""

    source: str
    absolute: int | None = None
    idle: int | None = None

    def as_organization(self) -> dict[str, object]:
        """The organization columns, as ``sessions.effective_timeouts`` reads them."""
        return {
            "session_policy_source": self.source,
            "session_absolute_timeout": self.absolute,
            "session_idle_timeout": self.idle,
        }

    def audit(self) -> dict[str, object]:
        return {"source": self.source, "absolute_timeout": self.absolute, "idle_timeout": self.idle}


class LastChange(msgspec.Struct, frozen=True):
    """Who changed the policy last, from the audit log."""

    at: datetime
    by: str


class PolicyPage(msgspec.Struct, frozen=True):
    """What the widget shows: the organization's policy, the app defaults and the effective timeouts."""

    policy: Policy
    defaults: Timeouts
    effective: Timeouts
    #: Live sessions whose active organization this is.
    active_sessions: int
    last_change: LastChange | None = None


class Preview(msgspec.Struct, frozen=True):
    """A change that would end live sessions now, shown for confirmation before anything is saved."""

    current: Policy
    new: Policy
    effective_now: Timeouts
    effective_after: Timeouts
    #: Live sessions of the organization that the new policy would end at once.
    ending: int
    #: The person changing the policy would be signed out too.
    ends_own: bool
    #: The count grew since the confirmation page the person confirmed.
    grew_from: int | None = None


class Saved(msgspec.Struct, frozen=True):
    """The result of a save: whether anything changed, and how many sessions ended."""

    changed: bool
    sessions_ended: int = 0
    ended_own: bool = False

"""Session policy rules: validating custom timeouts, previewing what a change ends, saving it (audited).

Every query is scoped to the active organization's id, which the controller takes from the session (never
from the form). Enforcement itself lives in the portal: ``sessions.resolve`` on every request and the
``sweep_sessions`` cron job (``portal.sweep``); this module uses the same rule for its preview.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from portal.auth import accounts, sessions, sweep
from portal.auth.sessions import Timeouts
from portal.core import clock, db
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Organization, Session, User
from portal.web.forms import FormErrors
from widgets.session_policy.schemas import LastChange, Policy, PolicyForm, PolicyPage, Preview, Saved

SOURCES = ("application", "custom")
#: The units the form offers, in seconds.
UNITS: dict[str, int] = {"minutes": 60, "hours": 3600, "days": 86400}
#: (shortest, longest) custom timeout in seconds.
BOUNDS: dict[str, tuple[int, int]] = {"absolute": (5 * 60, 365 * 86400), "idle": (5 * 60, 90 * 86400)}
LABELS = {"absolute": "absolute timeout", "idle": "idle timeout"}
AUDIT_ACTION = "session_policy.updated"
_WHOLE_NUMBER = re.compile(r"[0-9]+")


def describe(seconds: int) -> str:
    """A duration for people: ``7 days``, ``1 day 12 hours``, ``90 seconds``."""
    parts = []
    rest = seconds
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
    return " ".join(parts) or "0 seconds"


def split(seconds: int | None) -> tuple[str, str]:
    """A stored value as the form shows it: the largest unit that divides it (``86400`` → ``1``, ``days``)."""
    if not seconds:
        return "", "hours"
    for unit in ("days", "hours", "minutes"):
        if seconds % UNITS[unit] == 0:
            return str(seconds // UNITS[unit]), unit
    return str(max(1, round(seconds / 60))), "minutes"


def form_for(policy: Policy, defaults: Timeouts) -> PolicyForm:
    """The form filled in with the organization's policy (the app defaults when it has none)."""
    absolute_value, absolute_unit = split(policy.absolute or defaults.absolute)
    idle_value, idle_unit = split(policy.idle or defaults.idle)
    return PolicyForm(
        source=policy.source,
        absolute_value=absolute_value,
        absolute_unit=absolute_unit,
        idle_value=idle_value,
        idle_unit=idle_unit,
    )


def bounds(app_defaults: Timeouts) -> dict[str, tuple[int, int]]:
    """What an organization may choose per timeout: from the floor up to the app default (or the hard cap
    when the default is longer), since an organization can only tighten the defaults."""
    return {kind: (low, min(high, getattr(app_defaults, kind))) for kind, (low, high) in BOUNDS.items()}


def _duration(form: PolicyForm, kind: str, errors: dict[str, str], app_defaults: Timeouts) -> int | None:
    raw = str(getattr(form, f"{kind}_value")).strip()
    unit = str(getattr(form, f"{kind}_unit")).strip()
    label = LABELS[kind]
    shortest, longest = bounds(app_defaults)[kind]
    if unit not in UNITS:
        errors[f"{kind}_unit"] = "Choose minutes, hours or days."
        return None
    if not raw:
        errors[f"{kind}_value"] = f"Enter the {label}, for example 8 hours."
        return None
    if not _WHOLE_NUMBER.fullmatch(raw):
        errors[f"{kind}_value"] = "Enter a whole number, such as 8."
        return None
    # Very long digit strings are simply too long: no need to turn them into a number first.
    seconds = int(raw) * UNITS[unit] if len(raw) <= 12 else longest + 1
    if seconds < shortest:
        errors[f"{kind}_value"] = f"The {label} must be at least {describe(shortest)}."
    elif seconds > longest and longest < BOUNDS[kind][1]:
        errors[f"{kind}_value"] = (
            f"The {label} can be at most {describe(longest)}, the application default: an organization "
            "can only shorten it."
        )
    elif seconds > longest:
        errors[f"{kind}_value"] = f"The {label} can be at most {describe(longest)}."
    else:
        return seconds
    return None


def validate(form: PolicyForm, app_defaults: Timeouts) -> Policy:
    """The policy the form asks for; :class:`FormErrors` naming every bad field (a value looser than the
    application default is one: it would never apply)."""
    source = form.source.strip()
    if source not in SOURCES:
        raise FormErrors({"source": "Choose the application defaults or custom timeouts."})
    if source == "application":
        # The numbers are ignored (and cleared): the organization follows the app defaults again.
        return Policy(source="application")
    errors: dict[str, str] = {}
    absolute = _duration(form, "absolute", errors, app_defaults)
    idle = _duration(form, "idle", errors, app_defaults)
    if absolute is not None and idle is not None and idle > absolute:
        errors["idle_value"] = (
            f"The idle timeout cannot be longer than the absolute timeout ({describe(absolute)})."
        )
    if errors:
        raise FormErrors(errors)
    return Policy(source="custom", absolute=absolute, idle=idle)


async def _load_policy(organization_id: str) -> Policy:
    row = (
        await Organization.select(
            Organization.session_policy_source,
            Organization.session_absolute_timeout,
            Organization.session_idle_timeout,
        )
        .where(Organization.id == organization_id)  # tenant check: the session's organization only
        .first()
    )
    if row is None:
        raise LookupError(organization_id)
    source = row["session_policy_source"] if row["session_policy_source"] in SOURCES else "application"
    return Policy(
        source=source,
        absolute=row["session_absolute_timeout"] if source == "custom" else None,
        idle=row["session_idle_timeout"] if source == "custom" else None,
    )


def defaults(settings: Settings) -> Timeouts:
    """The application's default timeouts (``PORTAL_SESSION_*_TIMEOUT``)."""
    return Timeouts(absolute=settings.session_absolute_timeout, idle=settings.session_idle_timeout)


def effective(settings: Settings, policy: Policy) -> Timeouts:
    """The timeouts enforced with ``policy``: per timeout, the stricter of the app default and the custom value."""
    return sessions.effective_timeouts(settings, policy.as_organization())


def _live(organization_id: str, timeouts: Timeouts, now: datetime) -> Any:
    # The organization's sessions still live under ``timeouts`` (tenant check: its own sessions only).
    return (
        (Session.active_organization == organization_id)
        & Session.revoked_at.is_null()
        & sweep.live(timeouts, now)
    )


async def count_live(organization_id: str, timeouts: Timeouts, now: datetime) -> int:
    """Sessions of the organization that are live under ``timeouts``."""
    return int(await Session.count().where(_live(organization_id, timeouts, now)))


async def count_ending(organization_id: str, before: Timeouts, after: Timeouts, now: datetime) -> int:
    """Live sessions (under ``before``) that ``after`` ends at once: the rule the sweep and requests apply."""
    return int(await Session.count().where(_live(organization_id, before, now) & sweep.expired(after, now)))


async def get_page(settings: Settings, organization_id: str) -> PolicyPage:
    """The organization's policy with the app defaults, the effective timeouts and its live sessions."""
    policy = await _load_policy(organization_id)
    timeouts = effective(settings, policy)
    return PolicyPage(
        policy=policy,
        defaults=defaults(settings),
        effective=timeouts,
        active_sessions=await count_live(organization_id, timeouts, clock.utcnow()),
        last_change=await _last_change(organization_id),
    )


async def _last_change(organization_id: str) -> LastChange | None:
    event = (
        await AuditEvent.select(AuditEvent.at, AuditEvent.actor_id)
        .where((AuditEvent.organization_id == organization_id) & (AuditEvent.action == AUDIT_ACTION))
        .order_by(AuditEvent.at, ascending=False)
        .first()
    )
    if event is None:
        return None
    by = "someone no longer here"
    if event["actor_id"]:
        user = await User.select(User.email, User.display_name).where(User.id == event["actor_id"]).first()
        if user is not None:
            by = user["display_name"] or user["email"]
    return LastChange(at=event["at"], by=by)


def _confirmed_count(form: PolicyForm) -> int | None:
    if form.confirm != "yes":
        return None
    raw = form.confirmed_count.strip()
    return int(raw) if raw.isdigit() and len(raw) <= 12 else 0


async def save(
    settings: Settings,
    organization_id: str,
    form: PolicyForm,
    *,
    actor_id: str,
    own_session: dict[str, Any],
    ip: str,
) -> Saved | Preview:
    """Validate and save the policy; or, if it would end live sessions and the person has not confirmed
    that many, the :class:`Preview` to confirm (nothing saved). Saving revokes the sessions it ends and
    audits ``session_policy.updated`` with the old and new values.

    Call inside :func:`portal.db.write_transaction`.
    """
    new = validate(form, defaults(settings))
    # Two admins saving at once: the second waits, then sees the first one's policy as the current one.
    await db.lock_organization(organization_id)
    current = await _load_policy(organization_id)
    if new == current:
        return Saved(changed=False)
    now = clock.utcnow()
    before, after = effective(settings, current), effective(settings, new)
    ending = await count_ending(organization_id, before, after, now)
    ends_own = (
        own_session.get("active_organization") == organization_id
        and sessions.expiry_reason(own_session, after, now) is not None
    )
    confirmed = _confirmed_count(form)
    if ending and (confirmed is None or ending > confirmed):
        return Preview(
            current=current,
            new=new,
            effective_now=before,
            effective_after=after,
            ending=ending,
            ends_own=ends_own,
            grew_from=confirmed,
        )
    await Organization.update(
        {
            Organization.session_policy_source: new.source,
            Organization.session_absolute_timeout: new.absolute,
            Organization.session_idle_timeout: new.idle,
            Organization.updated_at: now,
        }
    ).where(Organization.id == organization_id)
    # The sessions the new policy ends stop now, not at their next request or the next sweep.
    revoked = await sweep.sweep_expired(settings, now, organization_id=organization_id)
    await accounts.audit(
        AUDIT_ACTION,
        organization_id=organization_id,
        actor_id=actor_id,
        target=organization_id,
        details={
            "old": current.audit(),
            "new": new.audit(),
            "effective_old": {"absolute": before.absolute, "idle": before.idle},
            "effective_new": {"absolute": after.absolute, "idle": after.idle},
            "sessions_ended": revoked.revoked,
        },
        ip=ip,
    )
    return Saved(changed=True, sessions_ended=revoked.revoked, ended_own=ends_own)

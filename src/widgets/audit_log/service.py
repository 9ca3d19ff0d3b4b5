"""Audit log: an organization's audit events, filtered, in pages, each told as a sentence; CSV export.

Every query is scoped to the organization from the session (the controller passes it): an event of another
organization is never read, whatever the cursor or filters say.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, time, timedelta
from typing import Any

from portal.core.tables import AuditEvent, User
from portal.web.forms import FormErrors
from widgets.audit_log.schemas import Entry, Filters, Page

PAGE_SIZE = 50
EXPORT_BATCH = 1000
#: The most rows one CSV export holds (narrow the dates for more).
EXPORT_LIMIT = 100_000
MAX_ACTOR = 320

Details = Mapping[str, Any]
Sentence = Callable[[str, str, Details], str]


def _roles(value: Any) -> str:
    roles = [str(r) for r in value or []]
    return " and ".join(roles) if roles else "no role"


def _fields(value: Any) -> str:
    names = [str(f).replace("_", " ") for f in value or []]
    if not names:
        return "nothing"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _changes(details: Details) -> str:
    changes = details.get("changes")
    if not isinstance(changes, dict) or not changes:
        return _fields(details.get("fields"))
    parts = []
    for name, change in changes.items():
        if isinstance(change, dict) and not isinstance(change.get("old"), list | dict):
            parts.append(
                f"{name.replace('_', ' ')} from “{change.get('old') or ''}” to “{change.get('new') or ''}”"
            )
        else:
            parts.append(name.replace("_", " "))
    return "; ".join(parts)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int) or seconds <= 0:
        return "the app default"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def _policy(value: Any) -> str:
    if not isinstance(value, dict) or value.get("source") != "custom":
        return "the app defaults"
    return f"absolute {_duration(value.get('absolute_timeout'))}, idle {_duration(value.get('idle_timeout'))}"


#: A sentence per audit action: ``(actor, target, details) -> str``. ``actor`` and ``target`` are already in
#: words (an email address when they name a user).
SENTENCES: dict[str, tuple[str, Sentence]] = {
    "organization.created": ("Organization created", lambda a, t, d: f"{a} created the organization"),
    "settings.updated": ("Settings changed", lambda a, t, d: f"{a} changed the organization's {_changes(d)}"),
    "session_policy.updated": (
        "Session policy changed",
        lambda a, t, d: (
            f"{a} changed the session policy from {_policy(d.get('old'))} to {_policy(d.get('new'))}"
            + (
                f", ending {d['sessions_ended']} session{'s' if d['sessions_ended'] != 1 else ''}"
                if d.get("sessions_ended")
                else ""
            )
        ),
    ),
    "member.added": (
        "Member added",
        lambda a, t, d: f"{a} added {d.get('email') or t} as {_roles(d.get('roles'))}",
    ),
    "member.joined": (
        "Member joined",
        lambda a, t, d: f"{a} joined the organization (email domain {d.get('domain') or 'allowed'})",
    ),
    "member.roles_changed": (
        "Roles changed",
        lambda a, t, d: (
            f"{a} changed the roles of {d.get('email') or t} from {_roles(d.get('old'))} to {_roles(d.get('new'))}"
        ),
    ),
    "member.removed": ("Member removed", lambda a, t, d: f"{a} removed {d.get('email') or t}"),
    "member.invited": ("Invitation sent", lambda a, t, d: f"{a} invited {t} as {_roles(d.get('roles'))}"),
    "invitation.resent": (
        "Invitation resent",
        lambda a, t, d: f"{a} sent the invitation to {d.get('email') or t} again",
    ),
    "invitation.revoked": (
        "Invitation revoked",
        lambda a, t, d: f"{a} revoked the invitation to {d.get('email') or t}",
    ),
    "invitation.accepted": (
        "Invitation accepted",
        lambda a, t, d: (
            f"{d.get('email') or a} accepted the invitation and joined as {_roles(d.get('roles'))}"
        ),
    ),
    "domain.added": ("Domain added", lambda a, t, d: f"{a} added the domain {d.get('domain') or t}"),
    "domain.verify_requested": (
        "Domain check asked for",
        lambda a, t, d: f"{a} asked to check the domain {d.get('domain') or t} now",
    ),
    "domain.verified": ("Domain verified", lambda a, t, d: f"The domain {d.get('domain') or t} was verified"),
    "domain.failed": (
        "Domain failed",
        lambda a, t, d: (
            f"Verification of the domain {d.get('domain') or t} failed: {d.get('reason') or 'not found'}"
        ),
    ),
    "domain.deleted": ("Domain deleted", lambda a, t, d: f"{a} deleted the domain {d.get('domain') or t}"),
    "login.succeeded": (
        "Signed in",
        lambda a, t, d: f"{a} signed in ({str(d.get('method') or 'unknown').replace('_', ' ')})",
    ),
    "login.failed": (
        "Sign-in failed",
        lambda a, t, d: f"A sign-in as {t} failed ({str(d.get('reason') or 'unknown').replace('_', ' ')})",
    ),
    "logout": ("Signed out", lambda a, t, d: f"{a} signed out"),
    "organization.switched": ("Organization switched", lambda a, t, d: f"{a} switched to this organization"),
    "profile.updated": ("Profile updated", lambda a, t, d: f"{a} changed their {_changes(d)}"),
    "profile.email_change_requested": (
        "Email change asked for",
        lambda a, t, d: f"{a} asked to change their email address to {d.get('new') or 'a new address'}",
    ),
    "profile.email_changed": (
        "Email changed",
        lambda a, t, d: (
            f"{a} changed their email address"
            + (f" from {d['old']} to {d['new']}" if d.get("old") and d.get("new") else "")
        ),
    ),
    "session.step_up": (
        "Identity confirmed",
        lambda a, t, d: f"{a} confirmed it is them ({str(d.get('method') or '').replace('_', ' ')})",
    ),
    "session.revoked": (
        "Session signed out",
        lambda a, t, d: f"{a} signed out their session on {d.get('device') or 'another device'}",
    ),
    "sessions.revoked_others": (
        "Other sessions signed out",
        lambda a, t, d: (
            f"{a} signed out {d.get('count', 0)} other session{'s' if d.get('count') != 1 else ''}"
        ),
    ),
    "passkey.registered": (
        "Passkey added",
        lambda a, t, d: f"{a} added a passkey" + (f" “{d['name']}”" if d.get("name") else ""),
    ),
    "passkey.renamed": (
        "Passkey renamed",
        lambda a, t, d: (
            f"{a} renamed a passkey"
            + (f" “{d['old']}” to “{d['new']}”" if d.get("old") and d.get("new") else "")
        ),
    ),
    "passkey.deleted": (
        "Passkey deleted",
        lambda a, t, d: f"{a} deleted a passkey" + (f" “{d['name']}”" if d.get("name") else ""),
    ),
    "sso.connection.tested": (
        "SSO connection tested",
        lambda a, t, d: (
            f"{a} tested an SSO connection" + (f", which signed in {d['email']}" if d.get("email") else "")
        ),
    ),
    "sso.connection.activated": (
        "SSO connection activated",
        lambda a, t, d: f"{a} activated an SSO connection",
    ),
    "sso.connection.deactivated": (
        "SSO connection deactivated",
        lambda a, t, d: f"{a} deactivated an SSO connection",
    ),
    "webhook.endpoint_created": (
        "Webhook added",
        lambda a, t, d: f"{a} added the webhook endpoint {d.get('url') or t}",
    ),
    "webhook.endpoint_updated": (
        "Webhook changed",
        lambda a, t, d: f"{a} changed the webhook endpoint's {_fields(d.get('fields'))}",
    ),
    "webhook.endpoint_deleted": (
        "Webhook deleted",
        lambda a, t, d: f"{a} deleted the webhook endpoint {d.get('url') or t}",
    ),
    "webhook.endpoint_disabled": (
        "Webhook disabled",
        lambda a, t, d: f"The webhook endpoint {d.get('url') or t} was disabled after failing for 5 days",
    ),
    "webhook.event_replayed": (
        "Webhook event resent",
        lambda a, t, d: f"{a} sent the {d.get('type') or 'webhook'} event {t} again",
    ),
    # After the merges of session 4: SSO, SCIM, setup links and API keys.
    "sso.connection.created": ("SSO connection added", lambda a, t, d: f"{a} added an SSO connection"),
    "sso.connection.updated": ("SSO connection changed", lambda a, t, d: f"{a} changed an SSO connection"),
    "sso.connection.deleted": ("SSO connection deleted", lambda a, t, d: f"{a} deleted an SSO connection"),
    "sso.enforcement.updated": (
        "Enforce SSO changed",
        lambda a, t, d: f"{a} changed whether SSO is enforced",
    ),
    "sso.certificate.expiring": (
        "IdP certificate expiring",
        lambda a, t, d: "An SSO connection's IdP certificate expires within 30 days",
    ),
    "sso.login.failed": (
        "SSO sign-in refused",
        lambda a, t, d: (
            "A sign-in through single sign-on was refused" + (f" ({d['reason']})" if d.get("reason") else "")
        ),
    ),
    "scim.directory.created": ("SCIM directory added", lambda a, t, d: f"{a} added a SCIM directory"),
    "scim.token.rotated": ("SCIM token rotated", lambda a, t, d: f"{a} rotated a SCIM directory's token"),
    "scim.token.revoked": ("SCIM token revoked", lambda a, t, d: f"{a} revoked a SCIM directory's token"),
    "scim.group_roles.changed": (
        "SCIM group roles changed",
        lambda a, t, d: f"{a} changed which roles SCIM groups give",
    ),
    "scim.user.created": (
        "SCIM user provisioned",
        lambda a, t, d: f"The directory provisioned {d.get('email') or d.get('userName') or t}",
    ),
    "scim.user.updated": ("SCIM user updated", lambda a, t, d: f"The directory updated a user ({t})"),
    "scim.user.deactivated": (
        "SCIM user deactivated",
        lambda a, t, d: f"The directory deactivated a user ({t})",
    ),
    "scim.user.deleted": ("SCIM user deleted", lambda a, t, d: f"The directory deleted a user ({t})"),
    "scim.group.created": ("SCIM group created", lambda a, t, d: f"The directory created a group ({t})"),
    "scim.group.updated": ("SCIM group updated", lambda a, t, d: f"The directory updated a group ({t})"),
    "scim.group.deleted": ("SCIM group deleted", lambda a, t, d: f"The directory deleted a group ({t})"),
    "setup_link.created": ("Setup link created", lambda a, t, d: f"{a} created a setup link"),
    "setup_link.revoked": ("Setup link revoked", lambda a, t, d: f"{a} revoked a setup link"),
    "setup_link.opened": ("Setup link opened", lambda a, t, d: "An IT admin opened a setup link"),
}

#: The actions the filter offers, by label.
ACTIONS: list[tuple[str, str]] = sorted(
    ((key, label) for key, (label, _) in SENTENCES.items()), key=lambda i: i[1]
)


def describe(action: str, actor: str, target: str, details: Details) -> str:
    """The entry in words, e.g. ``alice@acme.test removed bob@acme.test``."""
    entry = SENTENCES.get(action)
    if entry is None:
        return f"{actor}: {action}" + (f" ({target})" if target else "")
    try:
        return entry[1](actor, target, details)
    except (KeyError, TypeError, ValueError, AttributeError):  # an older or unexpected details shape
        return f"{actor}: {entry[0].lower()}"


# --- filters and cursors ------------------------------------------------------------------------------------


def _day(value: str, field: str) -> datetime | None:
    if not value.strip():
        return None
    try:
        return datetime.combine(datetime.strptime(value.strip(), "%Y-%m-%d").date(), time.min, tzinfo=UTC)
    except ValueError:
        raise FormErrors({field: "Enter a date like 2026-12-03."}) from None


def encode_cursor(at: datetime, event_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([at.isoformat(), event_id]).encode()).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        at, event_id = json.loads(raw)
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None or not isinstance(event_id, str):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise FormErrors(
            {"cursor": "This page link is not valid any more: start from the newest entries."}
        ) from None
    return moment, event_id


async def where_for(organization_id: str, filters: Filters) -> Any:
    """The WHERE of a filtered query, always within ``organization_id``; :class:`FormErrors` per bad field."""
    errors: dict[str, str] = {}
    where: Any = AuditEvent.organization_id == organization_id  # tenant check
    actor = filters.actor.strip().lower()
    if len(actor) > MAX_ACTOR:
        errors["actor"] = f"At most {MAX_ACTOR} characters."
    if filters.action and filters.action not in SENTENCES:
        errors["action"] = "Choose an action from the list."
    since = until = None
    try:
        since = _day(filters.since, "since")
    except FormErrors as exc:
        errors |= exc.errors
    try:
        until = _day(filters.until, "until")
    except FormErrors as exc:
        errors |= exc.errors
    if since and until and until < since:
        errors["until"] = "The last day is before the first day."
    if errors:
        raise FormErrors(errors)
    if actor:
        # Not escaped: SQLite's LIKE has no default escape character, so "\_" would match nothing there. A
        # "_" or "%" typed here only widens the match (email addresses hold no backslash).
        users = await User.select(User.id).where(User.email.like(f"%{actor}%")).limit(1000)
        where &= AuditEvent.actor_id.is_in([u["id"] for u in users] or ["-"])
    if filters.action:
        where &= AuditEvent.action == filters.action
    if since:
        where &= AuditEvent.at >= since
    if until:
        where &= AuditEvent.at < until + timedelta(days=1)
    return where


async def _entries(rows: list[dict[str, Any]]) -> list[Entry]:
    """Rows in words: actors and user targets by email (one query)."""
    ids = {r["actor_id"] for r in rows if r["actor_id"]} | {
        r["target"] for r in rows if str(r["target"]).startswith("usr_")
    }
    emails = (
        {
            u["id"]: u["email"]
            for u in await User.select(User.id, User.email).where(User.id.is_in(sorted(ids)))
        }
        if ids
        else {}
    )
    entries = []
    for row in rows:
        details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"] or "{}")
        actor = emails.get(row["actor_id"], "A deleted user") if row["actor_id"] else "The portal"
        target = emails.get(row["target"], row["target"]) if row["target"] else ""
        entries.append(
            Entry(
                id=row["id"],
                at=row["at"],
                action=row["action"],
                sentence=describe(row["action"], actor, target, details),
                actor=actor if row["actor_id"] else "",
                target=target,
                ip=row["ip"],
                details=details,
            )
        )
    return entries


async def list_page(organization_id: str, filters: Filters, *, size: int = PAGE_SIZE) -> Page:
    """One page, newest first, after the filters' cursor (keyset on ``(at, id)``)."""
    where = await where_for(organization_id, filters)
    if filters.cursor:
        at, event_id = decode_cursor(filters.cursor)
        where &= (AuditEvent.at < at) | ((AuditEvent.at == at) & (AuditEvent.id < event_id))
    rows = (
        await AuditEvent.select()
        .where(where)
        .order_by(AuditEvent.at, ascending=False)
        .order_by(AuditEvent.id, ascending=False)
        .limit(size + 1)
        .output(load_json=True)
    )
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = encode_cursor(rows[-1]["at"], rows[-1]["id"]) if more and rows else None
    return Page(entries=await _entries(rows), next_cursor=next_cursor)


CSV_COLUMNS = ("time", "actor", "action", "entry", "target", "ip", "details")


def _cell(value: str) -> str:
    # Spreadsheets run cells that start like a formula: neutralize them (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


async def export_csv(organization_id: str, filters: Filters) -> AsyncIterator[str]:
    """Every entry matching the filters (newest first, at most :data:`EXPORT_LIMIT`), as CSV text chunks."""
    where = await where_for(organization_id, filters)  # validated before the first byte is sent

    async def chunks() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        cursor: tuple[datetime, str] | None = None
        sent = 0
        while sent < EXPORT_LIMIT:
            page_where = where
            if cursor is not None:
                page_where &= (AuditEvent.at < cursor[0]) | (
                    (AuditEvent.at == cursor[0]) & (AuditEvent.id < cursor[1])
                )
            rows = (
                await AuditEvent.select()
                .where(page_where)
                .order_by(AuditEvent.at, ascending=False)
                .order_by(AuditEvent.id, ascending=False)
                .limit(min(EXPORT_BATCH, EXPORT_LIMIT - sent))
                .output(load_json=True)
            )
            for entry in await _entries(rows):
                writer.writerow(
                    [
                        entry.at.isoformat(),
                        _cell(entry.actor),
                        entry.action,
                        _cell(entry.sentence),
                        _cell(entry.target),
                        entry.ip,
                        _cell(json.dumps(entry.details, sort_keys=True, default=str)),
                    ]
                )
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            sent += len(rows)
            if len(rows) < EXPORT_BATCH:
                return
            cursor = (rows[-1]["at"], rows[-1]["id"])

    return chunks()

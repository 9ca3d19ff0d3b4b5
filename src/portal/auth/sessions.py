"""Browser sessions (DESIGN §5): an opaque cookie token whose SHA-256 is the only thing stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from litestar.datastructures import Cookie
from piccolo.columns import JSON, JSONB
from piccolo.table import Table

from portal.core import clock, db
from portal.core.ids import hash_secret, new_secret
from portal.core.settings import Settings
from portal.core.tables import Organization, Session, SessionEnd, User
from portal.webhooks import events

#: last_seen_at is written at most this often per session.
TOUCH_INTERVAL = timedelta(minutes=1)


def cookie_name(settings: Settings) -> str:
    """``__Host-`` prefixed on https (Secure, host-only, path /), plain on http development."""
    return "__Host-portal_session" if settings.secure else "portal_session"


def session_cookie(settings: Settings, value: str, *, max_age: int) -> Cookie:
    """The session cookie (DESIGN §5). Clearing it needs the same attributes: browsers ignore a
    ``__Host-`` cookie without Secure, deletion included."""
    return Cookie(
        key=cookie_name(settings),
        value=value,
        path="/",
        max_age=max_age,
        httponly=True,
        secure=settings.secure,
        samesite="lax",
    )


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Effective timeouts in seconds: each is the stricter of the app default and the organization's."""

    absolute: int
    idle: int


def effective_timeouts(settings: Settings, organization: dict[str, Any] | None) -> Timeouts:
    """The app defaults, tightened (never loosened) by the organization's custom session policy."""
    absolute, idle = settings.session_absolute_timeout, settings.session_idle_timeout
    if organization is not None and organization.get("session_policy_source") == "custom":
        if organization.get("session_absolute_timeout"):
            absolute = min(absolute, int(organization["session_absolute_timeout"]))
        if organization.get("session_idle_timeout"):
            idle = min(idle, int(organization["session_idle_timeout"]))
    return Timeouts(absolute=absolute, idle=idle)


def expiry_reason(session: dict[str, Any], timeouts: Timeouts, now: datetime) -> str | None:
    """``absolute`` or ``idle`` if the session has run out, else None."""
    if now >= session["created_at"] + timedelta(seconds=timeouts.absolute):
        return "absolute"
    if now >= session["last_seen_at"] + timedelta(seconds=timeouts.idle):
        return "idle"
    return None


async def create_session(
    user_id: str,
    *,
    auth_method: str,
    organization_id: str | None = None,
    ip: str = "",
    user_agent: str = "",
) -> tuple[str, str]:
    """Start a new session (never reuse a pre-login id). Returns (cookie token, session id)."""
    token = new_secret("ses")
    now = clock.utcnow()
    session = Session(
        token_hash=hash_secret(token),
        user=user_id,
        active_organization=organization_id,
        auth_method=auth_method,
        ip=ip[:45],
        user_agent=user_agent[:500],
        created_at=now,
        authenticated_at=now,
        last_seen_at=now,
    )
    await session.save()
    return token, session.id


@dataclass(slots=True)
class Resolved:
    """A live session with its user and active organization (or why there is none)."""

    session: dict[str, Any] | None
    user: dict[str, Any] | None
    organization: dict[str, Any] | None
    #: Set when the cookie named a session that just ran out: ``idle`` or ``absolute``.
    expired: str | None = None
    #: Why the cookie's session ended, if it names one that has (``idle``, ``absolute``, ``user``,
    #: ``removed``…): the login page explains it (issue 16).
    ended: str | None = None


def _columns(table: type[Table], alias: str) -> tuple[str, list[tuple[str, str, bool]]]:
    """``alias."col" AS "alias__col"`` for every column, and (result key, dict key, is JSON) for each."""
    names = [(c._meta.db_column_name, isinstance(c, JSON | JSONB)) for c in table._meta.columns]
    select = ", ".join(f'{alias}."{name}" AS "{alias}__{name}"' for name, _ in names)
    return select, [(f"{alias}__{name}", name, is_json) for name, is_json in names]


_SESSION_SQL, _SESSION_KEYS = _columns(Session, "s")
_USER_SQL, _USER_KEYS = _columns(User, "u")
_ORG_SQL, _ORG_KEYS = _columns(Organization, "o")
#: The session, its user and its active organization in one round trip (every request runs it).
_RESOLVE = (
    f"SELECT {_SESSION_SQL}, {_USER_SQL}, {_ORG_SQL} FROM portal_session s"  # noqa: S608 (fixed names only)
    ' JOIN portal_user u ON u.id = s."user"'
    " LEFT JOIN organization o ON o.id = s.active_organization"
    " WHERE s.token_hash = {}"
)


def _part(row: dict[str, Any], keys: list[tuple[str, str, bool]]) -> dict[str, Any]:
    part = {}
    for key, name, is_json in keys:
        value = row[key]
        part[name] = db.json_value(value) if is_json else value
    return part


async def resolve(settings: Settings, token: str | None) -> Resolved:
    """Look up the cookie's session; revoke it on the spot if it has run out (DESIGN §5)."""
    if not token or len(token) > 200:
        return Resolved(None, None, None)
    rows = await db.fetch(_RESOLVE, hash_secret(token))
    if not rows:
        return Resolved(None, None, None)
    if rows[0]["s__revoked_at"] is not None:
        return Resolved(None, None, None, ended=rows[0]["s__revoke_reason"])
    row = rows[0]
    session, user = _part(row, _SESSION_KEYS), _part(row, _USER_KEYS)
    organization = _part(row, _ORG_KEYS) if row["o__id"] is not None else None
    now = clock.utcnow()
    reason = expiry_reason(session, effective_timeouts(settings, organization), now)
    if reason is not None:
        await revoke(session["id"], reason)
        return Resolved(None, None, None, expired=reason, ended=reason)
    if now - session["last_seen_at"] >= TOUCH_INTERVAL:
        await Session.update({Session.last_seen_at: now}).where(Session.id == session["id"])
        session["last_seen_at"] = now
    return Resolved(session, user, organization)


async def revoke(session_id: str, reason: str) -> None:
    """Revoke one session; it stops working on its next request, and :func:`ended` tells the apps."""
    # The revocation and its announcement commit together (issue 11: the webhook outbox).
    async with db.write_transaction():
        revoked = (
            await Session.update({Session.revoked_at: clock.utcnow(), Session.revoke_reason: reason})
            .where((Session.id == session_id) & Session.revoked_at.is_null())
            .returning(Session.id, Session.user)
        )
        await ended([(row["id"], row["user"]) for row in revoked], reason)


#: session_end rows per INSERT statement (5 values each).
_ENDED_PER_INSERT = 5000


async def ended(sessions: list[tuple[str, str]], reason: str, *, organization_id: str | None = None) -> None:
    """THE one place a session's end is announced: every code path that ends sessions (sign-out, expiry on a
    request or by the sweep, session policy, Security's revoke, ``/oauth/logout``) calls it with the
    (session id, user id) pairs it ended, inside its own transaction. ``organization_id`` says only that
    organization's side ended (the member was removed from it; the portal session lives on).

    It only records a ``session_end`` row and a ``user.logout`` webhook event per session (durable, cheap,
    never blocks the user); background jobs read them: the OpenID Provider sends back-channel logout tokens
    (``portal.oidc.logout``), the webhook jobs deliver the events (``portal.webhooks.delivery``), with retries.
    """
    if not sessions:
        return
    now = clock.utcnow()
    # In slices: one INSERT may bind at most 32,767 values on PostgreSQL, and a sweep batch ends 20,000.
    for start in range(0, len(sessions), _ENDED_PER_INSERT):
        await SessionEnd.insert(
            *(
                SessionEnd(
                    session_id=session_id,
                    user_id=user_id,
                    organization_id=organization_id,
                    reason=reason,
                    at=now,
                )
                for session_id, user_id in sessions[start : start + _ENDED_PER_INSERT]
            )
        )
    # issue 11: webhooks. ``user.logout`` for every session end, in the same transaction.
    await events.emit_many(
        events.Event(
            "user.logout",
            organization_id,
            {
                "user_id": user_id,
                "session_id": session_id,
                "reason": reason,
                "organization_id": organization_id,
            },
        )
        for session_id, user_id in sessions
    )


async def set_active_organization(session_id: str, organization_id: str | None) -> None:
    """Store the chosen organization on the session."""
    await Session.update({Session.active_organization: organization_id}).where(Session.id == session_id)

"""Security rules: the user's sessions and passkeys, and confirming it's them before sensitive actions.

Every query is scoped to the signed-in user's id, which the controller takes from the session (never from a
form or URL): a session or passkey id that is not the user's own is unknown (404).

Step-up: adding a passkey and revoking all other sessions need a sign-in (or a confirmation) in the last
10 minutes (``portal_session.authenticated_at``); otherwise the user confirms with a fresh emailed code or
one of their passkeys, which moves ``authenticated_at`` forward.
"""

from __future__ import annotations

import logging
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

from portal.auth import accounts, codes, passkeys, ratelimit, sessions, useragent
from portal.core import clock, mail
from portal.core.settings import Settings
from portal.core.tables import Passkey, Session
from portal.web.forms import BIDI_CONTROLS, FormErrors
from widgets.security.schemas import PasskeyView, SessionView

log = logging.getLogger("widgets.security")

STEP_UP_WINDOW = timedelta(minutes=10)
CODE_PURPOSE = "step_up"
#: Confirmation codes a user may request: (limit, window seconds).
STEP_UP_CODE_RATE = (5, 15 * 60)
#: WebAuthn options (each stores a challenge) a user may request: (limit, window seconds).
WEBAUTHN_OPTIONS_RATE = (30, 15 * 60)
#: What needs a recent sign-in, and how the confirmation page names it.
ACTIONS = {"add_passkey": "add a passkey", "revoke_others": "sign out your other sessions"}
METHODS = {
    "email_code": "an email code",
    "passkey": "a passkey",
    "invitation": "an invitation link",
    "sso": "single sign-on",
}


class NotFound(Exception):
    """No such session or passkey among the user's own."""


class ChallengeUnknown(Exception):
    """No pending confirmation code with this id belongs to the user."""


# --- presentation helpers -----------------------------------------------------------------------------------


def when(moment: datetime) -> str:
    """``22 Nov 2026, 07:15 UTC``."""
    utc = moment.astimezone(UTC)
    return f"{utc.day} {utc:%b %Y, %H:%M} UTC"


def ago(moment: datetime, now: datetime | None = None) -> str:
    """``just now``, ``5 minutes ago``, ``3 hours ago``, ``2 days ago``, else the date."""
    seconds = int(((now or clock.utcnow()) - moment).total_seconds())
    if seconds < 120:
        return "just now"
    for unit, size in (("minute", 60), ("hour", 3600), ("day", 86400)):
        limit = {"minute": 3600, "hour": 86400, "day": 30 * 86400}[unit]
        if seconds < limit:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return f"on {when(moment)}"


# --- step-up ------------------------------------------------------------------------------------------------


def place(ip: str) -> str:
    """Where an address is, as far as the portal can tell without a location database: this computer, a
    private network, or the internet. (No GeoIP database ships with the portal.)"""
    import ipaddress

    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if address.is_loopback:
        return "this computer"
    if address.is_private or address.is_link_local:
        return "a private network"
    return "the internet"


def is_fresh(session: dict[str, Any], now: datetime | None = None) -> bool:
    """True if the session signed in (or confirmed it's the user) within the last 10 minutes."""
    authenticated_at: datetime = session["authenticated_at"]
    return (now or clock.utcnow()) - authenticated_at < STEP_UP_WINDOW


def action_or_default(action: str) -> str:
    """One of :data:`ACTIONS` (an unknown value from a forged form means the first)."""
    return action if action in ACTIONS else "add_passkey"


async def confirmed(session: dict[str, Any], method: str, *, organization_id: str | None, ip: str) -> None:
    """The user proved it's them again: the session counts as freshly signed in; audit ``session.step_up``."""
    now = clock.utcnow()
    await Session.update({Session.authenticated_at: now}).where(Session.id == session["id"])
    session["authenticated_at"] = now
    await accounts.audit(
        "session.step_up",
        organization_id=organization_id,
        actor_id=session["user"],
        target=session["id"],
        details={"method": method},
        ip=ip,
    )


async def send_step_up_code(settings: Settings, user: dict[str, Any], *, action: str, ip: str) -> str:
    """Email a 6-digit code to the user's address; returns the challenge id. FormErrors if refused."""
    limit, window = STEP_UP_CODE_RATE
    allowed = await ratelimit.hit(f"security.step_up.user:{user['id']}", limit, window)
    if not allowed.allowed:
        wait = ratelimit.describe_wait(allowed.retry_after_seconds)
        raise FormErrors({"code": f"Too many codes requested. Try again in {wait}."}, status_code=429)
    challenge_id, code = await codes.issue_code(
        user["email"], CODE_PURPOSE, user_id=user["id"], ip=ip, details={"action": action}
    )
    try:
        await mail.send_mail(
            settings,
            user["email"],
            *_code_message(settings, code, action),
            dev_log=f"confirmation code {code}",
        )
    except Exception:  # SMTP or disk: the user gets a message, the log gets the cause.
        log.exception("could not send the confirmation code to %s", user["email"])
        raise FormErrors({"code": "We could not send the email. Try again in a few minutes."}) from None
    return challenge_id


def _code_message(settings: Settings, code: str, action: str) -> tuple[str, str]:
    subject = mail.subject(settings, "your confirmation code")
    text = (
        f"Someone signed in to your {settings.brand_name} account asked to {ACTIONS[action]}.\n"
        f"If it was you, enter this code to confirm:\n\n"
        f"    {code}\n\n"
        f"The code expires in {codes.DEFAULT_TTL_SECONDS // 60} minutes. If it was not you, ignore this "
        "message, sign in and revoke the sessions you do not recognise in Security.\n"
    )
    return subject, text


async def pending_step_up(user_id: str, challenge_id: str) -> dict[str, Any] | None:
    """The user's unused confirmation code challenge ``challenge_id``, else None."""
    row = await codes.get_challenge(challenge_id, CODE_PURPOSE)
    # tenant check: a challenge id from the URL or form that belongs to someone else is as good as unknown.
    if row is None or row["user"] != user_id or row["consumed_at"] is not None:
        return None
    return row


async def check_step_up_code(user_id: str, challenge_id: str, raw_code: str) -> None:
    """Verify a confirmation code of the user's; FormErrors (next to the field) or ChallengeUnknown."""
    try:
        challenge = await codes.verify_users_code(user_id, challenge_id, raw_code, CODE_PURPOSE)
    except codes.CodeRejected as exc:
        raise FormErrors({"code": exc.message}) from None
    if challenge is None:
        raise ChallengeUnknown(challenge_id)


async def webauthn_options_allowed(user_id: str) -> bool:
    """Each options request stores a challenge: a signed-in user gets a generous but finite number."""
    limit, window = WEBAUTHN_OPTIONS_RATE
    return (await ratelimit.hit(f"security.webauthn.user:{user_id}", limit, window)).allowed


async def step_up_options(settings: Settings, user_id: str, session_id: str, *, ip: str) -> dict[str, Any]:
    """Request options allowing only the user's own passkeys. NotFound if they have none."""
    allow = (
        await Passkey.select(Passkey.credential_id, Passkey.transports)
        .where(Passkey.user == user_id)
        .output(load_json=True)
    )
    if not allow:
        raise NotFound(user_id)
    return await passkeys.authentication_options(
        settings,
        passkeys.PURPOSE_STEP_UP,
        user_id=user_id,
        binding={"session": session_id},
        allow=allow,
        ip=ip,
    )


async def verify_step_up(
    settings: Settings, credential: dict[str, Any], user_id: str, session_id: str
) -> None:
    """Check a passkey answer to a confirmation: it must be one of the user's passkeys (PasskeyError if not)."""
    await passkeys.verify_assertion(
        settings,
        credential,
        passkeys.PURPOSE_STEP_UP,
        challenge_user_id=user_id,
        binding={"session": session_id},
        passkey_user_id=user_id,  # tenant check: only the signed-in user's own passkeys confirm
    )


# --- sessions -----------------------------------------------------------------------------------------------


async def list_sessions(settings: Settings, user_id: str, current_id: str) -> list[SessionView]:
    """The user's live sessions, this one first, then by last activity.

    A session that has run out but that the sweep has not revoked yet is not live and is not listed.
    """
    rows = (
        await Session.select(
            Session.id,
            Session.ip,
            Session.user_agent,
            Session.auth_method,
            Session.created_at,
            Session.last_seen_at,
            Session.active_organization.session_policy_source.as_alias("session_policy_source"),
            Session.active_organization.session_absolute_timeout.as_alias("session_absolute_timeout"),
            Session.active_organization.session_idle_timeout.as_alias("session_idle_timeout"),
        )
        .where((Session.user == user_id) & Session.revoked_at.is_null())
        .order_by(Session.last_seen_at, ascending=False)
    )
    now = clock.utcnow()
    views = []
    for row in rows:
        timeouts = sessions.effective_timeouts(settings, row)
        if row["id"] != current_id and sessions.expiry_reason(row, timeouts, now) is not None:
            continue
        views.append(
            SessionView(
                id=row["id"],
                device=useragent.parse(row["user_agent"] or "").describe(),
                ip=row["ip"] or "",
                created_at=row["created_at"],
                last_seen_at=row["last_seen_at"],
                method=METHODS.get(row["auth_method"], row["auth_method"].replace("_", " ")),
                current=row["id"] == current_id,
            )
        )
    views.sort(key=lambda view: not view.current)  # stable: the rest stay by last activity
    return views


async def revoke_session(
    user_id: str, session_id: str, *, organization_id: str | None, ip: str, actor_id: str | None = None
) -> None:
    """Revoke one of the user's own live sessions (it stops working on its next request); NotFound if not.
    ``actor_id``: who did it when not the user (an API key)."""
    # tenant check: only a live session of this user; anyone else's id is unknown.
    row = (
        await Session.select(Session.id, Session.user_agent)
        .where((Session.id == session_id) & (Session.user == user_id) & Session.revoked_at.is_null())
        .first()
    )
    if row is None:
        raise NotFound(session_id)
    await sessions.revoke(session_id, "user" if actor_id is None else "api")
    await accounts.audit(
        "session.revoked",
        organization_id=organization_id,
        actor_id=actor_id or user_id,
        target=session_id,
        details={"device": useragent.parse(row["user_agent"] or "").describe()},
        ip=ip,
    )


async def revoke_other_sessions(
    user_id: str, current_id: str, *, organization_id: str | None, ip: str
) -> int:
    """Revoke every live session of the user but this one; returns how many. Call after the step-up check."""
    revoked = (
        await Session.update({Session.revoked_at: clock.utcnow(), Session.revoke_reason: "user"})
        .where((Session.user == user_id) & (Session.id != current_id) & Session.revoked_at.is_null())
        .returning(Session.id)
    )
    await sessions.ended([(row["id"], user_id) for row in revoked], "user")
    await accounts.audit(
        "sessions.revoked_others",
        organization_id=organization_id,
        actor_id=user_id,
        target=current_id,
        details={"count": len(revoked), "session_ids": [row["id"] for row in revoked]},
        ip=ip,
    )
    return len(revoked)


# --- passkeys -----------------------------------------------------------------------------------------------


async def list_passkeys(user_id: str) -> list[PasskeyView]:
    """The user's passkeys, oldest first."""
    rows = (
        await Passkey.select(
            Passkey.id,
            Passkey.name,
            Passkey.backup_eligible,
            Passkey.aaguid,
            Passkey.created_at,
            Passkey.last_used_at,
        )
        .where(Passkey.user == user_id)
        .order_by(Passkey.created_at)
    )
    return [
        PasskeyView(
            id=row["id"],
            name=row["name"],
            synced=bool(row["backup_eligible"]),
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            provider=passkeys.provider_name(row["aaguid"] or ""),
        )
        for row in rows
    ]


def clean_name(raw: str) -> str:
    """A passkey name: trimmed, 1-64 characters, no control characters; ValueError saying what is wrong."""
    value = raw.strip()
    if any(unicodedata.category(ch) in {"Cc", "Cs", "Zl", "Zp"} or ch in BIDI_CONTROLS for ch in value):
        raise ValueError("Remove control characters such as line breaks and tabs.")
    if not value:
        raise ValueError("Enter a name, such as the device or password manager that keeps it.")
    if len(value) > passkeys.NAME_MAX:
        raise ValueError(f"Use at most {passkeys.NAME_MAX} characters (this has {len(value)}).")
    return value


async def _default_name(user_id: str, aaguid: str, user_agent: str) -> str:
    device = useragent.parse(user_agent)
    base = passkeys.provider_name(aaguid)
    if base is None and device.browser:
        base = f"{device.browser} on {device.system}" if device.system else device.browser
    base = (base or "Passkey")[: passkeys.NAME_MAX - 4]
    taken = {row["name"] for row in await Passkey.select(Passkey.name).where(Passkey.user == user_id)}
    name, number = base, 2
    while name in taken:
        name, number = f"{base} {number}", number + 1
    return name


async def registration_options(
    settings: Settings, user: dict[str, Any], session_id: str, *, ip: str
) -> dict[str, Any]:
    """Creation options for a new passkey of the user. Call after the step-up check."""
    return await passkeys.registration_options(settings, user, session_id, ip=ip)


async def add_passkey(
    settings: Settings,
    credential: dict[str, Any],
    *,
    user_id: str,
    session_id: str,
    user_agent: str,
    organization_id: str | None,
    ip: str,
) -> PasskeyView:
    """Verify a registration and store the passkey; audit ``passkey.registered``.

    The challenge was issued to this session only after the step-up check, so the check holds here too.
    PasskeyError (nothing stored) if the answer is refused or the passkey is registered already.
    """
    new = await passkeys.verify_registration(settings, credential, user_id=user_id, session_id=session_id)
    if await Passkey.exists().where(Passkey.credential_id == new.credential_id):
        raise passkeys.PasskeyError("duplicate", "This passkey is registered already.")
    name = await _default_name(user_id, new.aaguid, user_agent)
    row = Passkey(
        user=user_id,
        credential_id=new.credential_id,
        public_key=new.public_key,
        sign_count=new.sign_count,
        transports=new.transports,
        backup_eligible=new.backup_eligible,
        backed_up=new.backed_up,
        aaguid=new.aaguid,
        name=name,
        created_at=clock.utcnow(),
        last_used_at=None,
    )
    await row.save()
    await accounts.audit(
        "passkey.registered",
        organization_id=organization_id,
        actor_id=user_id,
        target=row.id,
        details={
            "name": name,
            "aaguid": new.aaguid,
            "synced": new.backup_eligible,
            "transports": new.transports,
        },
        ip=ip,
    )
    return PasskeyView(
        id=row.id,
        name=name,
        synced=new.backup_eligible,
        created_at=row.created_at,
        last_used_at=None,
        provider=passkeys.provider_name(new.aaguid),
    )


async def rename_passkey(
    user_id: str, passkey_id: str, raw_name: str, *, organization_id: str | None, ip: str
) -> str:
    """Rename one of the user's passkeys; the new name. NotFound, or FormErrors with nothing saved."""
    # tenant check first: someone else's passkey id is unknown, whatever the name.
    current = (
        await Passkey.select(Passkey.name)
        .where((Passkey.id == passkey_id) & (Passkey.user == user_id))
        .first()
    )
    if current is None:
        raise NotFound(passkey_id)
    try:
        name = clean_name(raw_name)
    except ValueError as exc:
        raise FormErrors({"name": str(exc)}) from None
    if name == current["name"]:
        return name
    await Passkey.update({Passkey.name: name}).where((Passkey.id == passkey_id) & (Passkey.user == user_id))
    await accounts.audit(
        "passkey.renamed",
        organization_id=organization_id,
        actor_id=user_id,
        target=passkey_id,
        details={"old": current["name"], "new": name},
        ip=ip,
    )
    return name


async def delete_passkey(user_id: str, passkey_id: str, *, organization_id: str | None, ip: str) -> str:
    """Delete one of the user's passkeys; its name. NotFound if it is not theirs."""
    # tenant check: the DELETE itself is scoped to the user.
    deleted = (
        await Passkey.delete()
        .where((Passkey.id == passkey_id) & (Passkey.user == user_id))
        .returning(Passkey.name, Passkey.credential_id)
    )
    if not deleted:
        raise NotFound(passkey_id)
    await accounts.audit(
        "passkey.deleted",
        organization_id=organization_id,
        actor_id=user_id,
        target=passkey_id,
        details={"name": deleted[0]["name"]},
        ip=ip,
    )
    return str(deleted[0]["name"])

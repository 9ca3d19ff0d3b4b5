"""Profile rules: validating names, saving them, and changing the email address with a code.

Every query is scoped to the signed-in user's id, which the controller takes from the session (never from
the form).
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from typing import Any

from portal.auth import accounts, codes, ratelimit
from portal.core import clock, db, mail
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import User
from portal.web.forms import BIDI_CONTROLS, FormErrors
from widgets.profile.schemas import EmailChangeForm, PendingEmailChange, Profile, ProfileForm

log = logging.getLogger("widgets.profile")

#: Column limits (portal.tables.User) and what the form enforces.
MAX_LENGTHS = {"given_name": 100, "family_name": 100, "display_name": 200}
#: Longest tag the locale column holds (RFC 5646 §4.4.1 asks implementations to accept at least 35).
MAX_LOCALE = 35
# The ``locale`` column stays (migrations only add), but nothing is translated yet, so the form no longer
# offers a language that would change nothing but ``<html lang>`` (WCAG 3.1.1). Localization is a follow-up.
PROFILE_FIELDS = ("given_name", "family_name", "display_name")
CODE_PURPOSE = "email_change"
EMAIL_IN_USE = "This email is in use by another account."
#: Email change codes a user may request: (limit, window seconds).
EMAIL_CHANGE_RATE = (5, 15 * 60)

# RFC 5646 §2.1 "langtag", matched case-insensitively, with one restriction: the primary language is an
# ISO 639 code (2-3 letters). The grammar also allows 4 letters (reserved) and 5-8 letters (for future
# registrations; none exist), which would let words such as "english" through as a locale.
_LANGTAG = re.compile(
    r"""
    [a-z]{2,3}(?:-[a-z]{3}){0,3}                          # language (with extlangs)
    (?:-[a-z]{4})?                                        # script
    (?:-(?:[a-z]{2}|[0-9]{3}))?                           # region
    (?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*              # variants
    (?:-[0-9a-wyz](?:-[a-z0-9]{2,8})+)*                   # extensions
    (?:-x(?:-[a-z0-9]{1,8})+)?                            # private use
    """,
    re.IGNORECASE | re.VERBOSE | re.ASCII,
)
_PRIVATE_USE = re.compile(r"x(?:-[a-z0-9]{1,8})+", re.IGNORECASE | re.ASCII)
# RFC 5646 irregular grandfathered tags (the regular ones already match the langtag grammar).
_IRREGULAR = frozenset(
    {
        "en-gb-oed",
        "i-ami",
        "i-bnn",
        "i-default",
        "i-enochian",
        "i-hak",
        "i-klingon",
        "i-lux",
        "i-mingo",
        "i-navajo",
        "i-pwn",
        "i-tao",
        "i-tay",
        "i-tsu",
        "sgn-be-fr",
        "sgn-be-nl",
        "sgn-ch-de",
    }
)


class ChallengeUnknown(Exception):
    """No pending email change with this id belongs to the user (or it is no longer pending)."""


def has_control_characters(value: str) -> bool:
    """True if ``value`` holds a control character, a line/paragraph separator or a bidi control."""
    return any(unicodedata.category(ch) in {"Cc", "Cs", "Zl", "Zp"} or ch in BIDI_CONTROLS for ch in value)


def clean_text(raw: str, max_length: int) -> str:
    """Trim surrounding whitespace; reject control characters and values over ``max_length``."""
    value = raw.strip()
    if has_control_characters(value):
        raise ValueError("Remove control characters such as line breaks and tabs.")
    if len(value) > max_length:
        raise ValueError(f"Use at most {max_length} characters (this has {len(value)}).")
    return value


def normalize_locale(raw: str) -> str:
    """Kept for the localization follow-up (no form offers a language now). A well-formed BCP 47 tag in its conventional case (``pt-br`` → ``pt-BR``); ValueError if malformed."""
    tag = raw.strip()
    if not tag:
        raise ValueError("Choose a language.")
    if len(tag) > MAX_LOCALE:
        raise ValueError(f"A language tag has at most {MAX_LOCALE} characters.")
    if not (_LANGTAG.fullmatch(tag) or _PRIVATE_USE.fullmatch(tag) or tag.lower() in _IRREGULAR):
        raise ValueError("Enter a language tag such as en, de-CH or pt-BR.")
    return _canonical_case(tag)


def _canonical_case(tag: str) -> str:
    # RFC 5646 §2.1.1: language lowercase, script titlecase, region uppercase; after a singleton all lowercase.
    parts = tag.lower().split("-")
    out = [parts[0]]
    in_extension = len(parts[0]) == 1
    for part in parts[1:]:
        if len(part) == 1:
            in_extension = True
        elif not in_extension and len(part) == 2:
            part = part.upper()
        elif not in_extension and len(part) == 4 and part.isalpha():
            part = part.title()
        out.append(part)
    return "-".join(out)


def validate_profile(form: ProfileForm) -> dict[str, str]:
    """The cleaned values of the profile form; :class:`FormErrors` naming every bad field."""
    errors: dict[str, str] = {}
    values: dict[str, str] = {}
    for field, limit in MAX_LENGTHS.items():
        try:
            values[field] = clean_text(getattr(form, field), limit)
        except ValueError as exc:
            errors[field] = str(exc)
    if errors:
        raise FormErrors(errors)
    if not values["display_name"]:
        values["display_name"] = " ".join(v for v in (values["given_name"], values["family_name"]) if v)
    return values


async def get_profile(user_id: str) -> Profile:
    """The signed-in user's profile."""
    row = (
        await User.select(
            User.email, User.email_verified, User.given_name, User.family_name, User.display_name
        )
        .where(User.id == user_id)
        .first()
    )
    if row is None:
        raise LookupError(user_id)
    return Profile(**row)


async def update_profile(
    user_id: str, form: ProfileForm, *, organization_id: str | None, ip: str
) -> list[str]:
    """Validate and save the profile; audit ``profile.updated``. Returns the changed fields (empty: none).

    Call inside :func:`portal.db.write_transaction`.
    """
    values = validate_profile(form)
    current = (
        await User.select(*(User._meta.get_column_by_name(f) for f in PROFILE_FIELDS))
        .where(User.id == user_id)
        .first()
    )
    if current is None:
        raise LookupError(user_id)
    changes = {f: {"old": current[f], "new": values[f]} for f in PROFILE_FIELDS if current[f] != values[f]}
    if not changes:
        return []
    update: dict[Any, Any] = {User._meta.get_column_by_name(f): values[f] for f in changes}
    update[User.updated_at] = clock.utcnow()
    await User.update(update).where(User.id == user_id)
    await accounts.sync_member_keys(user_id)  # the members list searches and sorts by these names
    await accounts.audit(
        "profile.updated",
        organization_id=organization_id,
        actor_id=user_id,
        target=user_id,
        details={"fields": list(changes), "changes": changes},
        ip=ip,
    )
    return list(changes)


async def _email_taken(email: str, user_id: str) -> bool:
    return bool(await User.exists().where((User.email == email) & (User.id != user_id)))


async def request_email_change(
    settings: Settings,
    user: dict[str, Any],
    form: EmailChangeForm,
    *,
    organization_id: str | None,
    ip: str,
) -> PendingEmailChange:
    """Send a 6-digit code to the new address; the email changes only when it comes back."""
    if has_control_characters(form.new_email):
        raise FormErrors({"new_email": "Enter an email address like name@example.com."})
    try:
        new_email = accounts.normalize_email(form.new_email)
    except InvalidInput as exc:
        raise FormErrors({"new_email": exc.message}) from None
    current = await User.select(User.email).where(User.id == user["id"]).first()
    if current is None:
        raise LookupError(user["id"])
    if new_email == current["email"]:
        raise FormErrors({"new_email": "This is already your email address."})
    # Saying so reveals that the address has an account, to a signed-in user only (as identity vendors do).
    if await _email_taken(new_email, user["id"]):
        raise FormErrors({"new_email": EMAIL_IN_USE})
    # Each code costs an email to an address of the user's choosing, and each challenge allows a few guesses.
    limit, window = EMAIL_CHANGE_RATE
    allowed = await ratelimit.hit(f"profile.email_change.user:{user['id']}", limit, window)
    if not allowed.allowed:
        wait = ratelimit.describe_wait(allowed.retry_after_seconds)
        raise FormErrors({"new_email": f"Too many codes requested. Try again in {wait}."}, status_code=429)
    challenge_id, code = await codes.issue_code(
        new_email, CODE_PURPOSE, user_id=user["id"], ip=ip, details={"new_email": new_email}
    )
    try:
        await mail.send_mail(
            settings, new_email, *_code_message(settings, code), dev_log=f"confirmation code {code}"
        )
    except Exception:  # SMTP or disk: the user gets a message, the log gets the cause.
        log.exception("could not send the email change code to %s", new_email)
        raise FormErrors({"new_email": "We could not send the email. Try again in a few minutes."}) from None
    await accounts.audit(
        "profile.email_change_requested",
        organization_id=organization_id,
        actor_id=user["id"],
        target=user["id"],
        details={"old": current["email"], "new": new_email, "challenge_id": challenge_id},
        ip=ip,
    )
    return PendingEmailChange(challenge_id=challenge_id, new_email=new_email)


def _code_message(settings: Settings, code: str) -> tuple[str, str]:
    subject = mail.subject(settings, "confirm your new email address")
    text = (
        f"Enter this code in {settings.brand_name} to make this your email address:\n\n"
        f"    {code}\n\n"
        f"The code expires in {codes.DEFAULT_TTL_SECONDS // 60} minutes. If you did not ask to change "
        "your email address, ignore this message: nothing changes without the code.\n"
    )
    return subject, text


def _details(challenge: dict[str, Any]) -> dict[str, Any]:
    details = challenge.get("details") or {}
    if isinstance(details, str):
        details = json.loads(details)
    return dict(details)


async def _own_challenge(user_id: str, challenge_id: str) -> dict[str, Any] | None:
    challenge = await codes.get_challenge(challenge_id, CODE_PURPOSE)
    # tenant check: a challenge id from the form that belongs to someone else is as good as unknown.
    if challenge is None or challenge["user"] != user_id:
        return None
    return challenge


async def pending_email_change(user_id: str, challenge_id: str) -> PendingEmailChange | None:
    """The user's email change ``challenge_id`` unless unknown, someone else's or already used."""
    row = await _own_challenge(user_id, challenge_id)
    if row is None or row["consumed_at"] is not None:
        return None
    return PendingEmailChange(
        challenge_id=row["id"],
        new_email=str(_details(row).get("new_email") or row["email"]),
        expired=row["expires_at"] <= clock.utcnow(),
    )


async def check_email_code(user_id: str, challenge_id: str, raw_code: str) -> str:
    """Verify the code of the user's pending email change; the new address, or FormErrors/ChallengeUnknown."""
    try:
        challenge = await codes.verify_users_code(user_id, challenge_id, raw_code, CODE_PURPOSE)
    except codes.CodeRejected as exc:
        raise FormErrors({"code": exc.message}) from None
    if challenge is None:
        raise ChallengeUnknown(challenge_id)
    return str(_details(challenge).get("new_email") or challenge["email"])


class EmailTaken(Exception):
    """The new address was taken by another account between the request and the confirmation."""


async def apply_email_change(user_id: str, new_email: str, *, organization_id: str | None, ip: str) -> str:
    """Make ``new_email`` (proved by a code) the user's verified address; returns the old one.

    Call inside :func:`portal.db.write_transaction`; raises :class:`EmailTaken` if another account has it now.
    """
    current = await User.select(User.email).where(User.id == user_id).first()
    if current is None:
        raise LookupError(user_id)
    if await _email_taken(new_email, user_id):
        raise EmailTaken(new_email)
    await User.update(
        {User.email: new_email, User.email_verified: True, User.updated_at: clock.utcnow()}
    ).where(User.id == user_id)
    await accounts.sync_member_keys(user_id)  # the members list searches by email
    await accounts.audit(
        "profile.email_changed",
        organization_id=organization_id,
        actor_id=user_id,
        target=user_id,
        details={"old": current["email"], "new": new_email},
        ip=ip,
    )
    return str(current["email"])


def is_email_taken(exc: BaseException) -> bool:
    """True for :class:`EmailTaken` and for a lost race on the unique email index (SQLite or PostgreSQL)."""
    return isinstance(exc, EmailTaken) or db.is_unique_violation(exc)


async def notify_old_address(settings: Settings, old_email: str) -> None:
    """Tell the previous address that the account's email changed (best effort: the change is done)."""
    text = (
        f"The email address of your {settings.brand_name} account was changed from {old_email} to a new "
        "address. If you did not do this, contact your administrator at once.\n"
    )
    try:
        await mail.send_mail(
            settings, old_email, mail.subject(settings, "your email address was changed"), text
        )
    except Exception:  # best effort: the change itself is committed.
        log.exception("could not notify %s of an email change", old_email)

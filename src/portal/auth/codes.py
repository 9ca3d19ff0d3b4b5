"""One-time email codes (DESIGN §4): 6 digits, 10 minutes, 5 attempts, single use, stored hashed.

Used by the hosted login (purpose ``login``), the Profile widget (purpose ``email_change``) and the
Security widget's confirmation before sensitive actions (purpose ``step_up``).
"""

from __future__ import annotations

import hmac
import re
import secrets
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import msgspec

from portal.core import clock, ids
from portal.core.tables import LoginChallenge

PURPOSES = ("login", "email_change", "step_up")
#: The wrong attempt that reaches this number locks the challenge.
MAX_ATTEMPTS = 5
DEFAULT_TTL_SECONDS = 600
CODE_DIGITS = 6

#: Every column but the code hash, which never leaves this module.
_PUBLIC_COLUMNS = (
    LoginChallenge.id,
    LoginChallenge.email,
    LoginChallenge.purpose,
    LoginChallenge.user,
    LoginChallenge.attempts,
    LoginChallenge.expires_at,
    LoginChallenge.consumed_at,
    LoginChallenge.ip,
    LoginChallenge.details,
    LoginChallenge.created_at,
)

CodeStatus = Literal["ok", "wrong", "expired", "locked", "used", "unknown"]


class CodeResult(msgspec.Struct, frozen=True):
    """The outcome of :func:`verify_code`; ``challenge`` is the row (without the code hash) when known."""

    status: CodeStatus
    attempts_left: int
    challenge: dict[str, Any] | None


def _code_hash(challenge_id: str, code: str) -> str:
    # The challenge id salts the hash, so one precomputed table of the 10^6 codes does not fit every row.
    return ids.hash_secret(f"{challenge_id}:{code}")


def new_code() -> str:
    """A uniformly random 6-digit code (leading zeros kept)."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


async def issue_code(
    email: str,
    purpose: str,
    *,
    user_id: str | None = None,
    ip: str = "",
    details: dict[str, Any] | None = None,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
) -> tuple[str, str]:
    """Store a new challenge for ``email`` and return (challenge id, code). The code is never stored."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown code purpose {purpose!r}")
    challenge_id = ids.challenge_id()
    code = new_code()
    now = clock.utcnow()
    await LoginChallenge(
        id=challenge_id,
        email=email,
        purpose=purpose,
        user=user_id,
        code_hash=_code_hash(challenge_id, code),
        attempts=0,
        expires_at=now + timedelta(seconds=ttl_seconds),
        consumed_at=None,
        ip=ip[:45],
        details=details or {},
        created_at=now,
    ).save()
    return challenge_id, code


async def get_challenge(challenge_id: str, purpose: str) -> dict[str, Any] | None:
    """The challenge row (without its hash), if it exists and has ``purpose``."""
    if not challenge_id or len(challenge_id) > 40:
        return None
    row = (
        await LoginChallenge.select(*_PUBLIC_COLUMNS)
        .where((LoginChallenge.id == challenge_id) & (LoginChallenge.purpose == purpose))
        .first()
        .output(load_json=True)
    )
    return cast(dict[str, Any] | None, row)


async def verify_code(challenge_id: str, code: str, purpose: str) -> CodeResult:
    """Check ``code`` against the challenge; at most one call per challenge ever returns ``ok``.

    Each attempt is counted before the comparison (a conditional UPDATE), so concurrent guesses cannot
    exceed the limit; success consumes the challenge with ``UPDATE ... WHERE consumed_at IS NULL``.
    """
    now = clock.utcnow()
    challenge = await get_challenge(challenge_id, purpose)
    if challenge is None:
        return CodeResult("unknown", 0, None)
    counted = (
        await LoginChallenge.update({LoginChallenge.attempts: LoginChallenge.attempts + 1})
        .where(
            (LoginChallenge.id == challenge_id)
            & LoginChallenge.consumed_at.is_null()
            & (LoginChallenge.attempts < MAX_ATTEMPTS)
            & (LoginChallenge.expires_at > now)
        )
        .returning(LoginChallenge.attempts, LoginChallenge.code_hash)
    )
    if not counted:
        return await _refused(challenge_id, purpose, now)
    attempts = int(counted[0]["attempts"])
    attempts_left = MAX_ATTEMPTS - attempts
    if not hmac.compare_digest(_code_hash(challenge_id, code.strip()), counted[0]["code_hash"]):
        status: CodeStatus = "locked" if attempts_left <= 0 else "wrong"
        challenge["attempts"] = attempts
        return CodeResult(status, max(attempts_left, 0), challenge)
    consumed = (
        await LoginChallenge.update({LoginChallenge.consumed_at: now})
        .where((LoginChallenge.id == challenge_id) & LoginChallenge.consumed_at.is_null())
        .returning(LoginChallenge.id)
    )
    if not consumed:
        # A concurrent submission of the same code won the race.
        return CodeResult("used", 0, challenge)
    challenge["attempts"] = attempts
    challenge["consumed_at"] = now
    return CodeResult("ok", max(attempts_left, 0), challenge)


async def _refused(challenge_id: str, purpose: str, now: datetime) -> CodeResult:
    """Why an attempt could not even be counted: used, locked or expired."""
    challenge = await get_challenge(challenge_id, purpose)
    if challenge is None:
        return CodeResult("unknown", 0, None)
    if challenge["consumed_at"] is not None:
        return CodeResult("used", 0, challenge)
    if challenge["attempts"] >= MAX_ATTEMPTS:
        return CodeResult("locked", 0, challenge)
    if challenge["expires_at"] <= now:
        return CodeResult("expired", 0, challenge)
    # Counted by nobody yet refused: only a row changed between the two queries; say locked, never ok.
    return CodeResult("locked", 0, challenge)


class CodeRejected(Exception):
    """A code typed into a form was not accepted; ``message`` is shown next to the field."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


async def verify_users_code(
    user_id: str, challenge_id: str, raw_code: str, purpose: str
) -> dict[str, Any] | None:
    """Check a code a signed-in user typed for their own challenge (email change, step-up).

    Returns the challenge row on success; None when the challenge is unknown, used or someone else's;
    raises :class:`CodeRejected` for a code that is malformed, wrong, expired or locked.
    """
    # tenant check before verifying: someone else's challenge must not even cost its owner an attempt.
    row = await get_challenge(challenge_id, purpose)
    if row is None or row["user"] != user_id or row["consumed_at"] is not None:
        return None
    code = "".join(raw_code.split())
    if not re.fullmatch(r"[0-9]{6}", code):
        raise CodeRejected("Enter the 6-digit code from the email.")
    result = await verify_code(challenge_id, code, purpose)
    if result.status == "wrong":
        left = result.attempts_left
        tries = f"{left} attempt{'s' if left != 1 else ''} left" if left else "no attempts left"
        raise CodeRejected(f"That code is not right. {tries[0].upper()}{tries[1:]}.")
    if result.status == "expired":
        raise CodeRejected("This code has expired. Send a new code.")
    if result.status == "locked":
        raise CodeRejected("Too many wrong codes. Send a new code.")
    if result.status != "ok" or result.challenge is None or result.challenge["user"] != user_id:
        return None
    return result.challenge

"""Passkeys (WebAuthn, with py_webauthn): ceremony options, single-use challenges, and verification.

Used by the passkey sign-in on ``/login`` (``portal.passkey_login``) and by the Security widget (register,
confirm it's you). Decisions:

- RP id is the host name of ``PORTAL_PUBLIC_URL`` and the only accepted origin is that URL's origin.
- Passkeys are discoverable (resident key required), so sign-in needs no email address first.
- User verification is *required* in every ceremony: a passkey replaces the emailed code on its own, so it
  must prove "something you are or know" (biometrics, PIN, screen lock) on top of possession.
- Attestation ``none``: the portal does not restrict authenticator models.
- Challenges are 32 random bytes kept in ``login_challenge`` as their SHA-256 only. The row id is derived
  from that hash, so the browser's answer finds its row by primary key; a row is bound to its purpose and
  to the signed-in session (registration, confirmation) or to the browser's CSRF cookie (sign-in), expires
  after 5 minutes, and is consumed by the first answer that names it, so a replayed answer is refused.
- The signature counter must grow whenever either side is non-zero; synced passkeys report 0 and 0/0 passes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import options_to_json_dict, parse_client_data_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    ClientDataType,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import LoginChallenge, Passkey

PURPOSE_LOGIN = "webauthn_login"
PURPOSE_REGISTER = "webauthn_register"
PURPOSE_STEP_UP = "webauthn_step_up"
CHALLENGE_TTL = timedelta(minutes=5)
#: What the browser is told to wait for (ms): as long as the challenge lives.
CEREMONY_TIMEOUT_MS = int(CHALLENGE_TTL.total_seconds() * 1000)
NAME_MAX = 64
_MAX_CREDENTIAL_ID_BYTES = 1023
_TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)

#: Password managers and platforms by AAGUID (from the community list passkeydeveloper/
#: passkey-authenticator-aaguids), so that a new passkey gets a name its owner recognises.
PROVIDERS = {
    "fbfc3007-154e-4ecc-8c0b-6e020557d7bd": "iCloud Keychain",
    "dd4ec289-e01d-41c9-bb89-70fa845d4bf2": "iCloud Keychain (managed)",
    "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4": "Google Password Manager",
    "adce0002-35bc-c60a-648b-0b25f1f05503": "Chrome on Mac",
    "08987058-cadc-4b81-b6e1-30de50dcbe96": "Windows Hello",
    "9ddd1817-af5a-4672-a2b9-3e3dd95000a9": "Windows Hello",
    "6028b017-b1d4-4c02-b4b3-afcdafc96bb2": "Windows Hello",
    "bada5566-a7aa-401f-bd96-45619a55120d": "1Password",
    "d548826e-79b4-db40-a3d8-11116f7e8349": "Bitwarden",
    "531126d6-e717-415c-9320-3d9aa6981239": "Dashlane",
    "53414d53-554e-4700-0000-000000000000": "Samsung Pass",
}


class PasskeyError(Exception):
    """A ceremony was refused. ``reason`` is a stable key for audit and tests; ``message`` is for people."""

    def __init__(self, reason: str, message: str, passkey: dict[str, Any] | None = None) -> None:
        self.reason = reason
        self.message = message
        #: The stored passkey the answer named, once known (for the audit trail).
        self.passkey = passkey
        super().__init__(f"{reason}: {message}")


def b64url(data: bytes) -> str:
    """Base64url without padding (WebAuthn's JSON encoding)."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def from_b64url(text: str) -> bytes:
    """The bytes of a base64url string (padding optional); ValueError if it is not one."""
    if not isinstance(text, str) or len(text) > 20000:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def rp_id(settings: Settings) -> str:
    """The relying party id: the host name of the public URL."""
    return (urlsplit(settings.public_url).hostname or "").lower()


def available(settings: Settings) -> bool:
    """Browsers refuse WebAuthn on an IP address (``127.0.0.1``): passkeys need a host name, even ``localhost``."""
    host = rp_id(settings)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(host)
    return False


def provider_name(aaguid: str) -> str | None:
    """The password manager or platform an AAGUID names, if it is a well-known one."""
    return PROVIDERS.get(aaguid.lower())


# --- challenges ---------------------------------------------------------------------------------------------


def _challenge_row_id(digest: bytes) -> str:
    return "chl_" + b64url(digest[:24])


async def issue_challenge(
    purpose: str, *, user_id: str | None, binding: dict[str, str], ip: str = ""
) -> bytes:
    """A new random challenge for ``purpose``; only its hash is stored, with what it is bound to."""
    challenge = secrets.token_bytes(32)
    digest = hashlib.sha256(challenge).digest()
    now = clock.utcnow()
    await LoginChallenge(
        id=_challenge_row_id(digest),
        email="",
        purpose=purpose,
        user=user_id,
        code_hash=digest.hex(),
        attempts=0,
        expires_at=now + CHALLENGE_TTL,
        consumed_at=None,
        ip=ip[:45],
        details=dict(binding),
        created_at=now,
    ).save()
    return challenge


async def _consume_challenge(
    challenge: bytes, purpose: str, *, user_id: str | None, binding: dict[str, str]
) -> None:
    """Use up the challenge the browser answered; PasskeyError(``challenge``) if it is not a live one of ours."""
    digest = hashlib.sha256(challenge).digest()
    row_id = _challenge_row_id(digest)
    row = (
        await LoginChallenge.select(
            LoginChallenge.user,
            LoginChallenge.code_hash,
            LoginChallenge.details,
            LoginChallenge.expires_at,
            LoginChallenge.consumed_at,
        )
        .where((LoginChallenge.id == row_id) & (LoginChallenge.purpose == purpose))
        .first()
        .output(load_json=True)
    )
    if row is None or not hmac.compare_digest(row["code_hash"], digest.hex()):
        raise PasskeyError(
            "challenge", "The passkey answered a challenge this portal did not issue. Try again."
        )
    details = row["details"] or {}
    # Bound to the session (or browser) that asked: another one's answer is as good as unknown.
    if row["user"] != user_id or any(details.get(k) != v for k, v in binding.items()):
        raise PasskeyError(
            "challenge", "The passkey answered a challenge this portal did not issue. Try again."
        )
    if row["consumed_at"] is not None:
        raise PasskeyError("replayed", "This passkey answer was already used. Try again.")
    now = clock.utcnow()
    if row["expires_at"] <= now:
        raise PasskeyError("expired", "The passkey request expired. Try again.")
    consumed = (
        await LoginChallenge.update({LoginChallenge.consumed_at: now})
        .where((LoginChallenge.id == row_id) & LoginChallenge.consumed_at.is_null())
        .returning(LoginChallenge.id)
    )
    if not consumed:
        # A concurrent request with the same answer won the race.
        raise PasskeyError("replayed", "This passkey answer was already used. Try again.")


def _client_data(settings: Settings, credential: dict[str, Any], expected_type: ClientDataType) -> bytes:
    """The challenge the browser signed, after checking the ceremony type and the origin."""
    try:
        response = credential["response"]
        raw = from_b64url(response["clientDataJSON"])
        client_data = parse_client_data_json(raw)
    except (KeyError, TypeError, ValueError, WebAuthnException):
        raise PasskeyError("malformed", "The browser's passkey answer could not be read.") from None
    if client_data.type != expected_type:
        raise PasskeyError("malformed", "The browser's passkey answer is for another kind of request.")
    if client_data.origin != settings.origin:
        raise PasskeyError(
            "origin",
            f"The passkey answered for {client_data.origin[:100]}, not for this portal ({settings.origin}).",
        )
    if client_data.cross_origin:
        raise PasskeyError("origin", "The passkey was used from inside another site's frame.")
    return client_data.challenge


# --- registration -------------------------------------------------------------------------------------------


def _descriptor(row: dict[str, Any]) -> PublicKeyCredentialDescriptor:
    transports = [AuthenticatorTransport(t) for t in row.get("transports") or () if t in _TRANSPORTS]
    return PublicKeyCredentialDescriptor(id=from_b64url(row["credential_id"]), transports=transports or None)


async def registration_options(
    settings: Settings, user: dict[str, Any], session_id: str, *, ip: str = ""
) -> dict[str, Any]:
    """``PublicKeyCredentialCreationOptionsJSON`` for a new discoverable passkey of ``user``."""
    existing = (
        await Passkey.select(Passkey.credential_id, Passkey.transports)
        .where(Passkey.user == user["id"])
        .output(load_json=True)
    )
    challenge = await issue_challenge(
        PURPOSE_REGISTER, user_id=user["id"], binding={"session": session_id}, ip=ip
    )
    options = generate_registration_options(
        rp_id=rp_id(settings),
        rp_name=settings.brand_name,
        # The user handle: the random user id (never the email), so the authenticator stores nothing personal
        # in it and a second passkey on the same authenticator replaces the first.
        user_id=user["id"].encode(),
        user_name=user["email"],
        user_display_name=user.get("display_name") or user["email"],
        challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[_descriptor(row) for row in existing],
    )
    return options_to_json_dict(options)


@dataclass(frozen=True, slots=True)
class NewPasskey:
    """A verified registration, ready to store."""

    credential_id: str
    public_key: str
    sign_count: int
    transports: list[str]
    backup_eligible: bool
    backed_up: bool
    aaguid: str


async def verify_registration(
    settings: Settings, credential: dict[str, Any], *, user_id: str, session_id: str
) -> NewPasskey:
    """Check a ``navigator.credentials.create()`` answer; PasskeyError saying what is wrong. Stores nothing."""
    challenge = _client_data(settings, credential, ClientDataType.WEBAUTHN_CREATE)
    await _consume_challenge(challenge, PURPOSE_REGISTER, user_id=user_id, binding={"session": session_id})
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id(settings),
            expected_origin=settings.origin,
            require_user_verification=True,
        )
    except WebAuthnException as exc:
        raise PasskeyError("invalid", f"The passkey could not be verified: {exc}") from None
    except (KeyError, TypeError, ValueError):
        raise PasskeyError("malformed", "The browser's passkey answer could not be read.") from None
    if len(verified.credential_id) > _MAX_CREDENTIAL_ID_BYTES:
        raise PasskeyError("invalid", "The passkey's id is longer than WebAuthn allows.")
    raw_transports = credential.get("response", {}).get("transports") or []
    transports = sorted({t for t in raw_transports if isinstance(t, str) and t in _TRANSPORTS})
    return NewPasskey(
        credential_id=b64url(verified.credential_id),
        public_key=b64url(verified.credential_public_key),
        sign_count=verified.sign_count,
        transports=transports,
        backup_eligible=verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
        backed_up=verified.credential_backed_up,
        aaguid=verified.aaguid,
    )


# --- authentication (sign-in, confirm it's you) -------------------------------------------------------------


async def authentication_options(
    settings: Settings,
    purpose: str,
    *,
    user_id: str | None,
    binding: dict[str, str],
    allow: list[dict[str, Any]] | None = None,
    ip: str = "",
) -> dict[str, Any]:
    """``PublicKeyCredentialRequestOptionsJSON``; ``allow`` empty for discoverable sign-in."""
    challenge = await issue_challenge(purpose, user_id=user_id, binding=binding, ip=ip)
    options = generate_authentication_options(
        rp_id=rp_id(settings),
        challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS,
        allow_credentials=[_descriptor(row) for row in allow or ()],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return options_to_json_dict(options)


async def verify_assertion(
    settings: Settings,
    credential: dict[str, Any],
    purpose: str,
    *,
    challenge_user_id: str | None,
    binding: dict[str, str],
    passkey_user_id: str | None = None,
) -> dict[str, Any]:
    """Check a ``navigator.credentials.get()`` answer and record the use; the passkey row, or PasskeyError.

    ``passkey_user_id``, when given, is the only user whose passkey is accepted (confirming it's you).
    """
    challenge = _client_data(settings, credential, ClientDataType.WEBAUTHN_GET)
    await _consume_challenge(challenge, purpose, user_id=challenge_user_id, binding=binding)
    raw_id = credential.get("rawId") or credential.get("id")
    if not isinstance(raw_id, str) or len(raw_id) > 1400:
        raise PasskeyError("malformed", "The browser's passkey answer could not be read.")
    passkey = await Passkey.select().where(Passkey.credential_id == raw_id).first().output(load_json=True)
    if passkey is None:
        raise PasskeyError(
            "unknown_credential",
            "This passkey is not registered here (it may have been deleted). Sign in with an email code.",
        )
    if passkey_user_id is not None and passkey["user"] != passkey_user_id:
        raise PasskeyError("wrong_user", "This passkey belongs to another account.", passkey)
    user_handle = credential.get("response", {}).get("userHandle")
    if user_handle:
        try:
            handle = from_b64url(user_handle)
        except ValueError:
            raise PasskeyError("malformed", "The browser's passkey answer could not be read.") from None
        if not hmac.compare_digest(handle, passkey["user"].encode()):
            raise PasskeyError(
                "wrong_user", "The passkey's account does not match its registration.", passkey
            )
    stored = int(passkey["sign_count"])
    try:
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id(settings),
            expected_origin=settings.origin,
            credential_public_key=from_b64url(passkey["public_key"]),
            # 0 turns the library's counter check off: it runs before the signature is checked, and a clone
            # should only be reported for an answer the passkey really signed (checked below).
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except WebAuthnException as exc:
        raise PasskeyError("invalid", f"The passkey could not be verified: {exc}", passkey) from None
    except (KeyError, TypeError, ValueError):
        raise PasskeyError("malformed", "The browser's passkey answer could not be read.", passkey) from None
    new = verified.new_sign_count
    if (new > 0 or stored > 0) and new <= stored:
        raise PasskeyError(
            "sign_count",
            "This passkey's signature counter went backwards, so it may have been copied. It was refused; "
            "sign in with an email code and check your passkeys.",
            passkey,
        )
    now = clock.utcnow()
    # Compare-and-set: of two answers racing with the same counter, only one is recorded.
    updated = (
        await Passkey.update(
            {
                Passkey.sign_count: new,
                Passkey.last_used_at: now,
                Passkey.backed_up: verified.credential_backed_up,
            }
        )
        .where((Passkey.id == passkey["id"]) & (Passkey.sign_count == stored))
        .returning(Passkey.id)
    )
    if not updated:
        raise PasskeyError(
            "sign_count", "This passkey was used twice at the same moment. Try again.", passkey
        )
    passkey.update(sign_count=new, last_used_at=now, backed_up=verified.credential_backed_up)
    return dict(passkey)

"""A software WebAuthn authenticator for tests (cbor2 + cryptography): ES256 keys, "none" attestation.

It takes the JSON options the portal sends and answers in the JSON a browser's ``PublicKeyCredential.toJSON()``
produces, so tests drive the same endpoints ``passkeys.js`` does. Knobs for hostile tests: answer for
another origin or challenge, a counter that can be wound back (a cloned authenticator), synced or
device-bound credentials, no user verification.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40
GOOGLE_PASSWORD_MANAGER = uuid.UUID("ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Credential:
    id: bytes
    key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    sign_count: int = 0


@dataclass
class SoftAuthenticator:
    """A passkey provider. ``synced`` sets the BE/BS flags; ``counter`` makes it count signatures."""

    origin: str
    synced: bool = True
    counter: bool = False
    user_verified: bool = True
    #: Google Password Manager's, by default (a known provider: the portal names the passkey after it).
    aaguid: uuid.UUID = field(default_factory=lambda: GOOGLE_PASSWORD_MANAGER)
    credentials: dict[bytes, Credential] = field(default_factory=dict)

    def _flags(self, *, attested: bool = False) -> int:
        flags = UP | (UV if self.user_verified else 0)
        if self.synced:
            flags |= BE | BS
        return flags | (AT if attested else 0)

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {"type": kind, "challenge": challenge, "origin": origin or self.origin, "crossOrigin": False}
        ).encode()

    def create(
        self, options: dict[str, Any], *, origin: str | None = None, challenge: str | None = None
    ) -> dict[str, Any]:
        """Answer ``navigator.credentials.create()`` options (the portal's JSON) with a new credential."""
        rp_id = options["rp"]["id"]
        excluded = {unb64url(c["id"]) for c in options.get("excludeCredentials", [])}
        if excluded & set(self.credentials):
            raise ValueError("InvalidStateError: a credential of this authenticator is excluded")
        key = ec.generate_private_key(ec.SECP256R1())
        credential_id = secrets.token_bytes(32)
        user_handle = unb64url(options["user"]["id"])
        # One discoverable credential per (RP, user): a new one replaces the old, as real authenticators do.
        for old_id, old in list(self.credentials.items()):
            if old.rp_id == rp_id and old.user_handle == user_handle:
                del self.credentials[old_id]
        credential = Credential(credential_id, key, rp_id, user_handle)
        self.credentials[credential_id] = credential
        numbers = key.public_key().public_numbers()
        cose_key = cbor2.dumps(
            {1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
        )
        auth_data = (
            hashlib.sha256(rp_id.encode()).digest()
            + bytes([self._flags(attested=True)])
            + struct.pack(">I", credential.sign_count)
            + self.aaguid.bytes
            + struct.pack(">H", len(credential_id))
            + credential_id
            + cose_key
        )
        client_data = self._client_data("webauthn.create", challenge or options["challenge"], origin)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["hybrid", "internal"],
            },
        }

    def get(
        self,
        options: dict[str, Any],
        *,
        origin: str | None = None,
        challenge: str | None = None,
        credential_id: bytes | None = None,
    ) -> dict[str, Any]:
        """Answer ``navigator.credentials.get()`` options with an assertion (discoverable if none allowed)."""
        rp_id = options["rpId"]
        allowed = [unb64url(c["id"]) for c in options.get("allowCredentials", [])]
        if credential_id is None:
            usable = [
                c for c in self.credentials.values() if c.rp_id == rp_id and (not allowed or c.id in allowed)
            ]
            if not usable:
                raise ValueError("NotAllowedError: no credential for this RP")
            credential = usable[-1]
        else:
            credential = self.credentials[credential_id]
        if self.counter:
            credential.sign_count += 1
        auth_data = (
            hashlib.sha256(rp_id.encode()).digest()
            + bytes([self._flags()])
            + struct.pack(">I", credential.sign_count)
        )
        client_data = self._client_data("webauthn.get", challenge or options["challenge"], origin)
        signature = credential.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        return {
            "id": b64url(credential.id),
            "rawId": b64url(credential.id),
            "type": "public-key",
            "authenticatorAttachment": "platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(credential.user_handle),
            },
        }


# --- driving the portal's endpoints as passkeys.js does ---------------------------------------------------

REGISTER_OPTIONS = "/ui/account/security/passkeys/options"
REGISTER = "/ui/account/security/passkeys"
LOGIN_OPTIONS = "/login/passkey/options"
LOGIN = "/login/passkey"


async def post_json(client: Any, url: str, token: str | None, body: dict[str, Any] | None = None) -> Any:
    """POST JSON with the CSRF header (``token`` None: without it)."""
    headers = {"accept": "application/json"}
    if token is not None:
        headers["x-csrftoken"] = token
    return await client.post(url, json=body or {}, headers=headers)


async def register(client: Any, authenticator: SoftAuthenticator, token: str) -> dict[str, Any]:
    """Add a passkey through the Security widget (the client's session must be fresh); the answer's JSON."""
    options = await post_json(client, REGISTER_OPTIONS, token)
    assert options.status_code == 200, options.text
    result = await post_json(client, REGISTER, token, {"credential": authenticator.create(options.json())})
    assert result.status_code == 200, result.text
    answer: dict[str, Any] = result.json()
    return answer

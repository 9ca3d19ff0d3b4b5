"""The secret box (DESIGN §17): secrets the portal must read back (signing keys, webhook secrets, IdP client
secrets) are sealed with AES-256-GCM under a key derived from ``PORTAL_SECRET_KEY`` by HKDF-SHA256 with a
purpose label. A sealed value names the key it was sealed with, so a new secret key can be introduced
(the old one moves to ``PORTAL_PREVIOUS_SECRET_KEYS``) and ``portal secrets rotate`` re-seals old values.

Bearer secrets the portal only compares (session tokens, API keys, SCIM tokens, client secrets) are hashed,
never sealed: see :func:`portal.core.ids.hash_secret`.

Format: ``v1.<key id>.<base64url(nonce || ciphertext+tag)>``. The purpose is bound twice: it labels the
derived key and is the AEAD's associated data, so a value sealed for one purpose never opens for another.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from portal.core.settings import Settings

VERSION = "v1"
_NONCE = 12


class SealError(ValueError):
    """A sealed value that cannot be opened: tampered, for another purpose, or sealed with an unknown key."""


def key_id(secret_key: str) -> str:
    """A short public name for a secret key (not the key, nor enough to guess it)."""
    return hashlib.sha256(b"portal key id\x00" + secret_key.encode()).hexdigest()[:12]


def _derive(secret_key: str, purpose: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"portal secret box v1", info=purpose.encode())
    return hkdf.derive(secret_key.encode())


def _keys(settings: Settings) -> dict[str, str]:
    keys = {key_id(settings.secret_key): settings.secret_key}
    for old in settings.previous_secret_keys:
        keys.setdefault(key_id(old), old)
    return keys


def seal(settings: Settings, purpose: str, plaintext: bytes) -> str:
    """Encrypt ``plaintext`` for ``purpose`` under the current secret key."""
    if not settings.secret_key:
        raise SealError("no secret key: call ensure_secret_key(settings) first")
    nonce = os.urandom(_NONCE)
    box = AESGCM(_derive(settings.secret_key, purpose))
    sealed = box.encrypt(nonce, plaintext, purpose.encode())
    body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
    return f"{VERSION}.{key_id(settings.secret_key)}.{body}"


def unseal(settings: Settings, purpose: str, token: str) -> bytes:
    """Decrypt a value sealed for ``purpose`` with the current or a previous secret key."""
    try:
        version, kid, body = token.split(".", 2)
    except ValueError:
        raise SealError("not a sealed value") from None
    if version != VERSION:
        raise SealError(f"unknown sealed-value version {version!r}")
    secret = _keys(settings).get(kid)
    if secret is None:
        raise SealError(
            f"sealed with key {kid}, which is neither PORTAL_SECRET_KEY nor in PORTAL_PREVIOUS_SECRET_KEYS"
        )
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:
        raise SealError("not a sealed value") from None
    try:
        return AESGCM(_derive(secret, purpose)).decrypt(raw[:_NONCE], raw[_NONCE:], purpose.encode())
    except InvalidTag:
        raise SealError("the sealed value was altered or belongs to another purpose") from None


def needs_reseal(settings: Settings, token: str) -> bool:
    """True when ``token`` was sealed with a key other than the current one."""
    parts = token.split(".", 2)
    return len(parts) != 3 or parts[1] != key_id(settings.secret_key)


def reseal(settings: Settings, purpose: str, token: str) -> str:
    """``token`` sealed again under the current key (unchanged when it already is)."""
    if not needs_reseal(settings, token):
        return token
    return seal(settings, purpose, unseal(settings, purpose, token))


async def reseal_all(settings: Settings) -> dict[str, int]:
    """Re-seal every sealed column (``portal.core.tables.SEALED_COLUMNS``) under the current secret key, one
    transaction per table; returns how many values were re-sealed per ``table.column``."""
    from portal.core.tables import SEALED_COLUMNS

    counts: dict[str, int] = {}
    for table, column, purpose in SEALED_COLUMNS:
        name = f"{table._meta.tablename}.{column}"
        counts[name] = 0
        async with table._meta.db.transaction():
            rows = await table.select(table._meta.primary_key, getattr(table, column))
            for row in rows:
                value = row[column]
                if value and needs_reseal(settings, value):
                    await table.update({getattr(table, column): reseal(settings, purpose, value)}).where(
                        table._meta.primary_key == row[table._meta.primary_key._meta.name]
                    )
                    counts[name] += 1
    return counts

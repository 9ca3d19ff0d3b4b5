"""The provider's signing keys (DESIGN §12, §17): one ES256 and one RS256 key sign at a time; retired keys
stay in the JWKS until every token they signed has expired. Private JWKs are sealed at rest."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey, import_key

from portal.core import clock, crypto
from portal.core.settings import Settings
from portal.core.tables import OidcKey

ALGS = ("ES256", "RS256")
PURPOSE = "oidc-signing-key"
Key = ECKey | RSAKey

#: Parsed private keys by (kid, sealed value): unsealing and parsing once per key, not per token.
_PARSED: dict[tuple[str, str], Key] = {}


def _generate(alg: str) -> Key:
    if alg == "ES256":
        return ECKey.generate_key("P-256", auto_kid=True)
    return RSAKey.generate_key(2048, auto_kid=True)


def published_after(settings: Settings, now: datetime) -> datetime:
    """A key retired before this instant has no unexpired token left: it leaves the JWKS."""
    return now - timedelta(seconds=max(settings.oidc_access_token_ttl, settings.oidc_id_token_ttl))


async def add_key(settings: Settings, alg: str) -> OidcKey:
    """Generate a key for ``alg``, store it sealed and make it the signer; the previous signer retires."""
    key = _generate(alg)
    now = clock.utcnow()
    await OidcKey.update({OidcKey.retired_at: now}).where((OidcKey.alg == alg) & OidcKey.retired_at.is_null())
    public = {**key.as_dict(private=False), "alg": alg, "use": "sig"}
    private = json.dumps(key.as_dict(private=True)).encode()
    row = OidcKey(
        id=key.kid,
        alg=alg,
        public_jwk=json.dumps(public),
        private_jwk=crypto.seal(settings, PURPOSE, private),
        created_at=now,
    )
    await row.save()
    return row


async def rotate(settings: Settings) -> list[str]:
    """``portal keys rotate``: a new key for every alg; returns the new kids."""
    return [(await add_key(settings, alg)).id for alg in ALGS]


async def signing_key(settings: Settings, alg: str) -> Key:
    """The key that signs for ``alg`` now (created on first use)."""
    rows = (
        await OidcKey.select(OidcKey.id, OidcKey.private_jwk)
        .where((OidcKey.alg == alg) & OidcKey.retired_at.is_null())
        .order_by(OidcKey.created_at, ascending=False)
        .limit(1)
    )
    if not rows:
        row = await add_key(settings, alg)
        rows = [{"id": row.id, "private_jwk": row.private_jwk}]
    kid, sealed = rows[0]["id"], rows[0]["private_jwk"]
    parsed = _PARSED.get((kid, sealed))
    if parsed is None:
        data = json.loads(crypto.unseal(settings, PURPOSE, sealed))
        imported = import_key(data)
        assert isinstance(imported, ECKey | RSAKey)
        parsed = imported
        if len(_PARSED) > 64:
            _PARSED.clear()
        _PARSED[(kid, sealed)] = parsed
    return parsed


async def public_jwks(settings: Settings) -> dict[str, Any]:
    """The JWKS document: signers and retired keys whose tokens may still be unexpired."""
    cutoff = published_after(settings, clock.utcnow())
    signers = await OidcKey.select(OidcKey.alg).where(OidcKey.retired_at.is_null())
    for alg in set(ALGS) - {row["alg"] for row in signers}:
        await add_key(settings, alg)  # a fresh install publishes its keys before the first token
    rows = (
        await OidcKey.select(OidcKey.public_jwk)
        .where(OidcKey.retired_at.is_null() | (OidcKey.retired_at > cutoff))
        .order_by(OidcKey.created_at, ascending=False)
    )
    return {"keys": [json.loads(row["public_jwk"]) for row in rows]}


#: The published keys as parsed for verification, and when they were read (monotonic seconds).
_VERIFY: dict[str, tuple[float, KeySet, frozenset[str]]] = {}
VERIFY_CACHE_SECONDS = 10.0


async def verification_keys(settings: Settings, kid: str | None = None) -> KeySet:
    """The published keys as a joserfc KeySet (to verify our own tokens: id_token_hint, access tokens).
    Read at most every few seconds; a ``kid`` not among them (a key just added) reads them again."""
    cached = _VERIFY.get(settings.database_url)
    now = time.monotonic()
    if cached is not None and now - cached[0] < VERIFY_CACHE_SECONDS and (kid is None or kid in cached[2]):
        return cached[1]
    document = await public_jwks(settings)
    key_set = KeySet.import_key_set(document)  # type: ignore[arg-type]
    _VERIFY[settings.database_url] = (now, key_set, frozenset(k["kid"] for k in document["keys"]))
    return key_set

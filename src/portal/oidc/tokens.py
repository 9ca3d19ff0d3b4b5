"""Codes, ID tokens, access tokens (RFC 9068) and refresh tokens (rotated, reuse revokes the family)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError

from policy import Permission, PolicyEngine
from portal.auth import sessions
from portal.core import clock, db
from portal.core.ids import hash_secret, new_secret
from portal.core.settings import Settings
from portal.core.tables import Membership, OidcGrant, OidcRefreshToken, Organization, Session, User
from portal.oidc import keys
from portal.oidc.clients import Client

CODE_TTL = timedelta(seconds=60)
SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
#: RFC 8176 method references for the portal's sign-in methods.
AMR = {"email_code": ["otp"], "invitation": ["otp"], "passkey": ["hwk", "user"]}


class TokenError(Exception):
    """An RFC 6749 §5.2 error: ``error`` code and a description for the client."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def issuer(settings: Settings) -> str:
    """The issuer: ``PORTAL_PUBLIC_URL`` without a trailing slash."""
    return settings.public_url.rstrip("/")


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a verifier."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def create_code(
    client: Client,
    *,
    session: dict[str, Any],
    organization_id: str | None,
    scope: str,
    nonce: str | None,
    redirect_uri: str,
    code_challenge: str | None,
) -> str:
    """A single-use authorization code (60 s) for this session; only its hash is stored."""
    code = new_secret("code")
    now = clock.utcnow()
    await OidcGrant(
        client=client.id,
        user=session["user"],
        session_id=session["id"],
        organization_id=organization_id,
        scope=scope,
        nonce=nonce,
        redirect_uri=redirect_uri,
        code_challenge=code_challenge,
        code_hash=hash_secret(code),
        code_expires_at=now + CODE_TTL,
        auth_time=session["authenticated_at"],
        amr=AMR.get(session["auth_method"], [session["auth_method"]]),
        created_at=now,
    ).save()
    return code


@dataclass(frozen=True, slots=True)
class Identity:
    """What the tokens say about the user, read fresh at every issue."""

    user: dict[str, Any]
    organization_id: str | None
    roles: list[str]
    permissions: list[str]


def _display_name(user: dict[str, Any]) -> str:
    full = " ".join(p for p in (user["given_name"], user["family_name"]) if p)
    return str(user["display_name"] or full or user["email"])


async def identity(policy: PolicyEngine, user_id: str, organization_id: str | None) -> Identity | None:
    """The user with their roles and the permissions the policy engine grants in the organization."""
    user = await User.select().where(User.id == user_id).first()
    if user is None:
        return None
    roles: list[str] = []
    permissions: list[str] = []
    if organization_id:
        membership = (
            await Membership.select(Membership.roles, Membership.organization.features.as_alias("features"))
            .where(
                (Membership.user == user_id)
                & (Membership.organization == organization_id)
                & (Membership.status == "active")
            )
            .first()
        )
        if membership is None:
            organization_id = None
        else:
            roles = list(db.json_value(membership["roles"]) or [])
            features = list(db.json_value(membership["features"]) or [])
            permissions = [p.value for p in Permission if policy.decide(roles, features, p)]
    return Identity(user, organization_id, roles, permissions)


def _sign(settings: Settings, key: keys.Key, alg: str, claims: dict[str, Any], typ: str) -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": typ}, claims, key)


async def _issue(
    settings: Settings,
    policy: PolicyEngine,
    client: Client,
    grant: dict[str, Any],
    *,
    with_nonce: bool,
) -> dict[str, Any]:
    """ID token, access token and a new refresh token for ``grant``."""
    who = await identity(policy, grant["user"], grant["organization_id"])
    if who is None:
        raise TokenError("invalid_grant", "the user no longer exists")
    now = clock.utcnow()
    iat = int(now.timestamp())
    user = who.user
    common = {
        "iss": issuer(settings),
        "sub": user["id"],
        "sid": grant["session_id"],
        "auth_time": int(grant["auth_time"].timestamp()),
        "amr": list(db.json_value(grant["amr"]) or []),
        "org_id": who.organization_id,
        "org_roles": who.roles,
        "permissions": who.permissions,
        "iat": iat,
    }
    scopes = set(grant["scope"].split())
    id_claims: dict[str, Any] = {
        **common,
        "aud": client.id,
        "azp": client.id,
        "exp": iat + settings.oidc_id_token_ttl,
    }
    if "email" in scopes:
        id_claims |= {"email": user["email"], "email_verified": bool(user["email_verified"])}
    if "profile" in scopes:
        id_claims |= {"name": _display_name(user)}
    if with_nonce and grant["nonce"]:
        id_claims["nonce"] = grant["nonce"]
    access_claims = {
        **common,
        "aud": client.id,
        "client_id": client.id,
        "scope": grant["scope"],
        "exp": iat + settings.oidc_access_token_ttl,
        # The grant id is in the jti so revocation and userinfo can find the grant; opaque to the app.
        "jti": f"{grant['id']}.{secrets.token_urlsafe(8)}",
    }
    key = await keys.signing_key(settings, client.signing_alg)
    refresh = new_secret("refresh")
    await OidcRefreshToken(
        grant=grant["id"],
        token_hash=hash_secret(refresh),
        created_at=now,
        expires_at=now + timedelta(seconds=settings.oidc_refresh_token_ttl),
    ).save()
    return {
        "access_token": _sign(settings, key, client.signing_alg, access_claims, "at+jwt"),
        "token_type": "Bearer",
        "expires_in": settings.oidc_access_token_ttl,
        "id_token": _sign(settings, key, client.signing_alg, id_claims, "JWT"),
        "refresh_token": refresh,
        "scope": grant["scope"],
    }


async def revoke_grant(grant_id: str) -> None:
    """Revoke a grant and every refresh token of its family."""
    now = clock.utcnow()
    await OidcGrant.update({OidcGrant.revoked_at: now}).where(
        (OidcGrant.id == grant_id) & OidcGrant.revoked_at.is_null()
    )
    await OidcRefreshToken.update({OidcRefreshToken.used_at: now}).where(
        (OidcRefreshToken.grant == grant_id) & OidcRefreshToken.used_at.is_null()
    )


async def _session_alive(settings: Settings, session_id: str) -> bool:
    """The portal session the grant belongs to is still live (tokens die with it)."""
    row = (
        await Session.select(
            Session.revoked_at,
            Session.created_at,
            Session.last_seen_at,
            Session.active_organization.session_policy_source.as_alias("session_policy_source"),
            Session.active_organization.session_absolute_timeout.as_alias("session_absolute_timeout"),
            Session.active_organization.session_idle_timeout.as_alias("session_idle_timeout"),
        )
        .where(Session.id == session_id)
        .first()
    )
    if row is None or row["revoked_at"] is not None:
        return False
    timeouts = sessions.effective_timeouts(settings, row)
    return sessions.expiry_reason(row, timeouts, clock.utcnow()) is None


async def exchange_code(
    settings: Settings,
    policy: PolicyEngine,
    client: Client,
    *,
    code: str,
    redirect_uri: str | None,
    code_verifier: str | None,
) -> dict[str, Any]:
    """authorization_code grant: single use, 60 s, bound to client, redirect URI and PKCE."""
    if not code:
        raise TokenError("invalid_request", "code is required")
    grant = await OidcGrant.select().where(OidcGrant.code_hash == hash_secret(code)).first()
    if grant is None or grant["client"] != client.id:
        raise TokenError("invalid_grant", "the authorization code is invalid")
    now = clock.utcnow()
    used = (
        await OidcGrant.update({OidcGrant.code_used_at: now})
        .where((OidcGrant.id == grant["id"]) & OidcGrant.code_used_at.is_null())
        .returning(OidcGrant.id)
    )
    if not used:
        # A replayed code: whatever it issued is revoked (RFC 6749 §4.1.2).
        await revoke_grant(grant["id"])
        raise TokenError("invalid_grant", "the authorization code has already been used")
    if grant["revoked_at"] is not None:
        raise TokenError("invalid_grant", "the authorization code is invalid")
    if now >= grant["code_expires_at"]:
        raise TokenError("invalid_grant", "the authorization code has expired")
    if redirect_uri != grant["redirect_uri"]:
        raise TokenError("invalid_grant", "redirect_uri does not match the authorization request")
    challenge = grant["code_challenge"]
    if challenge:
        if not code_verifier:
            raise TokenError("invalid_grant", "code_verifier is required (PKCE)")
        if not hmac.compare_digest(s256(code_verifier), challenge):
            raise TokenError("invalid_grant", "code_verifier does not match the code challenge (PKCE)")
    elif code_verifier:
        raise TokenError(
            "invalid_grant", "code_verifier given but the authorization request had no challenge"
        )
    if not await _session_alive(settings, grant["session_id"]):
        await revoke_grant(grant["id"])
        raise TokenError("invalid_grant", "the portal session has ended")
    return await _issue(settings, policy, client, grant, with_nonce=True)


async def refresh(settings: Settings, policy: PolicyEngine, client: Client, *, token: str) -> dict[str, Any]:
    """refresh_token grant: rotated on use; a rotated token used again revokes the whole family."""
    if not token:
        raise TokenError("invalid_request", "refresh_token is required")
    row = (
        await OidcRefreshToken.select(
            OidcRefreshToken.id,
            OidcRefreshToken.expires_at,
            OidcRefreshToken.grant,
            OidcRefreshToken.grant.client.as_alias("client"),
        )
        .where(OidcRefreshToken.token_hash == hash_secret(token))
        .first()
    )
    if row is None or row["client"] != client.id:
        raise TokenError("invalid_grant", "the refresh token is invalid")
    now = clock.utcnow()
    used = (
        await OidcRefreshToken.update({OidcRefreshToken.used_at: now})
        .where((OidcRefreshToken.id == row["id"]) & OidcRefreshToken.used_at.is_null())
        .returning(OidcRefreshToken.id)
    )
    if not used:
        await revoke_grant(row["grant"])
        raise TokenError("invalid_grant", "the refresh token was already used; the token family is revoked")
    grant = await OidcGrant.select().where(OidcGrant.id == row["grant"]).first()
    if grant is None or grant["revoked_at"] is not None:
        raise TokenError("invalid_grant", "the refresh token has been revoked")
    if now >= row["expires_at"]:
        raise TokenError("invalid_grant", "the refresh token has expired")
    if not await _session_alive(settings, grant["session_id"]):
        await revoke_grant(grant["id"])
        raise TokenError("invalid_grant", "the portal session has ended")
    return await _issue(settings, policy, client, grant, with_nonce=False)


async def verify_access_token(settings: Settings, token: str) -> dict[str, Any] | None:
    """The claims of a valid, unexpired access token whose grant and session are live; else None."""
    try:
        key_set = await keys.verification_keys(settings, _kid(token))
        decoded = jwt.decode(token, key_set, algorithms=list(keys.ALGS))
    except (JoseError, ValueError):
        return None
    if decoded.header.get("typ") != "at+jwt":
        return None
    claims = dict(decoded.claims)
    now = clock.utcnow().timestamp()
    if (
        claims.get("iss") != issuer(settings)
        or not isinstance(claims.get("exp"), int)
        or claims["exp"] <= now
    ):
        return None
    grant_id = str(claims.get("jti", "")).split(".", 1)[0]
    grant = (
        await OidcGrant.select(OidcGrant.revoked_at, OidcGrant.session_id)
        .where(OidcGrant.id == grant_id)
        .first()
    )
    if (
        grant is None
        or grant["revoked_at"] is not None
        or not await _session_alive(settings, grant["session_id"])
    ):
        return None
    return claims


def _kid(token: str) -> str | None:
    """The ``kid`` of a compact JWS header, unverified (only to pick the key set)."""
    try:
        header = json.loads(base64.urlsafe_b64decode(token.split(".", 1)[0] + "=="))
    except (ValueError, UnicodeDecodeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


async def own_keys(settings: Settings, token: str) -> Any:
    """The key set to verify ``token`` (one of ours) with."""
    return await keys.verification_keys(settings, _kid(token))


def decode_own(token: str, key_set: Any) -> dict[str, Any] | None:
    """The claims of a token we signed (signature only: an expired ID token is still a fine hint)."""
    try:
        return dict(jwt.decode(token, key_set, algorithms=list(keys.ALGS)).claims)
    except (JoseError, ValueError):
        return None


async def revoke_token(settings: Settings, client: Client, token: str) -> None:
    """RFC 7009: a refresh token (its family), or an access token (its grant), of this client; else nothing."""
    row = (
        await OidcRefreshToken.select(
            OidcRefreshToken.grant, OidcRefreshToken.grant.client.as_alias("client")
        )
        .where(OidcRefreshToken.token_hash == hash_secret(token))
        .first()
    )
    if row is not None:
        if row["client"] == client.id:
            await revoke_grant(row["grant"])
        return
    claims = decode_own(token, await own_keys(settings, token))
    if claims is not None and claims.get("client_id") == client.id and claims.get("jti"):
        await revoke_grant(str(claims["jti"]).split(".", 1)[0])


async def organization_ref(value: str) -> dict[str, Any] | None:
    """The organization named by id or by the app's external id."""
    return (
        await Organization.select(Organization.id, Organization.name)
        .where((Organization.id == value) | (Organization.external_id == value))
        .first()
    )

"""OpenID Connect relying party for an organization's IdP (DESIGN §15): discovery, code + PKCE + nonce + state,
and the ID token verified against the IdP's JWKS with joserfc.

Every request to the IdP goes through :mod:`portal.core.outbound` (the SSRF rule): discovery, the token
endpoint and the JWKS. ``http://`` issuers are accepted only where private addresses are allowed (tests,
labs); a real IdP is reached over https.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import DecodeError, JoseError
from joserfc.jwk import KeySet

from portal.core import outbound
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.sso.problems import SsoProblem

#: What we ask for: the claims the attribute mapping reads.
SCOPES = "openid email profile"
#: ID token algorithms accepted (asymmetric only: an HS256 token would be keyed with the client secret).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
MAX_DOCUMENT = 256 * 1024


@dataclass(frozen=True, slots=True)
class Provider:
    """The parts of the IdP's discovery document we use."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""


def redirect_uri(settings: Settings, connection_id: str) -> str:
    """Where the IdP sends the browser back: register it in the IdP."""
    return f"{settings.origin}/sso/oidc/{connection_id}/callback"


def normalize_issuer(settings: Settings, issuer: str, *, field: str = "oidc_issuer") -> str:
    """The issuer URL without a trailing slash; InvalidInput naming ``field`` if it is not a URL we may use."""
    value = issuer.strip().rstrip("/")
    if not value:
        raise InvalidInput(field, "Enter the issuer URL.")
    if len(value) > 2000:
        raise InvalidInput(field, "The issuer URL is longer than 2000 characters.")
    outbound.parse_url(value, field=field, allow_http=settings.sso_allow_private_addresses)
    return value


async def _get_json(settings: Settings, url: str, what: str, code: str) -> dict[str, Any]:
    try:
        response = await outbound.request(
            "GET",
            url,
            allow_private=settings.sso_allow_private_addresses,
            allow_http=settings.sso_allow_private_addresses,
            headers={"accept": "application/json"},
            max_bytes=MAX_DOCUMENT,
        )
    except InvalidInput as exc:
        raise SsoProblem("ssrf", f"The {what} URL is refused: {exc.message}") from None
    except (httpx.HTTPError, outbound.ResponseTooLarge) as exc:
        raise SsoProblem(code, f"The {what} could not be fetched from {url} ({exc}).") from None
    if response.status_code != 200:
        raise SsoProblem(code, f"The {what} at {url} answered HTTP {response.status_code}.")
    try:
        document = json.loads(response.content)
    except ValueError:
        raise SsoProblem(code, f"The {what} at {url} is not JSON.") from None
    if not isinstance(document, dict):
        raise SsoProblem(code, f"The {what} at {url} is not a JSON object.")
    return document


async def discover(settings: Settings, issuer: str) -> Provider:
    """Fetch ``<issuer>/.well-known/openid-configuration``; its ``issuer`` must be the one configured."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    document = await _get_json(settings, url, "discovery document", "oidc_discovery")
    if str(document.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise SsoProblem(
            "oidc_discovery",
            f"The discovery document names the issuer {document.get('issuer')!r}, not {issuer!r}.",
        )
    fields = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str) or not value:
            raise SsoProblem("oidc_discovery", f"The discovery document has no {name}.")
        fields[name] = value
    userinfo = document.get("userinfo_endpoint")
    return Provider(
        issuer=str(document["issuer"]),
        userinfo_endpoint=userinfo if isinstance(userinfo, str) else "",
        **fields,
    )


def new_pkce() -> tuple[str, str]:
    """(code verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorization_url(
    provider: Provider, *, client_id: str, redirect: str, state: str, nonce: str, challenge: str
) -> str:
    """The IdP's authorization endpoint with our request (response_type=code, PKCE S256)."""
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect,
            "scope": SCOPES,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    separator = "&" if "?" in provider.authorization_endpoint else "?"
    return provider.authorization_endpoint + separator + query


async def exchange_code(
    settings: Settings,
    provider: Provider,
    *,
    client_id: str,
    client_secret: str,
    code: str,
    redirect: str,
    code_verifier: str,
) -> dict[str, Any]:
    """POST the code to the token endpoint (client_secret_basic); the token response."""
    basic = base64.b64encode(f"{_form(client_id)}:{_form(client_secret)}".encode()).decode()
    body = urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "code_verifier": code_verifier,
        }
    ).encode()
    try:
        response = await outbound.request(
            "POST",
            provider.token_endpoint,
            allow_private=settings.sso_allow_private_addresses,
            allow_http=settings.sso_allow_private_addresses,
            headers={
                "authorization": f"Basic {basic}",
                "content-type": "application/x-www-form-urlencoded",
                "accept": "application/json",
            },
            content=body,
            max_bytes=MAX_DOCUMENT,
        )
    except InvalidInput as exc:
        raise SsoProblem("ssrf", f"The token endpoint is refused: {exc.message}") from None
    except (httpx.HTTPError, outbound.ResponseTooLarge) as exc:
        raise SsoProblem("oidc_token", f"The token endpoint could not be reached ({exc}).") from None
    try:
        document = json.loads(response.content)
    except ValueError:
        document = {}
    if response.status_code != 200 or not isinstance(document, dict):
        error = document.get("error", "") if isinstance(document, dict) else ""
        raise SsoProblem(
            "oidc_token",
            f"The token endpoint refused the code (HTTP {response.status_code} {error}).".strip(),
        )
    if not isinstance(document.get("id_token"), str):
        raise SsoProblem("oidc_id_token", "The token response holds no ID token.")
    return document


def _form(value: str) -> str:
    # RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding.
    from urllib.parse import quote

    return quote(value, safe="")


def verify_id_token(
    id_token: str,
    keys: dict[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    skew: int,
    now: int | None = None,
) -> dict[str, Any]:
    """The ID token's claims after checking signature (JWKS), ``iss``, ``aud``, ``azp``, ``exp``, ``iat``,
    ``nonce``; SsoProblem naming what failed."""
    try:
        key_set = KeySet.import_key_set(keys)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise SsoProblem("oidc_id_token", f"The IdP's JWKS is unusable ({exc}).") from None
    try:
        token = jwt.decode(id_token, key_set, algorithms=list(ALGORITHMS))
    except DecodeError:
        raise SsoProblem("oidc_id_token", "The ID token is not a well-formed JWT.") from None
    except JoseError as exc:
        raise SsoProblem(
            "oidc_signature", f"The ID token's signature does not verify with the IdP's keys ({exc.error})."
        ) from None
    except ValueError as exc:
        raise SsoProblem("oidc_id_token", f"The ID token is malformed ({exc}).") from None
    claims: dict[str, Any] = dict(token.claims)
    moment = int(time.time()) if now is None else now
    if str(claims.get("iss", "")).rstrip("/") != issuer.rstrip("/"):
        raise SsoProblem("oidc_issuer", f"The ID token was issued by {claims.get('iss')!r}, not {issuer!r}.")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise SsoProblem("oidc_audience", f"The ID token is for {audience!r}, not for client {client_id!r}.")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise SsoProblem("oidc_audience", "The ID token has several audiences and another authorized party.")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or moment - skew >= exp:
        raise SsoProblem("expired", "The ID token has expired (or carries no expiry).")
    if isinstance(iat, int | float) and iat > moment + skew:
        raise SsoProblem("not_yet_valid", "The ID token was issued in the future.")
    if not nonce or claims.get("nonce") != nonce:
        raise SsoProblem(
            "oidc_nonce", "The ID token's nonce does not match the sign-in this browser started."
        )
    return claims


async def fetch_userinfo(settings: Settings, provider: Provider, access_token: str) -> dict[str, Any]:
    """The userinfo endpoint's claims (read when the ID token carries no email)."""
    try:
        response = await outbound.request(
            "GET",
            provider.userinfo_endpoint,
            allow_private=settings.sso_allow_private_addresses,
            allow_http=settings.sso_allow_private_addresses,
            headers={"authorization": f"Bearer {access_token}", "accept": "application/json"},
            max_bytes=MAX_DOCUMENT,
        )
    except InvalidInput as exc:
        raise SsoProblem("ssrf", f"The userinfo endpoint is refused: {exc.message}") from None
    except (httpx.HTTPError, outbound.ResponseTooLarge) as exc:
        raise SsoProblem("oidc_token", f"The userinfo endpoint could not be reached ({exc}).") from None
    try:
        document = json.loads(response.content)
    except ValueError:
        document = None
    if response.status_code != 200 or not isinstance(document, dict):
        raise SsoProblem("oidc_token", f"The userinfo endpoint answered HTTP {response.status_code}.")
    return document


async def fetch_jwks(settings: Settings, provider: Provider) -> dict[str, Any]:
    return await _get_json(settings, provider.jwks_uri, "JWKS", "oidc_discovery")


def claims_as_attributes(claims: dict[str, Any]) -> dict[str, list[str]]:
    """Claims in the attribute shape the mapping reads (each a list of strings); JWT bookkeeping left out."""
    skip = {"iss", "aud", "exp", "iat", "nbf", "nonce", "azp", "at_hash", "c_hash", "auth_time", "jti", "sid"}
    attributes: dict[str, list[str]] = {}
    for name, value in claims.items():
        if name in skip:
            continue
        values = value if isinstance(value, list) else [value]
        attributes[name] = [v if isinstance(v, str) else json.dumps(v) for v in values if v is not None]
    return attributes

"""Registered apps (relying parties): exact redirect URIs, hashed secrets shown once, public clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from portal.core import db
from portal.core.errors import InvalidInput
from portal.core.ids import hash_secret, new_secret, same_secret
from portal.core.tables import OidcClient

SECRET_PREFIX = "client_secret"  # noqa: S105 (a prefix, not a secret)


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client as the provider reads it."""

    id: str
    name: str
    public: bool
    secret_hash: str | None
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    backchannel_logout_uri: str | None
    signing_alg: str

    @classmethod
    def of(cls, row: dict[str, Any]) -> Client:
        return cls(
            id=row["id"],
            name=row["name"],
            public=bool(row["public"]),
            secret_hash=row["secret_hash"],
            redirect_uris=tuple(db.json_value(row["redirect_uris"]) or ()),
            post_logout_redirect_uris=tuple(db.json_value(row["post_logout_redirect_uris"]) or ()),
            backchannel_logout_uri=row["backchannel_logout_uri"],
            signing_alg=row["signing_alg"],
        )


def _check_uri(uri: str, what: str) -> str:
    parts = urlsplit(uri)
    loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
    if parts.scheme not in {"https", "http"} or not parts.hostname or parts.fragment:
        raise InvalidInput(what, f"{uri!r} must be an absolute http(s) URL without a fragment")
    if parts.scheme == "http" and not loopback:
        raise InvalidInput(what, f"{uri!r} must use https (http only for localhost)")
    return uri


async def create(
    name: str,
    *,
    redirect_uris: list[str],
    post_logout_redirect_uris: list[str] | None = None,
    backchannel_logout_uri: str | None = None,
    public: bool = False,
    signing_alg: str = "ES256",
) -> tuple[Client, str | None]:
    """Register a client; returns it and its secret (None for public clients), which is never shown again."""
    if not name.strip():
        raise InvalidInput("name", "the client needs a name")
    if not redirect_uris:
        raise InvalidInput("redirect_uri", "a client needs at least one")
    if signing_alg not in {"ES256", "RS256"}:
        raise InvalidInput("signing_alg", "must be ES256 or RS256")
    redirects = [_check_uri(uri, "redirect URI") for uri in redirect_uris]
    post_logout = [_check_uri(uri, "post-logout redirect URI") for uri in post_logout_redirect_uris or []]
    backchannel = (
        _check_uri(backchannel_logout_uri, "back-channel logout URI") if backchannel_logout_uri else None
    )
    secret = None if public else new_secret(SECRET_PREFIX)
    row = OidcClient(
        name=name.strip(),
        public=public,
        secret_hash=hash_secret(secret) if secret else None,
        redirect_uris=redirects,
        post_logout_redirect_uris=post_logout,
        backchannel_logout_uri=backchannel,
        signing_alg=signing_alg,
    )
    await row.save()
    client = await get(row.id)
    assert client is not None
    return client, secret


async def get(client_id: str) -> Client | None:
    """The client, or None for an unknown id."""
    if not client_id or len(client_id) > 60:
        return None
    row = await OidcClient.select().where(OidcClient.id == client_id).first()
    return Client.of(row) if row else None


async def list_all() -> list[Client]:
    """Every registered client, oldest first."""
    return [Client.of(row) for row in await OidcClient.select().order_by(OidcClient.created_at)]


async def delete(client_id: str) -> bool:
    """Delete a client (its grants and tokens go with it); False when unknown."""
    deleted = await OidcClient.delete().where(OidcClient.id == client_id).returning(OidcClient.id)
    return bool(deleted)


async def rotate_secret(client_id: str) -> str:
    """A new secret for a confidential client; the old one stops working at once."""
    client = await get(client_id)
    if client is None:
        raise InvalidInput("client_id", f"no client {client_id!r}")
    if client.public:
        raise InvalidInput("client_id", f"{client_id} is a public client: it has no secret")
    secret = new_secret(SECRET_PREFIX)
    await OidcClient.update({OidcClient.secret_hash: hash_secret(secret)}).where(OidcClient.id == client_id)
    return secret


def secret_matches(client: Client, secret: str | None) -> bool:
    """Constant-time check of a presented client secret."""
    if client.public or client.secret_hash is None or not secret:
        return False
    return same_secret(secret, client.secret_hash)

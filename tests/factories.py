"""Test factories: organizations, users and memberships through the same code paths as the CLI, plus
signing a test client in and reading a page's CSRF token.

Use them with the ``db`` fixture (directly or through ``client``), which empties every table afterwards.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Sequence
from typing import Any

import httpx

from policy import Feature
from portal.auth import accounts, sessions
from portal.core.settings import Settings

_counter = itertools.count(1)


def _unique() -> str:
    return f"{next(_counter)}{secrets.token_hex(3)}"


async def make_org(
    name: str | None = None,
    display_name: str | None = None,
    *,
    features: Sequence[str | Feature] = (),
    external_id: str | None = None,
) -> dict[str, Any]:
    """An organization (unique name unless given) with ``features`` enabled."""
    name = name or f"org-{_unique()}"
    return await accounts.create_organization(
        name,
        display_name or name.replace("-", " ").title(),
        features=[str(f) for f in features],
        external_id=external_id,
    )


async def make_user(
    email: str | None = None,
    *,
    given_name: str = "",
    family_name: str = "",
    verified: bool = True,
) -> dict[str, Any]:
    """A user (unique ``user-…@example.test`` address unless given)."""
    return await accounts.create_user(
        email or f"user-{_unique()}@example.test",
        given_name=given_name,
        family_name=family_name,
        verified=verified,
    )


async def make_member(
    org: dict[str, Any],
    user: dict[str, Any] | None = None,
    roles: Sequence[str] = ("member",),
    *,
    source: str = "portal",
) -> dict[str, Any]:
    """An active membership of ``user`` (a new user if None) in ``org`` with ``roles``.

    Roles are not checked against the policy files, so a test can also give a role the policy does not
    define (which grants nothing).
    """
    user = user or await make_user()
    return await accounts.add_member(org["id"], user["id"], list(roles), known_roles=roles, source=source)


def _settings_of(client: httpx.AsyncClient) -> Settings:
    # The `client` fixture talks to the app in-process through an ASGITransport.
    app = getattr(client._transport, "app", None)
    settings = getattr(getattr(app, "state", None), "settings", None)
    if not isinstance(settings, Settings):
        raise TypeError("sign_in needs a client built on an ASGITransport around the portal app")
    return settings


async def sign_in(
    client: httpx.AsyncClient, user: dict[str, Any] | str, organization: dict[str, Any] | str | None = None
) -> None:
    """Start a session for ``user`` (active organization ``organization``) and give the client its cookie."""
    user_id = user if isinstance(user, str) else user["id"]
    org_id = organization if isinstance(organization, str) or organization is None else organization["id"]
    token, _session_id = await sessions.create_session(user_id, auth_method="test", organization_id=org_id)
    client.cookies.set(sessions.cookie_name(_settings_of(client)), token)


_CSRF_INPUT = re.compile(r'<input type="hidden" name="_csrf_token" value="([^"]+)"')


async def csrf_token(client: httpx.AsyncClient, path: str) -> str:
    """GET ``path`` as a browser and return the hidden ``_csrf_token`` of its first form.

    The GET also sets the CSRF cookie on the client (if it had none), which the token must match.
    """
    response = await client.get(path, headers={"accept": "text/html"})
    assert response.status_code == 200, f"GET {path} answered {response.status_code}"
    match = _CSRF_INPUT.search(response.text)
    assert match, f"no _csrf_token input on {path}"
    return match.group(1)


# --- members widget: invitations ------------------------------------------------------------------------


async def make_invitation(
    org: dict[str, Any],
    email: str | None = None,
    roles: Sequence[str] = ("member",),
    *,
    invited_by: dict[str, Any] | None = None,
    expires_in_seconds: int = 7 * 86400,
) -> tuple[str, str]:
    """A pending invitation to ``org``; returns (invitation id, the link's token). Only the hash is stored."""
    from datetime import timedelta

    from portal.core import clock, ids
    from portal.core.tables import Invitation

    token = ids.new_secret("inv")
    invitation = Invitation(
        organization=org["id"],
        email=(email or f"invitee-{_unique()}@example.test").lower(),
        roles=list(roles),
        token_hash=ids.hash_secret(token),
        invited_by=invited_by["id"] if invited_by else None,
        expires_at=clock.utcnow() + timedelta(seconds=expires_in_seconds),
    )
    await invitation.save()
    return invitation.id, token


# --- issue 14: setup links --------------------------------------------------------------------------------


async def sign_in_link(
    client: httpx.AsyncClient, organization: dict[str, Any] | str, intent: str = "domain_verification"
) -> str:
    """Open a new setup link for ``organization`` and ``intent`` (as ``/setup/<token>`` would) and give the
    client its session cookie: the hostile matrix's setup-link principal. Returns the link's id."""
    from portal.links import service

    settings = _settings_of(client)
    org_id = organization if isinstance(organization, str) else organization["id"]
    created = await service.create_link(settings, org_id, intent)
    token, link = await service.open_link(settings, created.url.rsplit("/", 1)[1])
    client.cookies.set(service.cookie_name(settings), token)
    return str(link["id"])

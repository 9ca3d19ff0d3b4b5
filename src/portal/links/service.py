"""Setup links: create, list, revoke, open; and the sessions they start.

The management API's route and the ``portal link`` commands both call :func:`create_link` and
:func:`revoke_link`. A link's token and its session's cookie exist in clear only in the URL and the browser;
the table keeps their SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from policy import Permission
from portal.auth import accounts
from portal.core import clock
from portal.core.errors import InvalidInput
from portal.core.ids import hash_secret, new_secret
from portal.core.settings import Settings
from portal.core.tables import Organization, SetupLink

#: How audit rows written by a setup-link session name their actor (``actor_id`` is the link's id).
ACTOR_LABEL = accounts.SETUP_LINK_ACTOR
#: Shortest and longest time a link may stay openable.
MIN_TTL = 60
MAX_TTL = 7 * 86400
#: The prefix of link tokens (``portal_lnk_…``) and of the sessions they start (``portal_lns_…``).
TOKEN_PREFIX = "lnk"  # noqa: S105 - a prefix, not a secret
SESSION_PREFIX = "lns"


@dataclass(frozen=True, slots=True)
class Intent:
    """What a link is for: the one widget it opens and the permissions its session holds there."""

    key: str
    title: str
    #: The registry key of the widget it lands on (and the only one it may open).
    widget: str
    url: str
    permissions: frozenset[Permission]
    #: The organization feature the widget needs: no link is made for an organization without it.
    feature: str


INTENTS: dict[str, Intent] = {
    "sso": Intent(
        "sso",
        "Single sign-on",
        "sso",
        "/ui/organization/sso",
        frozenset({Permission.SSO_READ, Permission.SSO_MANAGE}),
        "sso",
    ),
    "scim": Intent(
        "scim",
        "SCIM provisioning",
        "scim",
        "/ui/organization/scim",
        frozenset({Permission.SCIM_READ, Permission.SCIM_MANAGE}),
        "scim",
    ),
    "domain_verification": Intent(
        "domain_verification",
        "Domain verification",
        "domains",
        "/ui/organization/domains",
        frozenset({Permission.SETTINGS_READ, Permission.SETTINGS_MANAGE}),
        "domain_verification",
    ),
}


@dataclass(frozen=True, slots=True)
class SetupGrant:
    """The principal of a setup-link session: which link, which intent (its fixed permission set)."""

    link_id: str
    intent: Intent
    expires_at: datetime

    @property
    def permissions(self) -> frozenset[Permission]:
        return self.intent.permissions

    def allows_path(self, path: str) -> bool:
        """The pages this session may ask for at all: its widget, the setup pages, sign-out, and the home (which
        sends it to its widget). Anything else is refused, naming the intent."""
        url = self.intent.url
        if path == url or path.startswith(url + "/"):
            return True
        return path in {"/ui", "/ui/", "/logout", "/brand.css"} or path.startswith(("/setup/", "/brand/"))


@dataclass(frozen=True, slots=True)
class CreatedLink:
    id: str
    url: str
    intent: str
    organization_id: str
    expires_at: datetime


class LinkProblem(Exception):
    """Why a link cannot be opened: ``unknown`` (tampered or never made), ``used``, ``expired``, ``revoked``."""

    def __init__(self, kind: str, link: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.link = link
        super().__init__(kind)


def cookie_name(settings: Settings) -> str:
    """A cookie of its own, so a setup-link session never becomes (or replaces) an account's session."""
    return "__Host-portal_setup" if settings.secure else "portal_setup"


def frameable_cookies(settings: Settings) -> bool:
    """Cookies that work in a third-party frame (``SameSite=None; Secure; Partitioned``) need a secure context:
    https, or a loopback public URL, which browsers treat as one. Only when some origin may frame the pages."""
    return bool(settings.admin_portal_frame_ancestors) and (settings.secure or settings.loopback)


def parse_intent(value: str) -> Intent:
    intent = INTENTS.get(value.strip())
    if intent is None:
        raise InvalidInput("intent", f"{value!r} is not an intent; use one of {', '.join(INTENTS)}.")
    return intent


def check_ttl(settings: Settings, ttl: int | None) -> int:
    """The link's lifetime in seconds (the configured default when None); between a minute and a week."""
    seconds = settings.admin_portal_link_ttl if ttl is None else ttl
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise InvalidInput("ttl", f"must be between 1 minute and 7 days (got {seconds} seconds).")
    return seconds


async def create_link(
    settings: Settings,
    organization_id: str,
    intent: str,
    *,
    ttl: int | None = None,
    created_by: str = "cli",
    ip: str = "",
) -> CreatedLink:
    """Make a one-time link for ``organization_id`` and ``intent``; the URL is shown once, only its hash is kept.

    Raises :class:`InvalidInput` naming ``intent``, ``ttl`` or ``organization``.
    """
    chosen = parse_intent(intent)
    seconds = check_ttl(settings, ttl)
    organization = (
        await Organization.select(Organization.features)
        .where(Organization.id == organization_id)
        .first()
        .output(load_json=True)
    )
    if organization is None:
        raise InvalidInput("organization", "No such organization.")
    if chosen.feature not in (organization["features"] or ()):
        # entitlement check: a link to a widget the organization cannot open would only show a 403.
        raise InvalidInput(
            "intent", f"{chosen.title} is not enabled for this organization (feature {chosen.feature})."
        )
    token = new_secret(TOKEN_PREFIX)
    now = clock.utcnow()
    link = SetupLink(
        organization=organization_id,
        intent=chosen.key,
        token_hash=hash_secret(token),
        created_by=created_by[:200],
        created_at=now,
        expires_at=now + timedelta(seconds=seconds),
    )
    await link.save()
    await accounts.audit(
        "setup_link.created",
        organization_id=organization_id,
        actor_id=None,
        target=link.id,
        details={"intent": chosen.key, "expires_at": link.expires_at.isoformat(), "created_by": created_by},
        ip=ip,
    )
    return CreatedLink(
        link.id, f"{settings.origin}/setup/{token}", chosen.key, organization_id, link.expires_at
    )


def status_of(link: dict[str, Any], now: datetime) -> str:
    """``pending`` (can be opened), ``expired``, ``revoked``, ``active`` (its session lives) or ``ended``."""
    if link["revoked_at"] is not None:
        return "revoked"
    if link["opened_at"] is None:
        return "pending" if now < link["expires_at"] else "expired"
    if link["session_ended_at"] is None and now < link["session_expires_at"]:
        return "active"
    return "ended"


async def list_links(organization_id: str) -> list[dict[str, Any]]:
    """The organization's links, newest first, each with its ``status`` (never a token)."""
    rows = await (
        SetupLink.select(
            SetupLink.id,
            SetupLink.intent,
            SetupLink.created_by,
            SetupLink.created_at,
            SetupLink.expires_at,
            SetupLink.opened_at,
            SetupLink.revoked_at,
            SetupLink.session_expires_at,
            SetupLink.session_ended_at,
        )
        .where(SetupLink.organization == organization_id)  # tenant check
        .order_by(SetupLink.created_at, ascending=False)
    )
    now = clock.utcnow()
    return [{**row, "status": status_of(row, now)} for row in rows]


async def revoke_link(link_id: str, *, organization_id: str | None = None, ip: str = "") -> bool:
    """Revoke a link (and end the session it opened). ``organization_id`` limits it to that organization's
    links (the API's tenant check). False when there is no such link or it was revoked already."""
    where = (SetupLink.id == link_id) & SetupLink.revoked_at.is_null()
    if organization_id is not None:
        where &= SetupLink.organization == organization_id  # tenant check
    rows = await (
        SetupLink.update({SetupLink.revoked_at: clock.utcnow()})
        .where(where)
        .returning(SetupLink.id, SetupLink.organization)
    )
    if not rows:
        return False
    await accounts.audit("setup_link.revoked", organization_id=rows[0]["organization"], target=link_id, ip=ip)
    return True


async def open_link(
    settings: Settings, token: str, *, ip: str = "", user_agent: str = ""
) -> tuple[str, dict[str, Any]]:
    """Consume the link (once, atomically) and start its session. Returns (session cookie token, link row).

    Raises :class:`LinkProblem` saying why it cannot be opened.
    """
    if not token.startswith(f"portal_{TOKEN_PREFIX}_") or len(token) > 200:
        raise LinkProblem("unknown")
    now = clock.utcnow()
    session_token = new_secret(SESSION_PREFIX)
    token_hash = hash_secret(token)
    opened = await (
        SetupLink.update(
            {
                SetupLink.opened_at: now,
                SetupLink.session_token_hash: hash_secret(session_token),
                SetupLink.session_expires_at: now + timedelta(seconds=settings.admin_portal_session_ttl),
                SetupLink.ip: ip[:45],
                SetupLink.user_agent: user_agent[:500],
            }
        )
        .where(
            (SetupLink.token_hash == token_hash)
            & SetupLink.opened_at.is_null()
            & SetupLink.revoked_at.is_null()
            & (SetupLink.expires_at > now)
        )
        .returning(*SetupLink.all_columns())
    )
    if not opened:
        row = await SetupLink.select().where(SetupLink.token_hash == token_hash).first()
        if row is None:
            raise LinkProblem("unknown")
        if row["revoked_at"] is not None:
            raise LinkProblem("revoked", row)
        if row["opened_at"] is not None:
            raise LinkProblem("used", row)
        raise LinkProblem("expired", row)
    link = cast(dict[str, Any], opened[0])
    await accounts.audit(
        "setup_link.opened",
        organization_id=link["organization"],
        actor_id=link["id"],
        target=link["id"],
        details={"intent": link["intent"]},
        ip=ip,
    )
    return session_token, link


async def resolve_session(token: str | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The live setup-link session for a cookie: (link row, organization row), or None."""
    if not token or len(token) > 200 or not token.startswith(f"portal_{SESSION_PREFIX}_"):
        return None
    link = await SetupLink.select().where(SetupLink.session_token_hash == hash_secret(token)).first()
    if link is None or status_of(link, clock.utcnow()) != "active" or link["intent"] not in INTENTS:
        return None
    organization = (
        await Organization.select()
        .where(Organization.id == link["organization"])
        .first()
        .output(load_json=True)
    )
    if organization is None:
        return None
    return link, cast(dict[str, Any], organization)


def grant_of(link: dict[str, Any]) -> SetupGrant:
    return SetupGrant(link["id"], INTENTS[link["intent"]], link["session_expires_at"])


async def end_session(link_id: str, *, ip: str = "") -> None:
    """The IT admin signed out: the session stops now (the link stays used)."""
    rows = await (
        SetupLink.update({SetupLink.session_ended_at: clock.utcnow()})
        .where((SetupLink.id == link_id) & SetupLink.session_ended_at.is_null())
        .returning(SetupLink.organization)
    )
    if rows:
        await accounts.audit(
            "setup_link.signed_out",
            organization_id=rows[0]["organization"],
            actor_id=link_id,
            target=link_id,
            ip=ip,
        )


def describe_actor(actor_id: str | None) -> str:
    """How an audit row's actor reads to people: setup-link sessions are ``IT admin via setup link``."""
    if actor_id is None:
        return "the portal"
    if actor_id.startswith("lnk_"):
        return ACTOR_LABEL
    return actor_id

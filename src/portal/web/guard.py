"""Who is asking: the session middleware, the per-request facts, and the one guard (DESIGN §2 steps 1-4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from policy import Decision, Feature, Permission, PolicyEngine
from portal.auth import sessions
from portal.core import db
from portal.core.settings import Settings
from portal.links import service as links
from portal.links.service import SetupGrant
from portal.web import branding
from portal.web.registry import Widget, WidgetRegistry

#: Paths that never need a session; skipping them saves the session query.
UNAUTHENTICATED_PREFIXES = (
    "/static/",
    "/healthz",
    "/readyz",
    "/brand/",
    "/scim/v2/",
)  # SCIM: bearer tokens (issue 13)


@dataclass(slots=True)
class Auth:
    """The facts loaded once per request: user, session, active organization, roles there, its features."""

    session: dict[str, Any]
    user: dict[str, Any]
    organization: dict[str, Any] | None
    #: None when the user is not an active member of the active organization.
    roles: tuple[str, ...] | None
    features: frozenset[str]
    #: Every organization the user is an active member of: id, name, display_name (for the switcher).
    organizations: list[dict[str, Any]] = field(default_factory=list)
    #: Issue 14: set for a setup-link session. Such a principal has no account and no roles: it holds the
    #: intent's fixed permissions in ``organization`` and may open only the intent's widget.
    link: SetupGrant | None = None

    @property
    def organization_id(self) -> str | None:
        """The active organization's id, if there is one."""
        return str(self.organization["id"]) if self.organization else None

    def decide(
        self, policy: PolicyEngine, permission: Permission, requires: Feature | None = None
    ) -> Decision:
        """The policy decision for this user in the active organization."""
        if self.link is not None:
            return policy.decide_granted(self.link.permissions, self.features, permission, requires=requires)
        return policy.decide(self.roles, self.features, permission, requires=requires)

    def visible(self, policy: PolicyEngine, registry: WidgetRegistry) -> list[Widget]:
        """The widgets this principal may open: navigation and home cards (the guard decides the same way)."""
        if self.link is None:
            return registry.visible(policy, self.roles, self.features)
        return [
            widget
            for widget in registry
            if widget.key == self.link.intent.widget
            and widget.read_permission is not None
            and self.decide(policy, widget.read_permission, widget.feature)
        ]


#: The user's active memberships with their organizations' names, for the guard and the switcher.
_MEMBERSHIPS = (
    "SELECT o.id, o.name, o.display_name, m.roles FROM membership m"
    " JOIN organization o ON o.id = m.organization"
    " WHERE m.\"user\" = {} AND m.status = 'active' ORDER BY o.display_name, o.id"
)


async def load_auth(settings: Settings, token: str | None) -> tuple[Auth | None, str | None]:
    """Resolve the cookie to (Auth, None), or (None, why the cookie's session ended, or None)."""
    resolved = await sessions.resolve(settings, token)
    if resolved.session is None or resolved.user is None:
        return None, resolved.ended
    rows = await db.fetch(_MEMBERSHIPS, resolved.user["id"])
    organization = resolved.organization
    roles: tuple[str, ...] | None = None
    features: frozenset[str] = frozenset()
    if organization is not None:
        mine = next((row for row in rows if row["id"] == organization["id"]), None)
        if mine is not None:
            roles = tuple(db.json_value(mine["roles"]) or ())
            features = frozenset(organization["features"] or ())
    organizations = [{k: row[k] for k in ("id", "name", "display_name")} for row in rows]
    return Auth(resolved.session, resolved.user, organization, roles, features, organizations), None


async def load_link_auth(token: str | None) -> Auth | None:
    """A setup-link session's principal (issue 14): no account, no roles, the intent's permissions only. Its
    ``user`` stands for the link, so audit rows carry the link's id as actor (shown as "IT admin via setup
    link")."""
    resolved = await links.resolve_session(token)
    if resolved is None:
        return None
    link, organization = resolved
    grant = links.grant_of(link)
    actor = {
        "id": link["id"],
        "email": "",
        "display_name": links.ACTOR_LABEL,
        "given_name": "",
        "family_name": "",
    }
    session = {"id": link["id"], "created_at": link["opened_at"], "auth_method": "setup_link"}
    features = frozenset(organization["features"] or ())
    return Auth(session, actor, organization, None, features, [], link=grant)


class SessionMiddleware:
    """Resolve the session cookie before guards run, so the guard can read ``scope["state"]["auth"]``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and not scope["path"].startswith(UNAUTHENTICATED_PREFIXES):
            settings: Settings = scope["litestar_app"].state.settings
            # A setup-link session (issue 14) takes precedence: while it lives, this browser acts as the link.
            auth = await load_link_auth(_cookie(scope, links.cookie_name(settings)))
            ended = None
            if auth is None:
                token = _cookie(scope, sessions.cookie_name(settings))
                auth, ended = await load_auth(settings, token)
            state = scope.setdefault("state", {})
            state["auth"] = auth
            state["session_ended"] = ended
            # Issue 14: the organization's branding, for the layout (one query, only with org_branding on).
            state["brand"] = await branding.brand_for(settings, auth.organization if auth else None)
        await self.app(scope, receive, send)


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                cname, _, cvalue = part.strip().partition("=")
                if cname == name:
                    return cvalue
    return None


def auth_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Auth | None:
    """The request's Auth, set by :class:`SessionMiddleware` (None when signed out)."""
    auth: Auth | None = connection.scope.get("state", {}).get("auth")
    return auth


def require_auth(connection: ASGIConnection[Any, Any, Any, Any]) -> Auth:
    """The request's Auth; the guard has already refused anonymous requests to non-public routes."""
    auth = auth_of(connection)
    if auth is None:
        raise SignInRequired()
    return auth


class SignInRequired(NotAuthorizedException):
    """No live session: browsers go to the login page, API clients get 401."""

    detail = "Sign in to continue."


class Denied(PermissionDeniedException):
    """The policy said no; the decision says why."""

    def __init__(self, decision: Decision, policy: PolicyEngine | None = None) -> None:
        self.decision = decision
        super().__init__(detail=describe_denial(decision, policy))


_FEATURE_TITLES = {
    "sso": "Single sign-on",
    "scim": "SCIM provisioning",
    "domain_verification": "Domain verification",
    "session_policy": "Session policy",
    "audit_log": "Audit log",  # issue 11
}


class OutsideIntent(PermissionDeniedException):
    """A setup-link session asked for a page outside its intent (issue 14)."""

    def __init__(self, grant: SetupGrant) -> None:
        self.intent = grant.intent.key
        super().__init__(
            detail=(
                f"This session was opened by a setup link for {grant.intent.title.lower()}"
                f" (intent {grant.intent.key}): it can only open {grant.intent.title}."
            )
        )


def describe_denial(decision: Decision, policy: PolicyEngine | None = None) -> str:
    """A sentence for the 403 page that names what is missing, in the policy's words with the key after."""
    reason = decision.reason.value if decision.reason else ""
    if reason == "not_member":
        return "You are not a member of this organization. Choose one of your organizations."
    if reason == "feature_disabled":
        title = _FEATURE_TITLES.get(decision.missing or "", decision.missing or "this feature")
        return f"{title} is not enabled for this organization (feature {decision.missing})."
    label = policy.permission_label(decision.missing or "") if policy is not None else decision.missing
    if label and label != decision.missing:
        return (
            f"Your role does not allow this: “{label}” (permission {decision.missing}). "
            "Ask an administrator for access."
        )
    return f"Your role does not include the permission {decision.missing}. Ask an administrator for access."


async def policy_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The one guard (STYLE.md): routes declare ``public``, ``authenticated`` or a ``permission``; else fail closed.

    A coroutine although it never awaits: Litestar runs a synchronous guard in a worker thread, a thread hop on
    every request."""
    opt = handler.opt
    auth = auth_of(connection)
    if auth is not None and auth.link is not None and not auth.link.allows_path(connection.scope["path"]):
        # Issue 14: a setup-link session is refused everything outside its intent, public pages included
        # (sign-in, the OpenID Provider...), so it can never stand in for an account.
        raise OutsideIntent(auth.link)
    if opt.get("public"):
        return
    if auth is None:
        raise SignInRequired()
    if opt.get("authenticated"):
        return
    permission = opt.get("permission")
    if not isinstance(permission, Permission):
        # Fail closed: a route that forgot to declare what it needs is nobody's.
        raise PermissionDeniedException(detail="This page declares no permission and is closed.")
    policy: PolicyEngine = connection.app.state.policy
    feature = opt.get("feature")
    decision = auth.decide(policy, permission, feature if isinstance(feature, Feature) else None)
    if not decision:
        raise Denied(decision, policy)


def login_url(path: str, query: str = "", ended: str | None = None) -> str:
    """The login page that returns to ``path`` (with its query) afterwards; ``ended`` (why the session
    ended) lets it say so."""
    target = path + (f"?{query}" if query else "")
    url = f"/login?return_to={quote(target, safe='/')}"
    if ended in ENDED_MESSAGES:
        url += f"&ended={ended}"
    return url


#: What the login page says after a session ended by itself or elsewhere (not for a sign-out here: that
#: page says "You have been signed out").
ENDED_MESSAGES = {
    "idle": "You were signed out because you were inactive for too long. Sign in again to continue.",
    "absolute": "Your session reached its maximum length and ended. Sign in again to continue.",
    "user": "This session was signed out from another browser or device. Sign in again to continue.",
    "replaced": "You signed in again in this browser, so the earlier session ended. Sign in to continue.",
}

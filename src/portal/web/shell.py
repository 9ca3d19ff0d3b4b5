"""The /ui/ shell: home, organization chooser and switcher, sign-out, brand stylesheet."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromQuery, URLEncodedBody
from litestar.response import Redirect

from portal.auth import accounts, sessions
from portal.core.settings import Settings
from portal.links import routes as link_routes
from portal.links import service as links
from portal.web.guard import auth_of, require_auth
from portal.web.pages import render
from portal.web.registry import Section, WidgetRegistry


class SwitchForm(msgspec.Struct):
    organization_id: str
    return_to: str = "/ui/"


def client_ip(request: Request[Any, Any, Any]) -> str:
    """The peer address (a reverse proxy in front should set it via uvicorn's --proxy-headers)."""
    return request.client.host if request.client else ""


def safe_return_to(value: str | None, default: str = "/ui/") -> str:
    """Only same-origin relative paths: ``/x`` yes; ``//evil``, ``/\\evil``, ``https://evil`` no."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    if any(ch in value for ch in ("\\", "\r", "\n", "\t")) or ":" in value.split("?", 1)[0]:
        return default
    return value


@get("/", opt={"public": True}, include_in_schema=False, sync_to_thread=False)
def root() -> Redirect:
    return Redirect("/ui/", status_code=303)


@get("/ui/", opt={"authenticated": True})
async def home(request: Request[Any, Any, Any]) -> Response[Any]:
    """The portal home: the active organization and a card per widget the user may open."""
    auth = require_auth(request)
    if auth.link is not None:
        # Issue 14: a setup-link session has one widget; its home is that widget.
        return Redirect(auth.link.intent.url, status_code=303)
    if auth.organization is None and len(auth.organizations) > 1:
        return Redirect("/ui/organizations", status_code=303)
    registry: WidgetRegistry = request.app.state.registry
    policy = request.app.state.policy
    cards = auth.visible(policy, registry)
    return render(
        request,
        "portal/home.html",
        organization_cards=[w for w in cards if w.section is Section.ORGANIZATION],
        account_cards=[w for w in cards if w.section is Section.ACCOUNT],
    )


@get("/ui/organizations", opt={"authenticated": True})
async def choose_organization(
    request: Request[Any, Any, Any], return_to: FromQuery[str | None] = None
) -> Response[Any]:
    """The chooser for users in several organizations."""
    require_auth(request)
    return render(request, "portal/organizations.html", return_to=safe_return_to(return_to))


@post("/ui/organizations/switch", opt={"authenticated": True}, status_code=303)
async def switch_organization(
    request: Request[Any, Any, Any],
    data: URLEncodedBody[SwitchForm],
) -> Response[Any]:
    """Make another of the user's organizations the active one (stored on the session)."""
    auth = require_auth(request)
    # tenant check: only an organization the user is an active member of.
    if not any(org["id"] == data.organization_id for org in auth.organizations):
        raise NotFoundException("No such organization.")
    try:
        await accounts.switch_organization(
            auth.session["id"],
            auth.user["id"],
            data.organization_id,
            from_id=auth.organization["id"] if auth.organization else None,
            actor_id=auth.user["id"],
            ip=client_ip(request),
        )
    except LookupError:
        raise NotFoundException("No such organization.") from None
    return Redirect(safe_return_to(data.return_to), status_code=303)


@post("/logout", opt={"public": True}, status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    """Revoke the session, clear the cookie and show the login page (CSRF-protected like every POST)."""
    settings: Settings = request.app.state.settings
    auth = auth_of(request)
    if auth is not None and auth.link is not None:
        # Issue 14: a setup-link session ends; there is no account to sign in to again.
        await links.end_session(auth.link.link_id, ip=client_ip(request))
        ended: Response[Any] = render(request, "links/signed_out.html", auth=None)
        ended.set_cookie(link_routes.session_cookie(settings, "", max_age=0))
        return ended
    if auth is not None:
        await sessions.revoke(auth.session["id"], "logout")
        await accounts.audit(
            "logout",
            organization_id=auth.organization["id"] if auth.organization else None,
            actor_id=auth.user["id"],
            target=auth.user["id"],
            ip=client_ip(request),
        )
    response: Response[Any] = Redirect("/login?signed_out=1", status_code=303)
    response.set_cookie(sessions.session_cookie(settings, "", max_age=0))
    return response


@get("/brand.css", opt={"public": True}, media_type="text/css", sync_to_thread=False)
def brand_css(request: Request[Any, Any, Any]) -> Response[str]:
    """The brand colour as a CSS custom property (a stylesheet, since the CSP forbids inline style)."""
    settings: Settings = request.app.state.settings
    body = f":root {{ --brand: {settings.brand_primary_color}; }}\n"
    return Response(body, media_type="text/css", headers={"Cache-Control": "public, max-age=300"})


HANDLERS = [root, home, choose_organization, switch_organization, logout, brand_css]

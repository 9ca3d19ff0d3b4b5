"""``/setup/<token>``: open a setup link (once) and land on the intent's widget; a clear page when it cannot."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import Cookie
from litestar.params import FromPath
from litestar.response import Redirect, Template

from portal.core.settings import Settings
from portal.links import service
from portal.links.service import LinkProblem

NO_STORE = {"Cache-Control": "no-store"}
#: The one page every link URL points at: public (no account), no CSRF cookie needed.
SETUP = {"public": True}

_PROBLEMS = {
    "unknown": (
        404,
        "This setup link is not valid",
        "The link is incomplete or was changed. Copy the whole link again, or ask for a new one.",
    ),
    "used": (
        410,
        "This setup link was already used",
        "Each setup link opens once. Ask the person who sent it for a new link.",
    ),
    "expired": (
        410,
        "This setup link has expired",
        "Setup links work for a short time only. Ask the person who sent it for a new link.",
    ),
    "revoked": (
        410,
        "This setup link was revoked",
        "The link was withdrawn. Ask the person who sent it for a new link.",
    ),
}


class PartitionedCookie(Cookie):
    """A cookie with the ``Partitioned`` attribute (CHIPS): kept per top-level site, so it works in a frame
    where third-party cookies are blocked. Python's ``http.cookies`` only knows it from 3.14 on."""

    def to_header(self, **kwargs: Any) -> str:
        return super().to_header(**kwargs) + "; Partitioned"


def session_cookie(settings: Settings, value: str, *, max_age: int) -> Cookie:
    """The setup-link session's cookie: ``SameSite=None; Secure; Partitioned`` when the pages may be framed
    (and the portal is in a secure context), else ``SameSite=Lax`` like the account session."""
    if service.frameable_cookies(settings):
        return PartitionedCookie(
            key=service.cookie_name(settings),
            value=value,
            path="/",
            max_age=max_age,
            httponly=True,
            secure=True,
            samesite="none",
        )
    return Cookie(
        key=service.cookie_name(settings),
        value=value,
        path="/",
        max_age=max_age,
        httponly=True,
        secure=settings.secure,
        samesite="lax",
    )


def _client_ip(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else ""


@get("/setup/{token:str}", opt=SETUP, include_in_schema=False)
async def open_setup_link(request: Request[Any, Any, Any], token: FromPath[str]) -> Response[Any]:
    """Consume the link and start its session, then go to the intent's widget."""
    settings: Settings = request.app.state.settings
    try:
        session_token, link = await service.open_link(
            settings, token, ip=_client_ip(request), user_agent=request.headers.get("user-agent", "")
        )
    except LinkProblem as problem:
        current = request.scope.get("state", {}).get("auth")
        grant = getattr(current, "link", None)
        if (
            problem.kind == "used"
            and problem.link
            and grant is not None
            and grant.link_id == problem.link["id"]
        ):
            # The same browser, still in the session this link opened (the app reloaded its frame): go on.
            return Redirect(grant.intent.url, status_code=303, headers=NO_STORE)
        return await problem_page(request, problem)
    intent = service.INTENTS[link["intent"]]
    response: Response[Any] = Redirect(intent.url, status_code=303, headers=NO_STORE)
    response.set_cookie(session_cookie(settings, session_token, max_age=settings.admin_portal_session_ttl))
    return response


async def problem_page(request: Request[Any, Any, Any], problem: LinkProblem) -> Response[Any]:
    """Why the link did not open, in words; the organization's branding when the link is known."""
    from portal.web import branding

    status, title, detail = _PROBLEMS[problem.kind]
    organization_id = str(problem.link["organization"]) if problem.link else None
    brand = await branding.page_brand(request, organization_id)
    context = {"status": status, "title": title, "detail": detail, "kind": problem.kind, "brand": brand}
    if "application/json" in request.headers.get("accept", "") and "text/html" not in request.headers.get(
        "accept", ""
    ):
        body = {"error": {"status": status, "title": title, "detail": detail, "reason": problem.kind}}
        return Response(body, status_code=status, headers=NO_STORE)
    return Template("links/problem.html", context=context, status_code=status, headers=NO_STORE)


HANDLERS = [open_setup_link]

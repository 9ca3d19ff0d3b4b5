"""The SSO endpoints IdPs and browsers reach: SP metadata, start of a sign-in, and the ACS (DESIGN §15).

All are public (the IdP posts to the ACS from another site, so no session or CSRF cookie comes with it): a
response is tied to us by its signature, audience, destination and the single-use ``InResponseTo``.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect, Template

from policy import PolicyEngine
from portal.auth import accounts, login, ratelimit
from portal.core import db
from portal.core.settings import Settings
from portal.sso import saml, service
from portal.sso.problems import SsoProblem
from portal.web.http import error_response
from portal.web.shell import client_ip, safe_return_to

log = logging.getLogger("portal.sso")
PUBLIC = {"public": True}


class AcsForm(msgspec.Struct):
    SAMLResponse: str = ""
    RelayState: str = ""


@get("/sso/saml/{connection_id:str}/metadata", opt=PUBLIC)
async def sp_metadata(request: Request[Any, Any, Any], connection_id: FromPath[str]) -> Response[Any]:
    """This connection's SP metadata (download)."""
    settings: Settings = request.app.state.settings
    connection = await service.get_connection(connection_id)
    if connection is None or connection["protocol"] != "saml":
        return error_response(request, 404, "No such SAML connection.")
    return Response(
        service.sp_metadata(settings, connection),
        media_type="application/samlmetadata+xml",
        headers={"content-disposition": f'attachment; filename="{connection_id}-sp-metadata.xml"'},
    )


@get("/sso/saml/{connection_id:str}/login", opt=PUBLIC)
async def saml_login(
    request: Request[Any, Any, Any], connection_id: FromPath[str], return_to: FromQuery[str | None] = None
) -> Response[Any]:
    """Send the browser to the IdP with an AuthnRequest."""
    settings: Settings = request.app.state.settings
    connection = await service.get_connection(connection_id)
    if connection is None or connection["protocol"] != "saml":
        return error_response(request, 404, "No such SAML connection.")
    if (refused := await _too_many_starts(request)) is not None:
        return refused
    try:
        url = await service.start_saml(
            settings, connection, purpose="login", return_to=safe_return_to(return_to)
        )
    except SsoProblem as exc:
        return error_response(request, 400, exc.message)
    return Redirect(url, status_code=303)


def _test_request_of(saml_response: str) -> str:
    """The InResponseTo of a response that failed validation (untrusted: only to file the failure under a
    test of this connection)."""
    try:
        root = saml.parse_xml(saml.decode_post(saml_response))
    except SsoProblem:
        return ""
    value = root.get("InResponseTo", "")
    return value if isinstance(value, str) else ""


async def refused(
    request: Request[Any, Any, Any], connection_id: str, exc: SsoProblem, *, purpose: str
) -> Response[Any]:
    """The failure page (for a test and a sign-in alike), with the fix on the IdP's side; audited."""
    connection = await service.get_connection(connection_id)
    testing = purpose == "test" and connection is not None
    if testing:
        await service.record_test(connection_id, False)
    await accounts.audit(
        "sso.login.failed",
        organization_id=connection["organization"] if connection else None,
        target=connection_id,
        details={"reason": exc.code, "message": exc.message, "test": testing},
        ip=client_ip(request),
    )
    return Template(
        "portal/sso_result.html",
        context={
            "ok": False,
            "test": testing,
            "problems": [exc],
            "attributes": getattr(exc, "attributes", {}),
            "connection": connection,
        },
        status_code=400,
    )


async def finish(request: Request[Any, Any, Any], outcome: service.Outcome) -> Response[Any]:
    """A validated sign-in: for a test, show what arrived and create no session; else sign in (JIT)."""
    policy: PolicyEngine = request.app.state.policy
    ip = client_ip(request)
    connection = outcome.connection
    if outcome.purpose == "test":
        await service.record_test(connection["id"], True)
        await accounts.audit(
            "sso.connection.tested",
            organization_id=connection["organization"],
            target=connection["id"],
            details={"ok": True, "email": outcome.email},
            ip=ip,
        )
        roles = service.roles_for(connection, outcome.groups, policy.roles)
        return Template(
            "portal/sso_result.html",
            context={
                "ok": True,
                "test": True,
                "problems": [],
                "attributes": outcome.attributes,
                "email": outcome.email,
                "outcome": outcome,
                "roles": roles,
                "connection": connection,
            },
            status_code=200,
        )
    async with db.write_transaction():
        user = await service.provision(outcome, known_roles=policy.roles)
        signed_in = await login.open_session(
            user,
            auth_method="sso",
            requested_organization=connection["organization"],
            ip=ip,
            user_agent=request.headers.get("user-agent", "")[:500],
            details={"connection_id": connection["id"]},
        )
    return await login.complete_sign_in(request, signed_in, login.after_sign_in(signed_in, outcome.return_to))


@post("/sso/saml/{connection_id:str}/acs", opt={**PUBLIC, "exclude_from_csrf": True}, status_code=303)
async def acs(
    request: Request[Any, Any, Any], connection_id: FromPath[str], data: URLEncodedBody[AcsForm]
) -> Response[Any]:
    """Validate the posted response; sign in (or, for a test, show what arrived and create no session)."""
    settings: Settings = request.app.state.settings
    try:
        outcome = await service.accept_saml(settings, connection_id, data.SAMLResponse)
    except SsoProblem as exc:
        purpose = await service.pending_purpose(connection_id, _test_request_of(data.SAMLResponse))
        return await refused(request, connection_id, exc, purpose=purpose)
    return await finish(request, outcome)


BROWSER_COOKIE = "portal_sso_browser"
#: Sign-ins one address may start per window (each writes a request row until it is purged).
START_PER_IP = (60, 15 * 60)


async def _too_many_starts(request: Request[Any, Any, Any]) -> Response[Any] | None:
    result = await ratelimit.hit(f"sso.start.ip:{client_ip(request)}", *START_PER_IP)
    if result.allowed:
        return None
    wait = ratelimit.describe_wait(result.retry_after_seconds)
    response = error_response(
        request, 429, "Too many single sign-on attempts from your network.", retry_after=wait
    )
    response.set_header("Retry-After", str(result.retry_after_seconds))
    return response


@get("/sso/oidc/{connection_id:str}/login", opt=PUBLIC)
async def oidc_login(
    request: Request[Any, Any, Any], connection_id: FromPath[str], return_to: FromQuery[str | None] = None
) -> Response[Any]:
    """Send the browser to the IdP's authorization endpoint (code + PKCE + nonce + state)."""
    settings: Settings = request.app.state.settings
    connection = await service.get_connection(connection_id)
    if connection is None or connection["protocol"] != "oidc":
        return error_response(request, 404, "No such OIDC connection.")
    if (refused := await _too_many_starts(request)) is not None:
        return refused
    try:
        url, browser = await service.start_oidc(
            settings, connection, purpose="login", return_to=safe_return_to(return_to)
        )
    except SsoProblem as exc:
        return error_response(request, 400, exc.message)
    return oidc_redirect(settings, url, browser)


def oidc_redirect(settings: Settings, url: str, browser: str) -> Response[Any]:
    """Redirect to the IdP and give this browser the cookie its callback must bring back."""
    response: Response[Any] = Redirect(url, status_code=303)
    response.set_cookie(browser_cookie(settings, browser))
    return response


def browser_cookie(settings: Settings, browser: str) -> Cookie:
    """The cookie binding an OIDC sign-in to the browser that started it (checked at the callback)."""
    return Cookie(
        key=BROWSER_COOKIE,
        value=browser,
        path="/sso/oidc/",
        max_age=int(service.REQUEST_TTL.total_seconds()),
        httponly=True,
        secure=settings.secure,
        samesite="lax",
    )


@get("/sso/oidc/{connection_id:str}/callback", opt=PUBLIC)
async def oidc_callback(
    request: Request[Any, Any, Any],
    connection_id: FromPath[str],
) -> Response[Any]:
    """The IdP's answer: check state and browser, redeem the code, verify the ID token; sign in or show the test."""
    settings: Settings = request.app.state.settings
    # ``state`` is a reserved parameter name in Litestar: read the query directly.
    query = request.query_params
    state, code, error = query.get("state", "")[:100], query.get("code", "")[:2000], query.get("error", "")
    purpose = await service.pending_purpose(connection_id, state)
    try:
        outcome = await service.accept_oidc(
            settings,
            connection_id,
            state=state,
            code=code,
            error=error,
            browser=request.cookies.get(BROWSER_COOKIE, ""),
        )
    except SsoProblem as exc:
        return await refused(request, connection_id, exc, purpose=purpose)
    return await finish(request, outcome)


HANDLERS = [sp_metadata, saml_login, acs, oidc_login, oidc_callback]

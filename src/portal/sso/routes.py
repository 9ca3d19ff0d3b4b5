"""The SSO endpoints IdPs and browsers reach: SP metadata, start of a sign-in, and the ACS (DESIGN §15).

All are public (the IdP posts to the ACS from another site, so no session or CSRF cookie comes with it): a
response is tied to us by its signature, audience, destination and the single-use ``InResponseTo``.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect, Template

from policy import PolicyEngine
from portal.auth import accounts, login
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
    body = saml.sp_metadata(service.service_provider(settings, connection_id))
    return Response(
        body,
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
    try:
        url = await service.start_saml(
            settings, connection, purpose="login", return_to=safe_return_to(return_to)
        )
    except SsoProblem as exc:
        return error_response(request, 400, exc.message)
    return Redirect(url, status_code=303)


@post("/sso/saml/{connection_id:str}/acs", opt={**PUBLIC, "exclude_from_csrf": True}, status_code=303)
async def acs(
    request: Request[Any, Any, Any], connection_id: FromPath[str], data: URLEncodedBody[AcsForm]
) -> Response[Any]:
    """Validate the posted response; sign in (or, for a test, show what arrived and create no session)."""
    settings: Settings = request.app.state.settings
    policy: PolicyEngine = request.app.state.policy
    ip = client_ip(request)
    try:
        outcome = await service.accept_saml(settings, connection_id, data.SAMLResponse)
    except SsoProblem as exc:
        connection = await service.get_connection(connection_id)
        await accounts.audit(
            "login.failed",
            organization_id=connection["organization"] if connection else None,
            target=connection_id,
            details={"method": "sso", "reason": exc.code, "message": exc.message},
            ip=ip,
        )
        return Template(
            "portal/sso_result.html",
            context={"ok": False, "problems": [exc], "attributes": {}, "connection": connection},
            status_code=400,
        )
    if outcome.purpose == "test":
        await accounts.audit(
            "sso.connection.tested",
            organization_id=outcome.connection["organization"],
            target=outcome.connection["id"],
            details={"ok": True, "email": outcome.email},
            ip=ip,
        )
        return Template(
            "portal/sso_result.html",
            context={
                "ok": True,
                "problems": [],
                "attributes": outcome.attributes,
                "email": outcome.email,
                "connection": outcome.connection,
            },
            status_code=200,
        )
    async with db.write_transaction():
        user = await service.provision(outcome, known_roles=policy.roles)
        signed_in = await login.open_session(
            user,
            auth_method="sso",
            requested_organization=outcome.connection["organization"],
            ip=ip,
            user_agent=request.headers.get("user-agent", "")[:500],
            details={"connection_id": outcome.connection["id"]},
        )
    return await login.complete_sign_in(request, signed_in, login.after_sign_in(signed_in, outcome.return_to))


HANDLERS = [sp_metadata, saml_login, acs]

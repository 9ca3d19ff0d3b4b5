"""Passkey sign-in on ``/login`` (DESIGN §4): discoverable credentials, so no email address is asked first.

``/static/passkeys.js`` asks for options, lets the browser pick a passkey (from the button, or from the email
field's autofill where the browser offers conditional mediation) and posts the answer back. A verified
answer ends like an email-code sign-in: ``login.open_session`` and ``login.complete_sign_in``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import MediaType, Request, Response, post
from litestar.params import JSONBody

from portal.auth import accounts, login, passkeys, ratelimit
from portal.core.ids import hash_secret
from portal.core.settings import Settings
from portal.core.tables import User
from portal.web.http import error_response
from portal.web.shell import client_ip, safe_return_to

AUTH_METHOD = "passkey"
#: Options are fetched on every view of the login page where the browser supports autofill of passkeys.
OPTIONS_PER_IP = (120, 15 * 60)
UNAVAILABLE = (
    "Passkeys are not available here: the portal's public URL must use a host name (such as localhost), "
    "not an IP address."
)


class PasskeyAnswer(msgspec.Struct):
    """What the login page posts: the browser's ``PublicKeyCredential.toJSON()`` and where to go next."""

    credential: dict[str, Any]
    return_to: str = ""
    organization: str = ""


def browser_binding(request: Request[Any, Any, Any]) -> dict[str, str]:
    """Ties a sign-in challenge to this browser: the hash of its CSRF cookie (present, the CSRF check passed)."""
    cookie = request.cookies.get(request.app.csrf_config.cookie_name if request.app.csrf_config else "") or ""
    return {"browser": hash_secret(cookie)}


def _too_many(request: Request[Any, Any, Any], result: ratelimit.RateResult) -> Response[Any]:
    wait = ratelimit.describe_wait(result.retry_after_seconds)
    response = error_response(request, 429, f"Too many passkey sign-in attempts. Try again in {wait}.")
    response.set_header("Retry-After", str(result.retry_after_seconds))
    return response


@post("/login/passkey/options", opt={"public": True}, status_code=200, media_type=MediaType.JSON)
async def passkey_options(request: Request[Any, Any, Any]) -> Response[Any]:
    """Options for ``navigator.credentials.get()`` with no allowed list: the browser offers every passkey."""
    settings: Settings = request.app.state.settings
    if not passkeys.available(settings):
        return error_response(request, 409, UNAVAILABLE, reason="unavailable")
    ip = client_ip(request)
    limit, window = OPTIONS_PER_IP
    result = await ratelimit.hit(f"login.passkey.ip:{ip}", limit, window)
    if not result.allowed:
        return _too_many(request, result)
    options = await passkeys.authentication_options(
        settings, passkeys.PURPOSE_LOGIN, user_id=None, binding=browser_binding(request), ip=ip
    )
    return Response(options, media_type=MediaType.JSON)


@post("/login/passkey", opt={"public": True}, status_code=200, media_type=MediaType.JSON)
async def passkey_sign_in(request: Request[Any, Any, Any], data: JSONBody[PasskeyAnswer]) -> Response[Any]:
    """Verify the answer; on success open a new session and say where to go (``{"redirect": ...}``)."""
    settings: Settings = request.app.state.settings
    ip = client_ip(request)
    limit, window = ratelimit.LOGIN_VERIFY_PER_IP
    result = await ratelimit.hit(f"login.verify.ip:{ip}", limit, window)
    if not result.allowed:
        return _too_many(request, result)
    try:
        passkey = await passkeys.verify_assertion(
            settings,
            data.credential,
            passkeys.PURPOSE_LOGIN,
            challenge_user_id=None,
            binding=browser_binding(request),
        )
    except passkeys.PasskeyError as exc:
        known = exc.passkey or {}
        await accounts.audit(
            "login.failed",
            actor_id=known.get("user"),
            target=known.get("id", ""),
            details={"method": AUTH_METHOD, "reason": exc.reason},
            ip=ip,
        )
        return error_response(request, 400, exc.message, reason=exc.reason)
    user = await User.select().where(User.id == passkey["user"]).first()
    if user is None:  # deleted between the lookup and now; the passkey went with it (cascade)
        return error_response(request, 400, "This passkey's account no longer exists.", reason="unknown_user")
    if await login.sso_refuses(user["email"], user["id"], request.app.state.policy, method=AUTH_METHOD):
        # Enforce SSO (DESIGN §15): passkeys are refused for the organization's verified domains.
        await accounts.audit(
            "login.failed",
            actor_id=user["id"],
            target=passkey["id"],
            details={"method": AUTH_METHOD, "reason": "sso_enforced"},
            ip=ip,
        )
        return error_response(
            request,
            403,
            "Your organization requires single sign-on: enter your email and continue with your identity provider.",
            reason="sso_enforced",
        )
    signed_in = await login.open_session(
        user,
        auth_method=AUTH_METHOD,
        requested_organization=(data.organization or "").strip()[:200] or None,
        ip=ip,
        user_agent=request.headers.get("user-agent", ""),
        details={"passkey_id": passkey["id"]},
    )
    destination = login.after_sign_in(signed_in, safe_return_to(data.return_to))
    redirect = await login.complete_sign_in(request, signed_in, destination)
    return Response({"redirect": destination}, media_type=MediaType.JSON, cookies=redirect.cookies)


HANDLERS = [passkey_options, passkey_sign_in]

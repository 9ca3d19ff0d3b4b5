"""Security pages: passkeys (add, rename, delete), sessions (revoke one, revoke all others), confirm it's you.

Every route is open to any signed-in user (``authenticated``); the user and session always come from the
session cookie. The passkey ceremonies are JSON endpoints called by ``/static/passkeys.js`` (CSRF header
``x-csrftoken``); they answer ``{"redirect": ...}`` on success and an error object saying what is wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, JSONBody, URLEncodedBody
from litestar.response import Redirect

from portal.auth import passkeys
from portal.core import db
from portal.web.flash import flash
from portal.web.forms import FormErrors
from portal.web.guard import Auth, require_auth
from portal.web.http import error_response
from portal.web.pages import render, settings_of
from portal.web.shell import client_ip
from widgets.security import service
from widgets.security.schemas import ConfirmForm, CredentialBody, RenameForm

if TYPE_CHECKING:
    from portal.web.registry import Widget

URL = "/ui/account/security"
CONFIRM_URL = f"{URL}/confirm"
AUTHENTICATED = {"authenticated": True}
NOT_PENDING = "That confirmation code is no longer valid. Send a new code."


def _widget() -> Widget:
    # The package's __init__ imports this module, so WIDGET is read at request time.
    from widgets.security import WIDGET

    return WIDGET


def _confirm_url(action: str, challenge_id: str = "") -> str:
    query = {"action": action, **({"challenge_id": challenge_id} if challenge_id else {})}
    return f"{CONFIRM_URL}?{urlencode(query)}"


def _back(
    request: Request[Any, Any, Any], message: str, target: str = URL, kind: str = "ok"
) -> Response[Any]:
    return flash(Redirect(target, status_code=303), settings_of(request), message, kind)


def _json_redirect(request: Request[Any, Any, Any], target: str, message: str) -> Response[Any]:
    """The success answer of a JSON ceremony: where to go, with a message for that page."""
    response: Response[Any] = Response({"redirect": target}, media_type=MediaType.JSON)
    return flash(response, settings_of(request), message)


def _refused(request: Request[Any, Any, Any], exc: passkeys.PasskeyError) -> Response[Any]:
    status = 409 if exc.reason == "duplicate" else 400
    return error_response(request, status, exc.message, reason=exc.reason)


async def _security_page(
    request: Request[Any, Any, Any],
    auth: Auth,
    *,
    rename_id: str = "",
    rename_value: str = "",
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    then: str = "",
) -> Response[Any]:
    settings = settings_of(request)
    return render(
        request,
        "security/index.html",
        status_code=status_code,
        widget=_widget(),
        passkeys=await service.list_passkeys(auth.user["id"]),
        sessions=await service.list_sessions(settings, auth.user["id"], auth.session["id"]),
        fresh=service.is_fresh(auth.session),
        passkeys_available=passkeys.available(settings),
        rename_id=rename_id,
        rename_value=rename_value,
        errors=errors or {},
        name_max=passkeys.NAME_MAX,
        when=service.when,
        ago=service.ago,
        place=service.place,
        # After confirming for "add a passkey", the page starts adding it (passkeys.js).
        autostart=then == "add_passkey" and service.is_fresh(auth.session),
    )


async def _confirm_page(
    request: Request[Any, Any, Any],
    auth: Auth,
    action: str,
    *,
    challenge: dict[str, Any] | None = None,
    code: str = "",
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    settings = settings_of(request)
    return render(
        request,
        "security/confirm.html",
        status_code=status_code,
        widget=_widget(),
        action=action,
        action_label=service.ACTIONS[action],
        challenge=challenge,
        code=code,
        errors=errors or {},
        has_passkeys=bool(await service.list_passkeys(auth.user["id"])),
        passkeys_available=passkeys.available(settings),
        ago=service.ago,
    )


async def _after_confirmation(request: Request[Any, Any, Any], auth: Auth, action: str) -> str:
    """Carry out the action the user confirmed for; the message for the Security page."""
    if action == "revoke_others":
        async with db.write_transaction():
            count = await service.revoke_other_sessions(
                auth.user["id"],
                auth.session["id"],
                organization_id=auth.organization_id,
                ip=client_ip(request),
            )
        return _revoked_message(count)
    return "Confirmed. Now add your passkey: your browser asks for it."


def _continue_url(action: str) -> str:
    """Where the confirmed action goes on: signing out others is done already; adding a passkey resumes."""
    return f"{URL}?then=add_passkey#passkeys-heading" if action == "add_passkey" else URL


def _revoked_message(count: int) -> str:
    if count == 0:
        return "There were no other sessions to sign out."
    return f"Signed out {count} other session{'s' if count != 1 else ''}."


class SecurityController(Controller):
    path = URL

    @get("", opt=AUTHENTICATED)
    async def show(self, request: Request[Any, Any, Any], then: FromQuery[str] = "") -> Response[Any]:
        """Passkeys and sessions; ``then=add_passkey`` (after confirming it's you) starts adding a passkey."""
        return await _security_page(request, require_auth(request), then=then)

    # --- sessions ---------------------------------------------------------------------------------------

    @post("/sessions/{session_id:str}/revoke", opt=AUTHENTICATED, status_code=303)
    async def revoke(self, request: Request[Any, Any, Any], session_id: FromPath[str]) -> Response[Any]:
        """Sign one of the user's sessions out (404 for anyone else's)."""
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                await service.revoke_session(
                    auth.user["id"], session_id, organization_id=auth.organization_id, ip=client_ip(request)
                )
        except service.NotFound:
            raise NotFoundException("No such session.") from None
        return _back(request, "Session revoked. It is signed out on its next request.")

    @post("/sessions/revoke-others", opt=AUTHENTICATED, status_code=303)
    async def revoke_others(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Sign out every other session; needs a sign-in in the last 10 minutes, else confirm first."""
        auth = require_auth(request)
        if not service.is_fresh(auth.session):
            return Redirect(_confirm_url("revoke_others"), status_code=303)
        async with db.write_transaction():
            count = await service.revoke_other_sessions(
                auth.user["id"],
                auth.session["id"],
                organization_id=auth.organization_id,
                ip=client_ip(request),
            )
        return _back(request, _revoked_message(count))

    # --- passkeys ---------------------------------------------------------------------------------------

    @post("/passkeys/options", opt=AUTHENTICATED, status_code=200, media_type=MediaType.JSON)
    async def registration_options(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Creation options for a new passkey; 403 with ``step_up`` when the sign-in is too old."""
        auth = require_auth(request)
        settings = settings_of(request)
        if not passkeys.available(settings):
            return error_response(request, 409, "Passkeys need the portal to be served under a host name.")
        if not service.is_fresh(auth.session):
            return error_response(
                request,
                403,
                "Confirm it's you before adding a passkey.",
                reason="step_up",
                redirect=_confirm_url("add_passkey"),
            )
        if not await service.webauthn_options_allowed(auth.user["id"]):
            return error_response(request, 429, "Too many passkey requests. Try again in a few minutes.")
        options = await service.registration_options(
            settings, auth.user, auth.session["id"], ip=client_ip(request)
        )
        return Response(options, media_type=MediaType.JSON)

    @post("/passkeys", opt=AUTHENTICATED, status_code=200, media_type=MediaType.JSON)
    async def register(
        self, request: Request[Any, Any, Any], data: JSONBody[CredentialBody]
    ) -> Response[Any]:
        """Verify the browser's new credential and store it."""
        auth = require_auth(request)
        try:
            added = await service.add_passkey(
                settings_of(request),
                data.credential,
                user_id=auth.user["id"],
                session_id=auth.session["id"],
                user_agent=request.headers.get("user-agent", ""),
                organization_id=auth.organization_id,
                ip=client_ip(request),
            )
        except passkeys.PasskeyError as exc:
            return _refused(request, exc)
        return _json_redirect(request, URL, f"Passkey “{added.name}” added. Rename it below if you like.")

    @post("/passkeys/{passkey_id:str}/rename", opt=AUTHENTICATED, status_code=303)
    async def rename(
        self, request: Request[Any, Any, Any], passkey_id: FromPath[str], data: URLEncodedBody[RenameForm]
    ) -> Response[Any]:
        """Rename a passkey; bad input shows the form again (400) and saves nothing."""
        auth = require_auth(request)
        try:
            name = await service.rename_passkey(
                auth.user["id"],
                passkey_id,
                data.name,
                organization_id=auth.organization_id,
                ip=client_ip(request),
            )
        except service.NotFound:
            raise NotFoundException("No such passkey.") from None
        except FormErrors as exc:
            return await _security_page(
                request,
                auth,
                rename_id=passkey_id,
                rename_value=data.name,
                errors=exc.errors,
                status_code=exc.status_code,
            )
        return _back(request, f"Passkey renamed to “{name}”.")

    @post("/passkeys/{passkey_id:str}/delete", opt=AUTHENTICATED, status_code=303)
    async def delete(self, request: Request[Any, Any, Any], passkey_id: FromPath[str]) -> Response[Any]:
        """Delete a passkey (404 for anyone else's)."""
        auth = require_auth(request)
        try:
            name = await service.delete_passkey(
                auth.user["id"], passkey_id, organization_id=auth.organization_id, ip=client_ip(request)
            )
        except service.NotFound:
            raise NotFoundException("No such passkey.") from None
        return _back(
            request,
            f"Passkey “{name}” deleted. Remove it from your device or password manager too.",
        )

    # --- confirm it's you (step-up) ---------------------------------------------------------------------

    @get("/confirm", opt=AUTHENTICATED)
    async def confirm(
        self,
        request: Request[Any, Any, Any],
        action: FromQuery[str] = "",
        challenge_id: FromQuery[str] = "",
    ) -> Response[Any]:
        """Confirm with a passkey or an emailed code before ``action``."""
        auth = require_auth(request)
        action = service.action_or_default(action)
        challenge = await service.pending_step_up(auth.user["id"], challenge_id) if challenge_id else None
        return await _confirm_page(request, auth, action, challenge=challenge)

    @post("/confirm/code/send", opt=AUTHENTICATED, status_code=303)
    async def send_code(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[ConfirmForm]
    ) -> Response[Any]:
        """Email a confirmation code to the user's address."""
        auth = require_auth(request)
        action = service.action_or_default(data.action)
        try:
            challenge_id = await service.send_step_up_code(
                settings_of(request), auth.user, action=action, ip=client_ip(request)
            )
        except FormErrors as exc:
            return await _confirm_page(request, auth, action, errors=exc.errors, status_code=exc.status_code)
        return flash(
            Redirect(_confirm_url(action, challenge_id), status_code=303),
            settings_of(request),
            f"We sent a 6-digit code to {auth.user['email']}.",
        )

    @post("/confirm/code", opt=AUTHENTICATED, status_code=303)
    async def check_code(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[ConfirmForm]
    ) -> Response[Any]:
        """Check the code; on success the session counts as freshly signed in and the action goes ahead."""
        auth = require_auth(request)
        action = service.action_or_default(data.action)
        try:
            await service.check_step_up_code(auth.user["id"], data.challenge_id, data.code)
        except service.ChallengeUnknown:
            return flash(
                Redirect(_confirm_url(action), status_code=303), settings_of(request), NOT_PENDING, "error"
            )
        except FormErrors as exc:
            challenge = await service.pending_step_up(auth.user["id"], data.challenge_id)
            if challenge is None:
                return flash(
                    Redirect(_confirm_url(action), status_code=303),
                    settings_of(request),
                    exc.errors.get("code", NOT_PENDING),
                    "error",
                )
            return await _confirm_page(
                request, auth, action, challenge=challenge, code=data.code, errors=exc.errors, status_code=400
            )
        await service.confirmed(
            auth.session, "email_code", organization_id=auth.organization_id, ip=client_ip(request)
        )
        return _back(request, await _after_confirmation(request, auth, action), _continue_url(action))

    @post("/confirm/passkey/options", opt=AUTHENTICATED, status_code=200, media_type=MediaType.JSON)
    async def step_up_options(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Request options that allow only the user's own passkeys."""
        auth = require_auth(request)
        settings = settings_of(request)
        if not passkeys.available(settings):
            return error_response(request, 409, "Passkeys need the portal to be served under a host name.")
        if not await service.webauthn_options_allowed(auth.user["id"]):
            return error_response(request, 429, "Too many passkey requests. Try again in a few minutes.")
        try:
            options = await service.step_up_options(
                settings, auth.user["id"], auth.session["id"], ip=client_ip(request)
            )
        except service.NotFound:
            return error_response(request, 409, "You have no passkeys. Confirm with an email code.")
        return Response(options, media_type=MediaType.JSON)

    @post("/confirm/passkey", opt=AUTHENTICATED, status_code=200, media_type=MediaType.JSON)
    async def check_passkey(
        self, request: Request[Any, Any, Any], data: JSONBody[CredentialBody]
    ) -> Response[Any]:
        """Verify the passkey answer; on success the session counts as freshly signed in and the action goes ahead."""
        auth = require_auth(request)
        action = service.action_or_default(data.action)
        try:
            await service.verify_step_up(
                settings_of(request), data.credential, auth.user["id"], auth.session["id"]
            )
        except passkeys.PasskeyError as exc:
            return _refused(request, exc)
        await service.confirmed(
            auth.session, "passkey", organization_id=auth.organization_id, ip=client_ip(request)
        )
        return _json_redirect(
            request, _continue_url(action), await _after_confirmation(request, auth, action)
        )

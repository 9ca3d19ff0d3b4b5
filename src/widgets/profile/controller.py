"""Profile pages: view and edit the profile, change the email address with a code sent to the new one.

Every route is open to any signed-in user (``authenticated``); the user always comes from the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, post
from litestar.params import FromQuery, URLEncodedBody
from litestar.response import Redirect

from portal.core import db
from portal.web.flash import flash
from portal.web.forms import FormErrors
from portal.web.guard import require_auth
from portal.web.pages import render, settings_of
from portal.web.shell import client_ip
from widgets.profile import service
from widgets.profile.schemas import EmailChangeForm, EmailCodeForm, Profile, ProfileForm

if TYPE_CHECKING:
    from portal.web.registry import Widget

URL = "/ui/account/profile"
VERIFY_URL = f"{URL}/email/verify"
AUTHENTICATED = {"authenticated": True}


def _widget() -> Widget:
    # The package's __init__ imports this module, so WIDGET is read at request time.
    from widgets.profile import WIDGET

    return WIDGET


def _profile_page(
    request: Request[Any, Any, Any],
    profile: Profile,
    *,
    form: ProfileForm | None = None,
    errors: dict[str, str] | None = None,
    email_form: EmailChangeForm | None = None,
    email_errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    if form is None:
        form = ProfileForm(profile.given_name, profile.family_name, profile.display_name)
    return render(
        request,
        "profile/index.html",
        status_code=status_code,
        widget=_widget(),
        profile=profile,
        form=form,
        errors=errors or {},
        email_form=email_form or EmailChangeForm(),
        email_errors=email_errors or {},
        max_lengths=service.MAX_LENGTHS,
    )


def _back_to_profile(request: Request[Any, Any, Any], message: str, kind: str = "ok") -> Response[Any]:
    return flash(Redirect(URL, status_code=303), settings_of(request), message, kind)


class ProfileController(Controller):
    path = URL

    @get("", opt=AUTHENTICATED)
    async def show(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The profile and its forms."""
        auth = require_auth(request)
        return _profile_page(request, await service.get_profile(auth.user["id"]))

    @post("", opt=AUTHENTICATED, status_code=303)
    async def save(self, request: Request[Any, Any, Any], data: URLEncodedBody[ProfileForm]) -> Response[Any]:
        """Save the names; bad input shows the form again (400) and saves nothing."""
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                changed = await service.update_profile(
                    auth.user["id"], data, organization_id=auth.organization_id, ip=client_ip(request)
                )
        except FormErrors as exc:
            profile = await service.get_profile(auth.user["id"])
            return _profile_page(request, profile, form=data, errors=exc.errors, status_code=400)
        return _back_to_profile(request, "Profile saved." if changed else "Nothing changed.")

    @post("/email", opt=AUTHENTICATED, status_code=303)
    async def request_email_change(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[EmailChangeForm]
    ) -> Response[Any]:
        """Send a code to the new address, then ask for it."""
        auth = require_auth(request)
        try:
            pending = await service.request_email_change(
                settings_of(request),
                auth.user,
                data,
                organization_id=auth.organization_id,
                ip=client_ip(request),
            )
        except FormErrors as exc:
            profile = await service.get_profile(auth.user["id"])
            return _profile_page(
                request, profile, email_form=data, email_errors=exc.errors, status_code=exc.status_code
            )
        target = f"{VERIFY_URL}?{urlencode({'challenge_id': pending.challenge_id})}"
        return flash(
            Redirect(target, status_code=303),
            settings_of(request),
            f"We sent a 6-digit code to {pending.new_email}.",
        )

    @get("/email/verify", opt=AUTHENTICATED)
    async def verify_form(
        self, request: Request[Any, Any, Any], challenge_id: FromQuery[str] = ""
    ) -> Response[Any]:
        """The code form of a pending email change."""
        auth = require_auth(request)
        pending = await service.pending_email_change(auth.user["id"], challenge_id)
        if pending is None:
            return _back_to_profile(request, NOT_PENDING, "error")
        return render(
            request, "profile/verify_email.html", widget=_widget(), pending=pending, code="", errors={}
        )

    @post("/email/verify", opt=AUTHENTICATED, status_code=303)
    async def confirm_email_change(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[EmailCodeForm]
    ) -> Response[Any]:
        """Check the code; on success the new address becomes the user's verified email."""
        auth = require_auth(request)
        user_id = auth.user["id"]
        try:
            new_email = await service.check_email_code(user_id, data.challenge_id, data.code)
        except service.ChallengeUnknown:
            return _back_to_profile(request, NOT_PENDING, "error")
        except FormErrors as exc:
            pending = await service.pending_email_change(user_id, data.challenge_id)
            if pending is None:
                return _back_to_profile(request, NOT_PENDING, "error")
            return render(
                request,
                "profile/verify_email.html",
                status_code=400,
                widget=_widget(),
                pending=pending,
                code=data.code,
                errors=exc.errors,
            )
        try:
            async with db.write_transaction():
                old_email = await service.apply_email_change(
                    user_id, new_email, organization_id=auth.organization_id, ip=client_ip(request)
                )
        except Exception as exc:
            if not service.is_email_taken(exc):
                raise
            profile = await service.get_profile(user_id)
            message = f"{new_email} is now in use by another account, so your email address was not changed."
            return _profile_page(
                request,
                profile,
                email_form=EmailChangeForm(new_email=new_email),
                email_errors={"new_email": message},
                status_code=409,
            )
        await service.notify_old_address(settings_of(request), old_email)
        return _back_to_profile(request, f"Your email address is now {new_email}.")


NOT_PENDING = "That email change is no longer waiting for a code. Start again if you still want to change it."

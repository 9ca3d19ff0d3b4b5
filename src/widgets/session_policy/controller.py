"""Session policy pages: the active organization's session timeouts; changing them with the manage permission.

The organization always comes from the session (the guard has checked membership, permission and the
``session_policy`` feature). A change that would end live sessions is shown for confirmation first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import URLEncodedBody
from litestar.response import Redirect

from policy import Feature, Permission
from portal.core import db
from portal.web.flash import flash
from portal.web.forms import FormErrors
from portal.web.guard import Auth, require_auth
from portal.web.http import error_response, wants_html
from portal.web.pages import render, settings_of
from portal.web.shell import client_ip
from widgets.session_policy import service
from widgets.session_policy.schemas import PolicyForm, Preview

if TYPE_CHECKING:
    from portal.web.registry import Widget

URL = "/ui/organization/session-policy"
READ = {"permission": Permission.SESSION_POLICY_READ, "feature": Feature.SESSION_POLICY}
MANAGE = {"permission": Permission.SESSION_POLICY_MANAGE, "feature": Feature.SESSION_POLICY}
LABELS = {
    "source": "Source",
    "absolute_value": "Absolute timeout",
    "absolute_unit": "Absolute timeout unit",
    "idle_value": "Idle timeout",
    "idle_unit": "Idle timeout unit",
}


def _widget() -> Widget:
    # The package's __init__ imports this module, so WIDGET is read at request time.
    from widgets.session_policy import WIDGET

    return WIDGET


def _organization_id(auth: Auth) -> str:
    if auth.organization is None:  # pragma: no cover - the guard denies first
        raise LookupError("no active organization")
    return str(auth.organization["id"])


async def _page(
    request: Request[Any, Any, Any],
    *,
    form: PolicyForm | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    auth = require_auth(request)
    settings = settings_of(request)
    page = await service.get_page(settings, _organization_id(auth))
    return render(
        request,
        "session_policy/index.html",
        status_code=status_code,
        widget=_widget(),
        page=page,
        form=form or service.form_for(page.policy, page.defaults),
        errors=errors or {},
        labels=LABELS,
        units=list(service.UNITS),
        bounds=service.bounds(service.defaults(settings_of(request))),
        describe=service.describe,
        manage=Permission.SESSION_POLICY_MANAGE,
    )


def _confirmation(request: Request[Any, Any, Any], preview: Preview, form: PolicyForm) -> Response[Any]:
    if not wants_html(request):
        detail = (
            f"This change ends {preview.ending} active session{'s' if preview.ending != 1 else ''} now. "
            f"Send confirm=yes and confirmed_count={preview.ending} to save it."
        )
        return error_response(request, 409, detail, ending=preview.ending, ends_own=preview.ends_own)
    return render(
        request,
        "session_policy/confirm.html",
        widget=_widget(),
        preview=preview,
        form=form,
        describe=service.describe,
    )


class SessionPolicyController(Controller):
    path = URL

    @get("", opt=READ)
    async def show(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The policy, the app defaults and the effective timeouts; the form for those who may change it."""
        return await _page(request)

    @post("", opt=MANAGE, status_code=303)
    async def save(self, request: Request[Any, Any, Any], data: URLEncodedBody[PolicyForm]) -> Response[Any]:
        """Save; bad input shows the form again (400), a change that ends sessions asks first."""
        auth = require_auth(request)
        if data.confirm == "edit":
            return await _page(request, form=data)
        try:
            async with db.write_transaction():
                outcome = await service.save(
                    settings_of(request),
                    _organization_id(auth),
                    data,
                    actor_id=auth.user["id"],
                    own_session=auth.session,
                    ip=client_ip(request),
                )
        except FormErrors as exc:
            if not wants_html(request):
                fields = [{"key": key, "message": message} for key, message in exc.errors.items()]
                detail = " ".join(f"{LABELS.get(k, k)}: {m}" for k, m in exc.errors.items())
                return error_response(request, exc.status_code, detail, fields=fields)
            return await _page(request, form=data, errors=exc.errors, status_code=exc.status_code)
        if isinstance(outcome, Preview):
            return _confirmation(request, outcome, data)
        if not outcome.changed:
            message = "Nothing changed."
        else:
            ended = outcome.sessions_ended
            message = "Session policy saved. It applies from each session's next request."
            if ended:
                message += f" {ended} active session{'s' if ended != 1 else ''} ended."
        return flash(Redirect(URL, status_code=303), settings_of(request), message)

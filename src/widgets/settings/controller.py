"""Organization settings pages: show the active organization's settings; edit them with the manage permission.

The organization always comes from the session (the guard has checked membership and permission).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import URLEncodedBody
from litestar.response import Redirect

from policy import Permission
from portal.core import db, domains
from portal.core.settings import Settings
from portal.web.flash import flash
from portal.web.forms import FormErrors
from portal.web.guard import Auth, require_auth
from portal.web.http import error_response, wants_html
from portal.web.pages import render
from portal.web.shell import client_ip
from widgets.settings import service
from widgets.settings.schemas import OrganizationSettings, SettingsForm

if TYPE_CHECKING:
    from portal.web.registry import Widget

URL = "/ui/organization/settings"
LABELS = {"name": "Name", "display_name": "Display name", "allowed_email_domains": "Allowed email domains"}


def _widget() -> Widget:
    # The package's __init__ imports this module, so WIDGET is read at request time.
    from widgets.settings import WIDGET

    return WIDGET


def organization_id(auth: Auth) -> str:
    """The active organization's id (the guard has made sure there is one the user belongs to)."""
    if auth.organization is None:  # pragma: no cover - the guard denies first
        raise LookupError("no active organization")
    return str(auth.organization["id"])


def _page(
    request: Request[Any, Any, Any],
    current: OrganizationSettings,
    *,
    form: SettingsForm | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    if form is None:
        form = SettingsForm(
            name=current.name,
            display_name=current.display_name,
            allowed_email_domains="\n".join(domains.display_domain(d) for d in current.allowed_email_domains),
        )
    return render(
        request,
        "settings/index.html",
        status_code=status_code,
        widget=_widget(),
        current=current,
        form=form,
        errors=errors or {},
        labels=LABELS,
        max_domains=service.MAX_DOMAINS,
        shown=domains.display_domain,
    )


def form_errors(
    request: Request[Any, Any, Any], errors: dict[str, str], status_code: int, html: Any
) -> Response[Any]:
    """Bad input: the page again with messages next to the fields, or a JSON error naming each field."""
    if wants_html(request):
        page: Response[Any] = html()
        return page
    fields = [{"key": key, "message": message} for key, message in errors.items()]
    detail = " ".join(f"{LABELS.get(k, k)}: {m}" for k, m in errors.items())
    return error_response(request, status_code, detail, fields=fields)


class SettingsController(Controller):
    path = URL

    @get("", opt={"permission": Permission.SETTINGS_READ})
    async def show(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The settings; the form only for those who may change them."""
        auth = require_auth(request)
        return _page(request, await service.get_settings(organization_id(auth)))

    @post("", opt={"permission": Permission.SETTINGS_MANAGE}, status_code=303)
    async def save(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[SettingsForm]
    ) -> Response[Any]:
        """Save; bad input shows the form again (400) and saves nothing."""
        auth = require_auth(request)
        org_id = organization_id(auth)
        try:
            async with db.write_transaction():
                changed = await service.update_settings(
                    org_id, data, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except FormErrors as exc:
            errors, status = exc.errors, exc.status_code
        except Exception as exc:
            if not db.is_unique_violation(exc):
                raise
            errors, status = {"name": service.NAME_TAKEN}, 400
        else:
            settings: Settings = request.app.state.settings
            message = "Organization settings saved." if changed else "Nothing changed."
            return flash(Redirect(URL, status_code=303), settings, message)
        current = await service.get_settings(org_id)
        return form_errors(
            request,
            errors,
            status,
            lambda: _page(request, current, form=data, errors=errors, status_code=status),
        )

"""Organization settings pages: show the active organization's settings; edit them with the manage permission.

The organization always comes from the session (the guard has checked membership and permission).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import URLEncodedBody
from litestar.response import Redirect

from policy import Feature, Permission
from portal.core import db, domains
from portal.core.settings import Settings
from portal.web import branding
from portal.web.flash import flash
from portal.web.forms import FormErrors
from portal.web.guard import Auth, require_auth
from portal.web.http import error_response, wants_html
from portal.web.pages import render, settings_of
from portal.web.shell import client_ip
from widgets.settings import service
from widgets.settings.schemas import ColorForm, OrganizationSettings, SettingsForm

if TYPE_CHECKING:
    from portal.web.registry import Widget

URL = "/ui/organization/settings"
LABELS = {
    "name": "Name",
    "display_name": "Display name",
    "allowed_email_domains": "Allowed email domains",
    "primary_color": "Primary colour",
    "logo": "Logo",
}
#: Issue 14: branding needs the manage permission and the org_branding feature.
BRANDING = {"permission": Permission.SETTINGS_MANAGE, "feature": Feature.ORG_BRANDING}


async def _brand(auth: Auth) -> dict[str, Any] | None:
    if Feature.ORG_BRANDING.value not in auth.features:
        return None
    return await branding.get_brand(organization_id(auth)) or {}


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
    brand: dict[str, Any] | None = None,
    color: str | None = None,
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
        # Issue 14: organization branding (feature org_branding).
        brand_row=brand,
        color_value=color if color is not None else ((brand or {}).get("primary_color") or ""),
        logo_max_kb=settings_of(request).brand_logo_max_bytes // 1024,
        aa_ratio=branding.AA_RATIO,
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
        return _page(request, await service.get_settings(organization_id(auth)), brand=await _brand(auth))

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
        brand = await _brand(auth)
        return form_errors(
            request,
            errors,
            status,
            lambda: _page(request, current, form=data, errors=errors, status_code=status, brand=brand),
        )

    # --- issue 14: organization branding
    async def _branding_errors(
        self, request: Request[Any, Any, Any], auth: Auth, exc: FormErrors, color: str | None = None
    ) -> Response[Any]:
        current = await service.get_settings(organization_id(auth))
        brand = await _brand(auth)
        errors, status = exc.errors, exc.status_code
        return form_errors(
            request,
            errors,
            status,
            lambda: _page(request, current, errors=errors, status_code=status, brand=brand, color=color),
        )

    @post("/branding/color", opt=BRANDING, status_code=303)
    async def save_color(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[ColorForm]
    ) -> Response[Any]:
        """The primary colour: white text on it must meet WCAG AA; empty goes back to the app's colour."""
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                color = await branding.save_color(
                    organization_id(auth), data.primary_color, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except FormErrors as exc:
            return await self._branding_errors(request, auth, exc, color=data.primary_color)
        message = f"Primary colour set to {color}." if color else "Primary colour reset to the app's."
        return flash(Redirect(URL, status_code=303), settings_of(request), message)

    @post("/branding/logo", opt=BRANDING, status_code=303)
    async def save_logo(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Upload a logo: PNG or JPEG (by their bytes) or an SVG without script or external references."""
        auth = require_auth(request)
        settings = settings_of(request)
        form = await request.form()
        upload = form.get("logo")
        try:
            if not isinstance(upload, UploadFile):
                raise FormErrors({"logo": "Choose an image file to upload."})
            content = await upload.read(settings.brand_logo_max_bytes + 1)
            async with db.write_transaction():
                await branding.save_logo(
                    settings, organization_id(auth), content, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except FormErrors as exc:
            return await self._branding_errors(request, auth, exc)
        return flash(Redirect(URL, status_code=303), settings, "Logo uploaded.")

    @post("/branding/logo/remove", opt=BRANDING, status_code=303)
    async def remove_logo(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Remove the organization's logo (the app's shows again)."""
        auth = require_auth(request)
        async with db.write_transaction():
            await branding.remove_logo(organization_id(auth), actor_id=auth.user["id"], ip=client_ip(request))
        return flash(Redirect(URL, status_code=303), settings_of(request), "Logo removed.")

    # --- end issue 14

"""Single sign-on pages: the organization's connections, one connection's setup (SP values, IdP, guide,
mapping), activate / deactivate / delete, Test connection and Enforce SSO.

Every route needs the ``sso`` feature with its permission; the organization always comes from the session.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect

from policy import Feature, Permission
from portal.core import db
from portal.sso import routes as sso_routes
from portal.sso.saml import MAX_METADATA
from portal.web import guides as guide_files
from portal.web.flash import flash
from portal.web.forms import FormErrors
from portal.web.guard import Auth, require_auth
from portal.web.http import error_response, wants_html
from portal.web.pages import policy_of, render, settings_of
from portal.web.shell import client_ip
from widgets.sso import service
from widgets.sso.schemas import ConnectionView, CreateForm, EnforceForm, IdpForm, SettingsForm

if TYPE_CHECKING:
    from portal.web.registry import Widget

log = logging.getLogger("widgets.sso")

URL = "/ui/organization/sso"
READ = {"permission": Permission.SSO_READ, "feature": Feature.SSO}
MANAGE = {"permission": Permission.SSO_MANAGE, "feature": Feature.SSO}
NO_SUCH = "No such connection in this organization."
IDP_FIELDS = ("source", "idp_metadata_url", "metadata_xml", "idp_sso_url", "idp_entity_id", "idp_certificate")


def _widget() -> Widget:
    from widgets.sso import WIDGET

    return WIDGET


def _org_id(auth: Auth) -> str:
    if auth.organization is None:  # pragma: no cover - the guard denies first
        raise LookupError("no active organization")
    return str(auth.organization["id"])


def _back(request: Request[Any, Any, Any], target: str, message: str, kind: str = "ok") -> Response[Any]:
    return flash(Redirect(target, status_code=303), settings_of(request), message, kind)


def _refuse(request: Request[Any, Any, Any], errors: dict[str, str], status: int) -> Response[Any]:
    fields = [{"key": key, "message": message} for key, message in errors.items()]
    return error_response(request, status, " ".join(errors.values()), fields=fields)


async def _list_page(
    request: Request[Any, Any, Any],
    auth: Auth,
    *,
    form: CreateForm | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    settings = settings_of(request)
    org_id = _org_id(auth)
    guides = service.load_guides(settings)
    return render(
        request,
        "sso/index.html",
        status_code=status_code,
        widget=_widget(),
        connections=await service.list_connections(settings, org_id),
        guides=guides,
        protocol_of=service.guide_protocol,
        form=form or CreateForm(),
        errors=errors or {},
        enforced=await service.is_enforced(org_id),
    )


def _settings_form(view: ConnectionView) -> SettingsForm:
    mapping = view.attribute_mapping
    return SettingsForm(
        name=view.name,
        sign_requests="on" if view.sign_requests else "",
        allow_idp_initiated="on" if view.allow_idp_initiated else "",
        allow_other_domains="on" if view.allow_other_domains else "",
        oidc_issuer=view.oidc_issuer,
        oidc_client_id=view.oidc_client_id,
        map_email=mapping.get("email", ""),
        map_given_name=mapping.get("given_name", ""),
        map_family_name=mapping.get("family_name", ""),
        map_groups=mapping.get("groups", ""),
        group_roles=service.format_group_roles(view.group_roles),
        default_roles=", ".join(view.default_roles),
    )


async def _connection_page(
    request: Request[Any, Any, Any],
    auth: Auth,
    connection_id: str,
    *,
    guide_key: str | None = None,
    idp_form: IdpForm | None = None,
    settings_form: SettingsForm | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    settings = settings_of(request)
    try:
        view = await service.get_connection(settings, _org_id(auth), connection_id)
    except LookupError:
        raise NotFoundException(NO_SUCH) from None
    guides = [g for g in service.load_guides(settings) if service.guide_protocol(g) == view.protocol]
    guide = guide_files.find(guides, guide_key or view.provider) or (guides[0] if guides else None)
    organization = auth.organization or {}
    values = service.guide_values(settings, view, str(organization.get("display_name", "")))
    return render(
        request,
        "sso/connection.html",
        status_code=status_code,
        widget=_widget(),
        c=view,
        guides=guides,
        guide=guide,
        guide_html=guide_files.render(guide, values, id_prefix="guide") if guide else "",
        idp_form=idp_form
        or IdpForm(
            source="url" if view.idp_metadata_url else ("fields" if view.idp_sso_url else "url"),
            idp_metadata_url=view.idp_metadata_url,
            idp_sso_url=view.idp_sso_url,
            idp_entity_id=view.idp_entity_id,
            idp_certificate=view.idp_certificate,
        ),
        settings_form=settings_form or _settings_form(view),
        errors=errors or {},
        roles=sorted(policy_of(request).roles),
        enforced=await service.is_enforced(_org_id(auth)),
        defaults=service.PROVIDER_MAPPING.get(view.provider, {}),
    )


class SsoController(Controller):
    path = URL

    @get("", opt=READ)
    async def show(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The connections, Enforce SSO, and (for managers) the form to add one."""
        return await _list_page(request, require_auth(request))

    @post("", opt=MANAGE, status_code=303)
    async def create(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[CreateForm]
    ) -> Response[Any]:
        """Add a draft connection that follows the chosen guide."""
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                connection_id = await service.create_connection(
                    settings_of(request), _org_id(auth), data, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except FormErrors as exc:
            if not wants_html(request):
                return _refuse(request, exc.errors, exc.status_code)
            return await _list_page(request, auth, form=data, errors=exc.errors, status_code=exc.status_code)
        return _back(
            request, f"{URL}/{connection_id}", "Connection created. Follow the guide below to set it up."
        )

    @post("/enforce", opt=MANAGE, status_code=303)
    async def enforce(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[EnforceForm]
    ) -> Response[Any]:
        """Turn Enforce SSO on or off."""
        auth = require_auth(request)
        enforced = data.enforced == "on"
        try:
            async with db.write_transaction():
                await service.set_enforced(
                    _org_id(auth), enforced, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except service.Refused as exc:
            return _back(request, URL, str(exc), "error")
        message = (
            "SSO is enforced: people at your verified domains sign in through your IdP."
            if enforced
            else "SSO is no longer enforced: email codes and passkeys work again."
        )
        return _back(request, URL, message)

    @get("/{connection_id:str}", opt=READ)
    async def connection(
        self,
        request: Request[Any, Any, Any],
        connection_id: FromPath[str],
        guide: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """One connection: the values for the IdP, the guide, the IdP's settings and the mapping."""
        return await _connection_page(request, require_auth(request), connection_id, guide_key=guide)

    @post("/{connection_id:str}/idp", opt=MANAGE, status_code=303)
    async def idp(self, request: Request[Any, Any, Any], connection_id: FromPath[str]) -> Response[Any]:
        """SAML: the IdP from its metadata URL (fetched now), a metadata file, or fields."""
        auth = require_auth(request)
        raw = await request.form()
        form = IdpForm(
            **{name: str(raw.get(name) or "") for name in IDP_FIELDS if isinstance(raw.get(name), str)}
        )
        upload = raw.get("metadata_file")
        data: bytes | None = None
        if isinstance(upload, UploadFile):
            data = await upload.read(MAX_METADATA + 1)
            if not data:
                data = None
        try:
            async with db.write_transaction():
                done = await service.configure_idp(
                    settings_of(request),
                    _org_id(auth),
                    connection_id,
                    form,
                    data,
                    actor_id=auth.user["id"],
                    ip=client_ip(request),
                )
        except LookupError:
            raise NotFoundException(NO_SUCH) from None
        except FormErrors as exc:
            if not wants_html(request):
                return _refuse(request, exc.errors, exc.status_code)
            return await _connection_page(
                request, auth, connection_id, idp_form=form, errors=exc.errors, status_code=exc.status_code
            )
        return _back(request, f"{URL}/{connection_id}#idp", done)

    @post("/{connection_id:str}/settings", opt=MANAGE, status_code=303)
    async def save_settings(
        self,
        request: Request[Any, Any, Any],
        connection_id: FromPath[str],
        data: URLEncodedBody[SettingsForm],
    ) -> Response[Any]:
        """Name, toggles, OIDC client, attribute and group → role mapping."""
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                await service.update_settings(
                    settings_of(request),
                    _org_id(auth),
                    connection_id,
                    data,
                    known_roles=policy_of(request).roles,
                    actor_id=auth.user["id"],
                    ip=client_ip(request),
                )
        except LookupError:
            raise NotFoundException(NO_SUCH) from None
        except FormErrors as exc:
            if not wants_html(request):
                return _refuse(request, exc.errors, exc.status_code)
            data.oidc_client_secret = ""  # never echoed back
            return await _connection_page(
                request,
                auth,
                connection_id,
                settings_form=data,
                errors=exc.errors,
                status_code=exc.status_code,
            )
        return _back(request, f"{URL}/{connection_id}#settings", "Settings saved.")

    async def _status(
        self, request: Request[Any, Any, Any], connection_id: str, status: str
    ) -> Response[Any]:
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                name = await service.set_status(
                    _org_id(auth), connection_id, status, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except LookupError:
            raise NotFoundException(NO_SUCH) from None
        except service.Refused as exc:
            return _back(request, f"{URL}/{connection_id}", str(exc), "error")
        message = (
            f"{name} is active." if status == "active" else f"{name} is inactive: nobody signs in through it."
        )
        return _back(request, f"{URL}/{connection_id}", message)

    @post("/{connection_id:str}/activate", opt=MANAGE, status_code=303)
    async def activate(self, request: Request[Any, Any, Any], connection_id: FromPath[str]) -> Response[Any]:
        """Draft or inactive → active (only when the IdP is configured)."""
        return await self._status(request, connection_id, "active")

    @post("/{connection_id:str}/deactivate", opt=MANAGE, status_code=303)
    async def deactivate(
        self, request: Request[Any, Any, Any], connection_id: FromPath[str]
    ) -> Response[Any]:
        """Active → inactive."""
        return await self._status(request, connection_id, "inactive")

    @post("/{connection_id:str}/delete", opt=MANAGE, status_code=303)
    async def delete(self, request: Request[Any, Any, Any], connection_id: FromPath[str]) -> Response[Any]:
        """Delete a connection (its pending requests go with it)."""
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                name = await service.delete_connection(
                    _org_id(auth), connection_id, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except LookupError:
            raise NotFoundException(NO_SUCH) from None
        except service.Refused as exc:
            return _back(request, f"{URL}/{connection_id}", str(exc), "error")
        return _back(request, URL, f"{name} deleted.")

    @post("/{connection_id:str}/test", opt=MANAGE, status_code=200)
    async def test(self, request: Request[Any, Any, Any], connection_id: FromPath[str]) -> Response[Any]:
        """Test connection: a real sign-in at the IdP that ends on a result page and creates no session."""
        auth = require_auth(request)
        settings = settings_of(request)
        try:
            url, browser = await service.start_test(settings, _org_id(auth), connection_id)
        except LookupError:
            raise NotFoundException(NO_SUCH) from None
        except service.Refused as exc:
            return _back(request, f"{URL}/{connection_id}", str(exc), "error")
        # A page that moves on by itself, not a redirect: the form's redirect chain is held to its CSP
        # (form-action 'self') and the IdP is another origin.
        page = render(request, "portal/sso_continue.html", location=url, heading="Testing the connection")
        if browser is not None:
            page.set_cookie(sso_routes.browser_cookie(settings, browser))
        return page

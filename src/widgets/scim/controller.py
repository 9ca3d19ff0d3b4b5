"""SCIM provisioning pages: the organization's directories; create one; its base URL, token (shown once),
rotation and revocation, counts, group → role mapping, the last requests and a self-test.

Every route needs the ``scim`` feature besides its permission; the organization comes from the session, and a
directory or group id of another organization is a 404.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect

from policy import Feature, Permission, PolicyEngine
from portal.core import crypto, db
from portal.core.errors import InvalidInput
from portal.scim import service as scim
from portal.web.flash import flash
from portal.web.guard import Auth, require_auth
from portal.web.http import error_response, wants_html
from portal.web.pages import render, settings_of
from widgets.scim import service
from widgets.scim.schemas import CreateDirectoryForm, GroupRolesForm

if TYPE_CHECKING:
    from portal.web.registry import Widget

URL = "/ui/organization/scim"
READ = {"permission": Permission.SCIM_READ, "feature": Feature.SCIM}
MANAGE = {"permission": Permission.SCIM_MANAGE, "feature": Feature.SCIM}
NO_SUCH_DIRECTORY = "No such SCIM directory in this organization."
PROVIDER_TITLES = {
    "okta": "Okta",
    "entra": "Microsoft Entra ID",
    "jumpcloud": "JumpCloud",
    "onelogin": "OneLogin",
    "generic": "Other SCIM 2.0 client",
}


def _widget() -> Widget:
    from widgets.scim import WIDGET

    return WIDGET


def _org_id(auth: Auth) -> str:
    if auth.organization is None:  # pragma: no cover - the guard denies first
        raise LookupError("no active organization")
    return str(auth.organization["id"])


def _no_store(response: Response[Any]) -> Response[Any]:
    # A page with a token on it must not be kept by the browser or a proxy.
    response.headers["Cache-Control"] = "no-store"
    return response


#: A new token crosses the redirect after create/rotate sealed (AES-GCM) in a cookie for the directory's page
#: only, which that page reads once and deletes: a reload neither shows it again nor creates another.
TOKEN_COOKIE = "scim_once"  # noqa: S105 (a cookie name)
TOKEN_PURPOSE = "scim.new_token"  # noqa: S105 (a sealing purpose)


def _with_token(request: Request[Any, Any, Any], directory_id: str, token: str) -> Response[Any]:
    settings = settings_of(request)
    response = Redirect(f"{URL}/{directory_id}", status_code=303)
    response.set_cookie(
        TOKEN_COOKIE,
        crypto.seal(settings, TOKEN_PURPOSE, f"{directory_id} {token}".encode()),
        path=f"{URL}/{directory_id}",
        max_age=300,
        httponly=True,
        samesite="strict",
        secure=settings.secure,
    )
    return _no_store(response)


def _take_token(request: Request[Any, Any, Any], directory_id: str) -> str | None:
    raw = request.cookies.get(TOKEN_COOKIE)
    if not raw:
        return None
    try:
        directory, _, token = crypto.unseal(settings_of(request), TOKEN_PURPOSE, raw).decode().partition(" ")
    except Exception:  # noqa: BLE001 - a stale or forged cookie shows nothing
        return None
    return token if directory == directory_id and token else None


async def _list_page(
    request: Request[Any, Any, Any],
    auth: Auth,
    *,
    form: CreateDirectoryForm | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    directories = await scim.list_directories(_org_id(auth))
    rows = []
    for directory in directories:
        users, groups = await scim.counts(directory.id)
        rows.append({"directory": directory, "users": users, "groups": groups})
    return render(
        request,
        "scim/index.html",
        status_code=status_code,
        widget=_widget(),
        rows=rows,
        form=form or CreateDirectoryForm(),
        errors=errors or {},
        providers=PROVIDER_TITLES,
    )


async def _directory_page(
    request: Request[Any, Any, Any],
    auth: Auth,
    directory_id: str,
    *,
    new_token: str | None = None,
    guide: str | None = None,
    status_code: int = 200,
) -> Response[Any]:
    policy: PolicyEngine = request.app.state.policy
    try:
        view = await service.directory_view(settings_of(request), _org_id(auth), directory_id, guide)
    except LookupError:
        raise NotFoundException(NO_SUCH_DIRECTORY) from None
    page = render(
        request,
        "scim/directory.html",
        status_code=status_code,
        widget=_widget(),
        view=view,
        new_token=new_token,
        roles=list(policy.roles),
        providers=PROVIDER_TITLES,
        overlap=settings_of(request).scim_token_overlap,
    )
    if request.cookies.get(TOKEN_COOKIE):
        page.cookies.append(
            Cookie(key=TOKEN_COOKIE, value="", path=f"{URL}/{directory_id}", max_age=0, expires=0)
        )
        _no_store(page)
    return page


def _back(request: Request[Any, Any, Any], path: str, message: str, kind: str = "ok") -> Response[Any]:
    return flash(Redirect(path, status_code=303), settings_of(request), message, kind)


async def _directory(auth: Auth, directory_id: str) -> scim.Directory:
    try:
        return await scim.org_directory(_org_id(auth), directory_id)  # tenant check
    except LookupError:
        raise NotFoundException(NO_SUCH_DIRECTORY) from None


class ScimController(Controller):
    path = URL

    @get("", opt=READ)
    async def index(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The organization's directories; the create form for those who may manage them."""
        return await _list_page(request, require_auth(request))

    @post("", opt=MANAGE, status_code=303)
    async def create(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[CreateDirectoryForm]
    ) -> Response[Any]:
        """Create a directory and show its first token once (this response is the only place it appears)."""
        auth = require_auth(request)
        settings = settings_of(request)
        try:
            async with db.write_transaction():
                directory = await scim.create_directory(
                    _org_id(auth), data.name, data.provider, actor_id=auth.user["id"]
                )
                token = await scim.issue_token(
                    directory,
                    overlap=timedelta(seconds=settings.scim_token_overlap),
                    actor_id=auth.user["id"],
                )
        except InvalidInput as exc:
            errors = {exc.field: exc.message}
            if not wants_html(request):
                return error_response(
                    request, 400, exc.message, fields=[{"key": exc.field, "message": exc.message}]
                )
            return await _list_page(request, auth, form=data, errors=errors, status_code=400)
        return _with_token(request, directory.id, token)

    @get("/{directory_id:str}", opt=READ)
    async def show(
        self,
        request: Request[Any, Any, Any],
        directory_id: FromPath[str],
        guide: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """One directory: base URL, tokens, counts, groups and their roles, last requests, self-test, guide."""
        token = _take_token(request, directory_id)
        return await _directory_page(
            request, require_auth(request), directory_id, new_token=token, guide=guide
        )

    @post("/{directory_id:str}/rotate", opt=MANAGE, status_code=303)
    async def rotate(self, request: Request[Any, Any, Any], directory_id: FromPath[str]) -> Response[Any]:
        """A new token, shown once; the previous one keeps working for the overlap window."""
        auth = require_auth(request)
        directory = await _directory(auth, directory_id)
        settings = settings_of(request)
        async with db.write_transaction():
            token = await scim.issue_token(
                directory, overlap=timedelta(seconds=settings.scim_token_overlap), actor_id=auth.user["id"]
            )
        return _with_token(request, directory.id, token)

    @post("/{directory_id:str}/revoke", opt=MANAGE, status_code=303)
    async def revoke(self, request: Request[Any, Any, Any], directory_id: FromPath[str]) -> Response[Any]:
        """Every token of the directory stops working now."""
        auth = require_auth(request)
        directory = await _directory(auth, directory_id)
        async with db.write_transaction():
            count = await scim.revoke_tokens(directory, actor_id=auth.user["id"])
        message = f"{count} token{'s' if count != 1 else ''} revoked. The identity provider is refused until you rotate to a new token."
        return _back(request, f"{URL}/{directory.id}", message)

    @post("/{directory_id:str}/groups/{group_id:str}", opt=MANAGE, status_code=303)
    async def group_roles(
        self,
        request: Request[Any, Any, Any],
        directory_id: FromPath[str],
        group_id: FromPath[str],
        data: URLEncodedBody[GroupRolesForm],
    ) -> Response[Any]:
        """Map a group to roles; its members' roles change at once."""
        auth = require_auth(request)
        policy: PolicyEngine = request.app.state.policy
        directory = await _directory(auth, directory_id)
        try:
            async with db.write_transaction():
                await scim.set_group_roles(
                    directory, group_id, data.role_list, policy.roles, actor_id=auth.user["id"]
                )
        except LookupError:
            raise NotFoundException("No such group in this directory.") from None
        except InvalidInput as exc:
            return _back(request, f"{URL}/{directory.id}#groups", exc.message, "error")
        shown = ", ".join(sorted(set(data.role_list))) or "no role"
        return _back(
            request, f"{URL}/{directory.id}#groups", f"Members of the group now get {shown} from it."
        )

    @post("/{directory_id:str}/self-test", opt=MANAGE, status_code=303)
    async def self_test(self, request: Request[Any, Any, Any], directory_id: FromPath[str]) -> Response[Any]:
        """Run discovery and a create/delete round trip against the directory; the page shows each step."""
        auth = require_auth(request)
        directory = await _directory(auth, directory_id)
        result = await service.run_self_test(request.app, settings_of(request), directory)
        if result["ok"]:
            return _back(
                request,
                f"{URL}/{directory.id}#self-test",
                "Self-test passed: every step answered as expected.",
            )
        return _back(
            request, f"{URL}/{directory.id}#self-test", "Self-test failed: see the steps below.", "error"
        )

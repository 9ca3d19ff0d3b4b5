"""Domains pages: the organization's domains and their TXT records; add, "Verify now", delete.

Every route needs the ``domain_verification`` feature besides its permission (the settings permissions
need no feature of their own). The organization always comes from the session.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, URLEncodedBody
from litestar.response import Redirect

from policy import Feature, Permission
from portal.core import db
from portal.web.flash import flash
from portal.web.forms import FormErrors
from portal.web.guard import Auth, require_auth
from portal.web.http import error_response, wants_html
from portal.web.pages import render, settings_of
from portal.web.shell import client_ip
from widgets.domains import service
from widgets.domains.schemas import AddDomainForm

if TYPE_CHECKING:
    from portal.jobs import JobQueue
    from portal.web.registry import Widget

log = logging.getLogger("widgets.domains")

URL = "/ui/organization/domains"
READ = {"permission": Permission.SETTINGS_READ, "feature": Feature.DOMAIN_VERIFICATION}
MANAGE = {"permission": Permission.SETTINGS_MANAGE, "feature": Feature.DOMAIN_VERIFICATION}
NO_SUCH_DOMAIN = "No such domain in this organization."


def _widget() -> Widget:
    # The package's __init__ imports this module, so WIDGET is read at request time.
    from widgets.domains import WIDGET

    return WIDGET


def _org_id(auth: Auth) -> str:
    if auth.organization is None:  # pragma: no cover - the guard denies first
        raise LookupError("no active organization")
    return str(auth.organization["id"])


def _back(request: Request[Any, Any, Any], message: str, kind: str = "ok", anchor: str = "") -> Response[Any]:
    target = f"{URL}#{anchor}" if anchor else URL
    return flash(Redirect(target, status_code=303), settings_of(request), message, kind)


async def _page(
    request: Request[Any, Any, Any],
    auth: Auth,
    *,
    form: AddDomainForm | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    settings = settings_of(request)
    return render(
        request,
        "domains/index.html",
        status_code=status_code,
        widget=_widget(),
        domains=await service.list_domains(settings, _org_id(auth)),
        form=form or AddDomainForm(),
        errors=errors or {},
        window=service.describe_duration(settings.domain_verification_window),
        interval=service.describe_duration(settings.domain_check_interval),
        max_domains=service.MAX_DOMAINS,
    )


class DomainsController(Controller):
    path = URL

    @get("", opt=READ)
    async def show(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The domains, their records and status; the forms only for those who may manage them."""
        return await _page(request, require_auth(request))

    @post("", opt=MANAGE, status_code=303)
    async def add(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[AddDomainForm]
    ) -> Response[Any]:
        """Add a domain; bad input shows the form again with the reason and saves nothing."""
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                added = await service.add_domain(
                    settings_of(request), _org_id(auth), data, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except FormErrors as exc:
            errors, status = exc.errors, exc.status_code
        except Exception as exc:
            if not db.is_unique_violation(exc):
                raise
            # The same domain added twice at once: the (organization, domain) index refused the second.
            errors, status = {"domain": "This domain is already in your list."}, 400
        else:
            message = f"{added.display_name} added. Publish the TXT record below, then choose Verify now."
            return _back(request, message, anchor=added.id)
        if not wants_html(request):
            fields = [{"key": key, "message": message} for key, message in errors.items()]
            return error_response(request, status, " ".join(errors.values()), fields=fields)
        return await _page(request, auth, form=data, errors=errors, status_code=status)

    @post("/{domain_id:str}/verify", opt=MANAGE, status_code=303)
    async def verify(self, request: Request[Any, Any, Any], domain_id: FromPath[str]) -> Response[Any]:
        """Queue a check now ("Verify now"; "Try again" for a failed domain, with a new window)."""
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                check = await service.request_check(
                    _org_id(auth), domain_id, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except LookupError:
            raise NotFoundException(NO_SUCH_DOMAIN) from None
        except service.Refused as exc:
            return _back(request, str(exc), "error", anchor=domain_id)
        jobs: JobQueue = request.app.state.jobs
        name = service.display_name(check.domain)
        try:
            queued = await service.queue_check(jobs, check)
        except Exception:
            log.exception("could not queue a check of %s", check.domain)
            message = f"Could not start a check of {name}: the job queue is unavailable. Try again shortly."
            return _back(request, message, "error", anchor=domain_id)
        if not queued:
            return _back(request, f"A check of {name} is already queued.", anchor=domain_id)
        window = service.describe_duration(settings_of(request).domain_verification_window)
        lead = f"{name} is pending again for {window}. " if check.restarted else ""
        message = f"{lead}Checking the TXT record of {name}. The result appears below."
        return _back(request, message, "pending", anchor=domain_id)

    @post("/{domain_id:str}/delete", opt=MANAGE, status_code=303)
    async def delete(self, request: Request[Any, Any, Any], domain_id: FromPath[str]) -> Response[Any]:
        """Delete a domain (a verified one can then be verified by another organization)."""
        auth = require_auth(request)
        try:
            async with db.write_transaction():
                name = await service.delete_domain(
                    _org_id(auth), domain_id, actor_id=auth.user["id"], ip=client_ip(request)
                )
        except LookupError:
            raise NotFoundException(NO_SUCH_DOMAIN) from None
        return _back(request, f"{service.display_name(name)} deleted.")

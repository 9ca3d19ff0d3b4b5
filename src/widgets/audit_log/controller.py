"""Audit log pages: the active organization's audit events, filtered by actor, action and dates, in pages of
50 (newest first), each in words; the same filters exported as CSV.

Both routes need ``sk_org_audit_read`` and the ``audit_log`` feature; the organization comes from the
session, never from the query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get
from litestar.params import FromQuery
from litestar.response import Stream

from policy import Feature, Permission
from portal.core import clock
from portal.web.forms import FormErrors
from portal.web.guard import Auth, require_auth
from portal.web.http import error_response, wants_html
from portal.web.pages import render
from widgets.audit_log import service
from widgets.audit_log.schemas import Filters, Page

if TYPE_CHECKING:
    from portal.web.registry import Widget

URL = "/ui/organization/audit-log"
READ = {"permission": Permission.AUDIT_READ, "feature": Feature.AUDIT_LOG}
LABELS = {"actor": "Actor", "action": "Action", "since": "From", "until": "To", "cursor": "Page"}


def _widget() -> Widget:
    # The package's __init__ imports this module, so WIDGET is read at request time.
    from widgets.audit_log import WIDGET

    return WIDGET


def _org_id(auth: Auth) -> str:
    if auth.organization is None:  # pragma: no cover - the guard denies first
        raise LookupError("no active organization")
    return str(auth.organization["id"])


def _filters(actor: str, action: str, since: str, until: str, cursor: str = "") -> Filters:
    return Filters(
        actor=actor[:400], action=action[:100], since=since[:40], until=until[:40], cursor=cursor[:400]
    )


def _query(filters: Filters, **extra: str) -> str:
    values = {
        "actor": filters.actor,
        "action": filters.action,
        "since": filters.since,
        "until": filters.until,
    }
    values |= extra
    return urlencode({k: v for k, v in values.items() if v})


def _bad_input(request: Request[Any, Any, Any], exc: FormErrors) -> Response[Any]:
    fields = [{"key": key, "message": message} for key, message in exc.errors.items()]
    detail = " ".join(f"{LABELS.get(k, k)}: {m}" for k, m in exc.errors.items())
    return error_response(request, 400, detail, fields=fields)


class AuditLogController(Controller):
    path = URL

    @get("", opt=READ)
    async def show(
        self,
        request: Request[Any, Any, Any],
        actor: FromQuery[str] = "",
        action: FromQuery[str] = "",
        since: FromQuery[str] = "",
        until: FromQuery[str] = "",
        cursor: FromQuery[str] = "",
    ) -> Response[Any]:
        """The filter form and one page of entries; bad filters are shown next to their field (400)."""
        auth = require_auth(request)
        filters = _filters(actor, action, since, until, cursor)
        errors: dict[str, str] = {}
        try:
            page = await service.list_page(_org_id(auth), filters)
        except FormErrors as exc:
            if not wants_html(request):
                return _bad_input(request, exc)
            errors, page = exc.errors, Page(entries=[], next_cursor=None)
        if not wants_html(request):
            return Response(
                {
                    "entries": [
                        {
                            "id": e.id,
                            "at": e.at.isoformat(),
                            "action": e.action,
                            "entry": e.sentence,
                            "actor": e.actor,
                            "target": e.target,
                        }
                        for e in page.entries
                    ],
                    "next": f"{URL}?{_query(filters, cursor=page.next_cursor)}" if page.next_cursor else None,
                }
            )
        return render(
            request,
            "audit_log/index.html",
            status_code=400 if errors else 200,
            widget=_widget(),
            filters=filters,
            errors=errors,
            page=page,
            actions=service.ACTIONS,
            older=f"{URL}?{_query(filters, cursor=page.next_cursor)}" if page.next_cursor else None,
            newest=f"{URL}?{_query(filters)}" if filters.cursor else None,
            export=f"{URL}/export.csv" + (f"?{_query(filters)}" if _query(filters) else ""),
            filtered=bool(_query(filters)),
        )

    @get("/export.csv", opt=READ)
    async def export(
        self,
        request: Request[Any, Any, Any],
        actor: FromQuery[str] = "",
        action: FromQuery[str] = "",
        since: FromQuery[str] = "",
        until: FromQuery[str] = "",
    ) -> Response[Any]:
        """Every entry matching the filters as CSV (a download)."""
        auth = require_auth(request)
        organization = auth.organization or {}
        try:
            chunks = await service.export_csv(_org_id(auth), _filters(actor, action, since, until))
        except FormErrors as exc:
            return _bad_input(request, exc)
        name = f"audit-log-{organization.get('name', 'organization')}-{clock.utcnow():%Y%m%d-%H%M%S}.csv"
        return Stream(
            chunks,
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"},
        )

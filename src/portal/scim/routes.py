"""The SCIM 2.0 endpoints at ``/scim/v2/<directory id>/`` (RFC 7644), for the directory's IdP.

Public to the portal's guard (no session, no CSRF: the IdP is a server): every request carries the
directory's bearer token instead, checked here before anything else, then rate limited per directory.
Every answer is ``application/scim+json``; errors carry ``scimType`` and never a stack trace.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import unquote_plus

from litestar import Request, Response, route
from litestar.enums import HttpMethod
from litestar.params import FromPath

from policy import PolicyEngine
from portal.auth import accounts, ratelimit
from portal.core import db
from portal.core.settings import Settings
from portal.scim import errors, resources, service
from portal.scim.schema import (
    GROUPS,
    LIST_RESPONSE,
    MEDIA_TYPE,
    RESOURCE_TYPES,
    SCHEMAS,
    USERS,
    ResourceType,
    service_provider_config,
)

log = logging.getLogger("portal.scim")
PUBLIC = {"public": True, "exclude_from_csrf": True}
#: Largest request body accepted (a Group PUT with thousands of members fits).
MAX_BODY = 2 * 1024 * 1024
#: ``PORTAL_SCIM_RATE_LIMIT`` requests are allowed per this many seconds, per directory.
RATE_WINDOW = 1
METHODS = [HttpMethod.GET, HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH, HttpMethod.DELETE]


def scim_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[Any]:
    content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    return Response(content, status_code=status, media_type=MEDIA_TYPE, headers=headers or {})


def error_response(exc: errors.ScimError) -> Response[Any]:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="scim"'
    return scim_response(exc.body(), exc.status, headers)


def base_url(settings: Settings, directory_id: str) -> str:
    return f"{settings.public_url.rstrip('/')}/scim/v2/{directory_id}"


@route("/scim/v2/{directory_id:str}/{rest:path}", http_method=METHODS, opt=PUBLIC)
async def scim(
    request: Request[Any, Any, Any], directory_id: FromPath[str], rest: FromPath[str]
) -> Response[Any]:
    """Every SCIM request: authenticate, rate limit, dispatch, log (without bodies)."""
    return await _handle(request, directory_id, rest)


@route("/scim/v2/{directory_id:str}", http_method=METHODS, opt=PUBLIC)
async def scim_root(request: Request[Any, Any, Any], directory_id: FromPath[str]) -> Response[Any]:
    """The base URL itself names no resource."""
    return await _handle(request, directory_id, "/")


async def _handle(request: Request[Any, Any, Any], directory_id: str, rest: str) -> Response[Any]:
    settings: Settings = request.app.state.settings
    started = time.perf_counter()
    method = request.method.upper()
    # Logged decoded (``filter=userName eq "x"``), as an admin reads it; the page escapes it.
    shown = rest + (f"?{unquote_plus(request.url.query)}" if request.url.query else "")
    directory: service.Directory | None = None
    known = True
    try:
        try:
            directory = await service.authenticate(directory_id, request.headers.get("authorization"))
        except errors.ScimError:
            known = await service.get_directory(directory_id) is not None
            raise
        async with _bookkeeping():
            allowed = await ratelimit.count(
                f"scim:{directory_id}", settings.scim_rate_limit * RATE_WINDOW, RATE_WINDOW
            )
        if not allowed.allowed:
            raise errors.ScimError(
                429,
                f"Too many requests for this directory: retry in {allowed.retry_after_seconds} seconds.",
                headers={"Retry-After": str(allowed.retry_after_seconds)},
            )
        response = await _dispatch(request, settings, directory, method, rest)
    except errors.ScimError as exc:
        response = error_response(exc)
    except Exception:
        log.exception("SCIM %s %s failed", method, shown)
        response = error_response(errors.ScimError(500, "The server failed to handle this request."))
    status = response.status_code or 200
    if known:
        detail = ""
        if status >= 400 and isinstance(response.content, bytes) and response.content:
            try:
                parsed = json.loads(response.content)
                detail = str(parsed.get("scimType") or parsed.get("detail") or "")[:200]
            except ValueError:
                detail = ""
        try:
            async with _bookkeeping():
                await service.log_request(
                    directory_id,
                    method,
                    shown,
                    status,
                    detail,
                    int((time.perf_counter() - started) * 1000),
                )
        except Exception:
            log.exception("could not log a SCIM request")
    return response


async def _body(request: Request[Any, Any, Any]) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise errors.ScimError(413, f"The body is larger than {MAX_BODY // 1024} KiB.")
    if not raw.strip():
        raise errors.invalid_syntax("The request has no JSON body.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.invalid_syntax(f"The body is not valid JSON: {exc}.") from exc


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise errors.invalid_value(f"{name} must be a whole number.") from exc


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _list_query(settings: Settings, params: dict[str, Any]) -> service.Query:
    order = str(params.get("sortOrder") or "ascending").lower()
    if order not in {"ascending", "descending"}:
        raise errors.invalid_value("sortOrder must be ascending or descending.")
    count = _int(None if params.get("count") is None else str(params.get("count")), "count", 100)
    start = _int(None if params.get("startIndex") is None else str(params.get("startIndex")), "startIndex", 1)
    flt = params.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise errors.invalid_filter("filter must be a string.")
    sort_by = params.get("sortBy")
    return service.Query(
        filter=flt if flt else None,
        sort_by=str(sort_by) if sort_by else None,
        descending=order == "descending",
        start_index=max(1, start),
        # RFC 7644 §3.4.2.4: negative means 0; above the server's maximum, the maximum (ServiceProviderConfig).
        count=min(max(0, count), settings.scim_max_page_size),
    )


def _projection(params: dict[str, Any]) -> tuple[list[str], list[str]]:
    attributes = _names(params.get("attributes"))
    excluded = _names(params.get("excludedAttributes"))
    if attributes and excluded:
        raise errors.invalid_value("Use attributes or excludedAttributes, not both.")
    return attributes, excluded


def _one(
    rt: ResourceType, resource: dict[str, Any], params: dict[str, Any], status: int = 200
) -> Response[Any]:
    attributes, excluded = _projection(params)
    headers = {"ETag": resource["meta"]["version"]}
    if status == 201:
        headers["Location"] = resource["meta"]["location"]
    return scim_response(resources.project(rt, resource, attributes, excluded), status, headers)


def _list(
    rt: ResourceType | None, items: list[dict[str, Any]], total: int, start: int, params: dict[str, Any]
) -> Response[Any]:
    attributes, excluded = _projection(params) if rt else ([], [])
    shown = [resources.project(rt, item, attributes, excluded) for item in items] if rt else items
    return scim_response(
        {
            "schemas": [LIST_RESPONSE],
            "totalResults": total,
            "startIndex": start,
            "itemsPerPage": len(shown),
            "Resources": shown,
        }
    )


async def _dispatch(
    request: Request[Any, Any, Any], settings: Settings, directory: service.Directory, method: str, rest: str
) -> Response[Any]:
    parts = [p for p in rest.split("/") if p]
    base = base_url(settings, directory.id)
    params: dict[str, Any] = dict(request.query_params)
    policy: PolicyEngine = request.app.state.policy
    if not parts:
        raise errors.not_found(
            "Nothing here: use /Users, /Groups, /Schemas, /ResourceTypes, /ServiceProviderConfig."
        )
    head = parts[0]
    if head == ".search" and len(parts) == 1:
        if method != "POST":
            raise errors.ScimError(405, "Use POST for .search.")
        return await _root_search(request, settings, directory, base)
    if head in {"ServiceProviderConfig", "ResourceTypes", "Schemas"}:
        if method != "GET":
            raise errors.ScimError(405, f"{head} is read-only.")
        return _discovery(settings, base, head, parts[1:])
    rt = {"users": USERS, "groups": GROUPS}.get(head.lower())
    if rt is None or len(parts) > 2:
        raise errors.not_found(f"No endpoint /{'/'.join(parts)}.")
    if len(parts) == 1:
        if method == "GET":
            query = _list_query(settings, params)
            total, items = await service.search(directory, rt, query, base)
            return _list(rt, items, total, query.start_index, params)
        if method == "POST":
            body = await _body(request)
            async with _writing():
                if rt is USERS:
                    created = await service.create_user(directory, body, base, policy.roles)
                else:
                    created = await service.create_group(directory, body, base)
            return _one(rt, created, params, 201)
        raise errors.ScimError(405, f"{method} is not allowed on /{head}.")
    item = parts[1]
    if item == ".search":
        if method != "POST":
            raise errors.ScimError(405, "Use POST for .search.")
        body = await _body(request)
        if not isinstance(body, dict):
            raise errors.invalid_syntax("The body must be a JSON object.")
        query = _list_query(settings, body)
        total, items = await service.search(directory, rt, query, base)
        return _list(rt, items, total, query.start_index, body)
    if_match = request.headers.get("if-match")
    if method == "GET":
        found = await (service.get_user if rt is USERS else service.get_group)(directory, item, base)
        if_none = request.headers.get("if-none-match")
        if if_none and found["meta"]["version"] in {t.strip() for t in if_none.split(",")}:
            return Response(b"", status_code=304, headers={"ETag": found["meta"]["version"]})
        return _one(rt, found, params)
    if method in {"PUT", "PATCH"}:
        body = await _body(request)
        async with _writing():
            if rt is USERS:
                fn = service.replace_user if method == "PUT" else service.patch_user
                saved = await fn(directory, item, body, base, policy.roles, if_match)
            else:
                gfn = service.replace_group if method == "PUT" else service.patch_group
                saved = await gfn(directory, item, body, base, if_match)
        return _one(rt, saved, params)
    if method == "DELETE":
        async with _writing():
            if rt is USERS:
                row = await service._user_row(directory, item)
                service.check_version(row, if_match)
                await service.delete_user(directory, item)
            else:
                grow = await service._group_row(directory, item)
                service.check_version(grow, if_match)
                await service.delete_group(directory, item)
        return Response(b"", status_code=204)
    raise errors.ScimError(405, f"{method} is not allowed here.")


async def _root_search(
    request: Request[Any, Any, Any], settings: Settings, directory: service.Directory, base: str
) -> Response[Any]:
    """POST /.search (RFC 7644 §3.4.3): Users, then Groups, as one list."""
    body = await _body(request)
    if not isinstance(body, dict):
        raise errors.invalid_syntax("The body must be a JSON object.")
    query = _list_query(settings, body)
    attributes, excluded = _projection(body)
    found: list[tuple[ResourceType, int, service.Query]] = []
    problems: list[errors.ScimError] = []
    for rt in (USERS, GROUPS):
        probe = service.Query(filter=query.filter, sort_by=None, count=0)
        try:
            total, _ = await service.search(directory, rt, probe, base)
        except errors.ScimError as exc:
            # A filter naming an attribute of one resource type only matches none of the other.
            problems.append(exc)
            continue
        found.append((rt, total, query))
    if len(problems) == 2:
        raise problems[0]
    total = sum(n for _, n, _ in found)
    items: list[dict[str, Any]] = []
    skip, want = query.start_index - 1, query.count
    for rt, n, q in found:
        if skip >= n:
            skip -= n
            continue
        if want <= 0:
            break
        page = service.Query(q.filter, q.sort_by if rt is USERS else None, q.descending, skip + 1, want)
        try:
            _, rows = await service.search(directory, rt, page, base)
        except errors.ScimError:
            page = service.Query(q.filter, None, q.descending, skip + 1, want)
            _, rows = await service.search(directory, rt, page, base)
        items.extend(resources.project(rt, row, attributes, excluded) for row in rows)
        want -= len(rows)
        skip = 0
    return scim_response(
        {
            "schemas": [LIST_RESPONSE],
            "totalResults": total,
            "startIndex": query.start_index,
            "itemsPerPage": len(items),
            "Resources": items,
        }
    )


def _bookkeeping() -> Any:
    """The rate-limit counter and the request log: single statements on unlogged tables (portal_0020), so on
    PostgreSQL they commit by themselves without waiting for a WAL flush."""
    return db.bookkeeping()


class _writing:
    """A write transaction; a unique-key clash inside it (a concurrent create) is a 409 ``uniqueness``."""

    def __init__(self) -> None:
        self._tx = db.write_transaction()
        self._audits = accounts.batched_audit()

    async def __aenter__(self) -> None:
        await self._tx.__aenter__()
        await self._audits.__aenter__()

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            await self._audits.__aexit__(kind, exc, tb)
        except BaseException as flushed:  # the audit rows failed: roll back with that error
            await self._tx.__aexit__(type(flushed), flushed, flushed.__traceback__)
            raise
        await self._tx.__aexit__(kind, exc, tb)
        if exc is not None and not isinstance(exc, errors.ScimError) and db.is_unique_violation(exc):
            raise errors.uniqueness("That value is already taken in this directory.") from exc
        return False


def _discovery(settings: Settings, base: str, head: str, rest: list[str]) -> Response[Any]:
    if head == "ServiceProviderConfig":
        if rest:
            raise errors.not_found("ServiceProviderConfig has no sub-resources.")
        return scim_response(service_provider_config(base, settings.scim_max_page_size))
    if head == "ResourceTypes":
        docs = {rt.name: rt.document(base) for rt in RESOURCE_TYPES}
    else:
        docs = {s.id: s.document(base) for s in SCHEMAS}
    if rest:
        if len(rest) > 1 or rest[0] not in docs:
            raise errors.not_found(f"No {head} {'/'.join(rest)}.")
        return scim_response(docs[rest[0]])
    return _list(None, list(docs.values()), len(docs), 1, {})


HANDLERS = [scim, scim_root]

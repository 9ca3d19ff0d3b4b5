"""The management API's plumbing: bearer keys and scopes, rate limits, Idempotency-Key, body size, RFC 9457
problem responses, cursor pages and ETags. Handlers stay thin and call the widgets' services."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from policy import PolicyEngine
from portal.api import keys
from portal.auth import ratelimit
from portal.core import clock, crypto, db
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import ApiIdempotency
from portal.web.forms import FormErrors
from portal.web.http import request_id_of

log = logging.getLogger("portal.api")

PROBLEM = "application/problem+json"
#: Largest request body accepted (413 above).
MAX_BODY = 64 * 1024
IDEMPOTENCY_TTL = timedelta(hours=24)
#: crypto purpose of the stored first answers (api_idempotency.response_body).
IDEMPOTENCY_PURPOSE = "api.idempotency_response"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
#: Response headers a replayed answer repeats.
_REPLAYED = ("content-type", "etag", "location")
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    428: "Precondition required",
    429: "Too many requests",
    500: "Internal server error",
}


class FieldError(msgspec.Struct):
    """One bad field: a dotted path into the body or a query parameter name."""

    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem: ``application/problem+json``."""

    type: str
    title: str
    status: int
    detail: str = ""
    #: Each bad field, for 422.
    errors: list[FieldError] = msgspec.field(default_factory=list)
    #: The scope a 403 is missing.
    missing_scope: str | None = None
    request_id: str = ""


class ApiError(Exception):
    """Stop a request with a problem response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        missing_scope: str | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}
        self.missing_scope = missing_scope
        super().__init__(detail)


def not_found(what: str = "object") -> ApiError:
    """404, also for ids that belong to another organization than the key's."""
    return ApiError(404, f"No such {what}.")


def problem_body(status: int, detail: str, scope: Scope, **extra: Any) -> bytes:
    slug = TITLES.get(status, "error").lower().replace(" ", "-")
    problem = Problem(
        type=f"https://portal.invalid/problems/{slug}" if status != 500 else "about:blank",
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        request_id=request_id_of(scope),
        **extra,
    )
    return msgspec.json.encode(problem)


def problem(request: Request[Any, Any, Any], exc: ApiError) -> Response[bytes]:
    body = problem_body(
        exc.status, exc.detail, request.scope, errors=exc.errors, missing_scope=exc.missing_scope
    )
    return Response(body, status_code=exc.status, media_type=PROBLEM, headers=exc.headers)


_PATH = re.compile(r"at `\$\.?(?:data\.?)?([^`]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")


def _field_errors(exc: ValidationException) -> list[FieldError]:
    found: list[FieldError] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "Invalid value."))
        key = str(item.get("key", ""))
        if key in {"", "data"}:
            # msgspec names the place in the message: "... - at `$.session_policy.source`".
            match = _PATH.search(message) or _UNKNOWN.search(message)
            key = match.group(1) if match else ""
        message = message.split(" - at `", 1)[0]
        found.append(FieldError(field=key or "body", message=message))
    if not found:
        found.append(FieldError(field="body", message=str(exc.detail)))
    return found


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Every error of the API as a problem; never a stack trace."""
    if isinstance(exc, ApiError):
        return problem(request, exc)
    if isinstance(exc, FormErrors):
        status = 422 if exc.status_code == 400 else exc.status_code
        errors = [FieldError(field=k, message=v) for k, v in exc.errors.items()]
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return problem(request, ApiError(status, detail, errors=errors))
    if isinstance(exc, InvalidInput):
        return problem(
            request, ApiError(422, str(exc), errors=[FieldError(field=exc.field, message=exc.message)])
        )
    if isinstance(exc, ValidationException):
        if "JSON is malformed" in str(exc.detail) or "malformed" in str(exc.extra):
            return problem(request, ApiError(400, "The body is not valid JSON."))
        errors = _field_errors(exc)
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return problem(request, ApiError(422, detail, errors=errors))
    if isinstance(exc, HTTPException):
        status = exc.status_code
        detail = exc.detail if status < 500 else TITLES[500]
        headers = dict(exc.headers or {})
        return problem(request, ApiError(status, detail, headers=headers))
    if db.is_unique_violation(exc):
        # A concurrent request took the same name, external id, email or membership between our check and
        # the write: the transaction rolled back; retrying gets the ordinary 422 naming the field.
        return problem(
            request, ApiError(409, "A concurrent change conflicted with this one. Retry the request.")
        )
    log.exception("unhandled API error request_id=%s", request_id_of(request.scope), exc_info=exc)
    return problem(
        request, ApiError(500, "The error has been logged. Quote the request id if you report it.")
    )


# --- who is calling -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """The API key of this request."""

    key_id: str
    scopes: frozenset[str]
    #: The one organization a bound key may reach, else None.
    organization_id: str | None
    ip: str


def caller_of(request: Request[Any, Any, Any]) -> Caller:
    caller: Caller = request.scope["state"]["api_caller"]
    return caller


def portal_state(request: Request[Any, Any, Any]) -> Any:
    """The portal app's state (settings, policy, jobs), handed down by the /api/v1 mount."""
    return request.scope["state"]["portal_state"]


def settings_of(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = portal_state(request).settings
    return settings


def policy_of(request: Request[Any, Any, Any]) -> PolicyEngine:
    policy: PolicyEngine = portal_state(request).policy
    return policy


async def _send_problem(send: Send, scope: Scope, status: int, detail: str, **extra: Any) -> None:
    headers = extra.pop("headers", {})
    body = problem_body(status, detail, scope, **extra)
    raw_headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class ApiMiddleware:
    """For every matched API route: bearer key (401), scope (403), rate limit (429), body size (413) and
    Idempotency-Key on POST, in that order."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        handler = scope.get("route_handler")
        opt: dict[str, Any] = getattr(handler, "opt", {}) or {}
        if opt.get("public"):
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization") or ""
        kind, _, presented = authorization.partition(" ")
        challenge = 'Bearer realm="portal"'
        if kind.lower() != "bearer" or not presented.strip():
            await _send_problem(
                send,
                scope,
                401,
                "Send an API key: Authorization: Bearer portal_sk_...",
                headers={"WWW-Authenticate": challenge},
            )
            return
        key = await keys.authenticate(presented.strip())
        if key is None:
            await _send_problem(
                send,
                scope,
                401,
                "The API key is unknown or revoked.",
                headers={"WWW-Authenticate": f'{challenge}, error="invalid_token"'},
            )
            return
        needed = opt.get("scope")
        if not isinstance(needed, str):
            # Fail closed: a route that declares no scope is nobody's.
            await _send_problem(send, scope, 403, "This route declares no scope and is closed.")
            return
        if needed not in key["scopes"]:
            await _send_problem(
                send,
                scope,
                403,
                f"The API key lacks the scope {needed}.",
                missing_scope=needed,
            )
            return
        client = scope.get("client")
        caller = Caller(
            key_id=key["id"],
            scopes=frozenset(key["scopes"]),
            organization_id=key["organization_id"],
            ip=client[0] if client else "",
        )
        scope["state"]["api_caller"] = caller
        settings: Settings = scope["state"]["portal_state"].settings
        limit, window = settings.api_rate_limit, settings.api_rate_window
        async with db.bookkeeping():
            result = await ratelimit.count(f"api:{caller.key_id}", limit, window)
        rate_headers = {
            "RateLimit-Policy": f'"per-key";q={limit};w={window}',
            "RateLimit": f'"per-key";r={result.remaining};t={result.reset_seconds}',
        }
        if not result.allowed:
            await _send_problem(
                send,
                scope,
                429,
                f"This key made more than {limit} requests in {window} seconds. "
                f"Retry in {result.retry_after_seconds} seconds.",
                headers={**rate_headers, "Retry-After": str(result.retry_after_seconds)},
            )
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            await _send_problem(
                send, scope, 413, f"The body is larger than {MAX_BODY} bytes.", headers=rate_headers
            )
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableScopeHeaders.from_message(message)
                for name, value in rate_headers.items():
                    out[name] = value
            await send(message)

        if scope.get("method") == "POST" and _header(scope, b"idempotency-key") is not None:
            await self._idempotent(scope, receive, send_with_headers, caller)
            return
        await self.app(scope, receive, send_with_headers)

    async def _idempotent(self, scope: Scope, receive: Receive, send: Send, caller: Caller) -> None:
        """Same key and same request: the first answer again. Same key, other request: 422."""
        raw_key = _header(scope, b"idempotency-key") or ""
        if not _IDEMPOTENCY_KEY.match(raw_key):
            await _send_problem(
                send,
                scope,
                422,
                "Idempotency-Key: use 1 to 255 visible ASCII characters.",
                errors=[
                    FieldError(field="Idempotency-Key", message="Use 1 to 255 visible ASCII characters.")
                ],
            )
            return
        body = b""
        more = True
        while more:
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.disconnect":
                return
            body += bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if len(body) > MAX_BODY:
                await _send_problem(send, scope, 413, f"The body is larger than {MAX_BODY} bytes.")
                return
        digest = hashlib.sha256()
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        for part in (str(scope.get("method", "")), str(scope.get("path", "")), query):
            digest.update(part.encode() + b"\0")
        digest.update(body)
        request_hash = digest.hexdigest()
        scope_key = f"{caller.key_id}:{raw_key}"
        now = clock.utcnow()
        await ApiIdempotency.delete().where(ApiIdempotency.expires_at <= now)
        try:
            await ApiIdempotency.insert(
                ApiIdempotency(
                    scope_key=scope_key,
                    request_hash=request_hash,
                    created_at=now,
                    expires_at=now + IDEMPOTENCY_TTL,
                )
            )
        except Exception as exc:
            if not db.is_unique_violation(exc):
                raise
            await self._replay(scope, send, scope_key, request_hash)
            return

        replayed_body = False

        async def replay_receive() -> Any:
            nonlocal replayed_body
            if not replayed_body:
                replayed_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 500
        headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.decode("latin-1").lower() in _REPLAYED:
                        headers[name.decode("latin-1").lower()] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        finally:
            if status >= 500 or status == 429:
                # Not an answer worth keeping: the client may retry with the same key.
                await ApiIdempotency.delete().where(ApiIdempotency.scope_key == scope_key)
            else:
                # Sealed: a first answer may carry a secret shown once (a webhook secret, a setup link).
                settings: Settings = scope["state"]["portal_state"].settings
                await ApiIdempotency.update(
                    {
                        ApiIdempotency.status: status,
                        ApiIdempotency.response_body: crypto.seal(
                            settings, IDEMPOTENCY_PURPOSE, b"".join(chunks)
                        ),
                        ApiIdempotency.response_headers: headers,
                    }
                ).where(ApiIdempotency.scope_key == scope_key)

    async def _replay(self, scope: Scope, send: Send, scope_key: str, request_hash: str) -> None:
        row = (
            await ApiIdempotency.select()
            .where(ApiIdempotency.scope_key == scope_key)
            .first()
            .output(load_json=True)
        )
        if row is None:  # expired between the insert and now: extremely unlikely; ask for a retry
            await _send_problem(send, scope, 409, "Retry the request.")
            return
        if row["request_hash"] != request_hash:
            await _send_problem(
                send,
                scope,
                422,
                "This Idempotency-Key was used with another request. Use a new key for a new request.",
                errors=[FieldError(field="Idempotency-Key", message="Already used with another request.")],
            )
            return
        if row["status"] is None:
            await _send_problem(
                send, scope, 409, "A request with this Idempotency-Key is still being processed. Retry later."
            )
            return
        settings: Settings = scope["state"]["portal_state"].settings
        body = crypto.unseal(settings, IDEMPOTENCY_PURPOSE, str(row["response_body"]))
        raw_headers = [(k.encode(), str(v).encode()) for k, v in (row["response_headers"] or {}).items()]
        raw_headers += [(b"content-length", str(len(body)).encode()), (b"idempotent-replayed", b"true")]
        await send({"type": "http.response.start", "status": int(row["status"]), "headers": raw_headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


# --- pages and versions ---------------------------------------------------------------------------------

MAX_LIMIT = 100


def encode_cursor(*parts: str) -> str:
    """An opaque position in a list."""
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None, size: int) -> tuple[str, ...] | None:
    """The parts of a cursor; :class:`ApiError` 422 for one that is not ours."""
    if not raw:
        return None
    try:
        parts = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        parts = None
    if not isinstance(parts, list) or len(parts) != size or not all(isinstance(p, str) for p in parts):
        raise ApiError(
            422,
            "cursor: not a cursor of this list.",
            errors=[FieldError("cursor", "Not a cursor of this list.")],
        )
    return tuple(parts)


def next_link(request: Request[Any, Any, Any], cursor: str | None) -> str | None:
    """The absolute URL of the next page (same query, new cursor), or None on the last page."""
    if cursor is None:
        return None
    from urllib.parse import urlencode

    query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    query.append(("cursor", cursor))
    base = settings_of(request).public_url.rstrip("/")
    return f"{base}/api/v1{request.scope['path']}?{urlencode(query)}"


def page_headers(link: str | None) -> dict[str, str]:
    return {"Link": f'<{link}>; rel="next"'} if link else {}


def etag_of(value: msgspec.Struct) -> str:
    """A strong ETag: the SHA-256 of the resource's JSON."""
    return '"' + hashlib.sha256(msgspec.json.encode(value)).hexdigest()[:32] + '"'


def check_if_match(request: Request[Any, Any, Any], current: msgspec.Struct) -> None:
    """412 when ``If-Match`` names another version than the current one (``*`` matches any)."""
    wanted = request.headers.get("if-match")
    if wanted is None:
        return
    tags = [t.strip() for t in wanted.split(",")]
    if "*" in tags or etag_of(current) in tags:
        return
    raise ApiError(
        412, "The resource changed since you read it (If-Match does not match its ETag). Read it again."
    )

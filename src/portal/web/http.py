"""Cross-cutting web plumbing: request ids, one log line per request, security headers, error pages."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any
from urllib.parse import unquote

from litestar import MediaType, Request, Response
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from portal.core.settings import Settings

log = logging.getLogger("portal.request")

CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"


def request_id_of(scope: Scope) -> str:
    """The id given to this request by :class:`RequestLogMiddleware`."""
    return str(scope.get("state", {}).get("request_id", "-"))


class RequestLogMiddleware:
    """Give each HTTP request an id (``X-Request-Id``) and log one line when its response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        # Read now: a mounted app (``/api/v1``) sees its own part of the path in the scope.
        path = scope.get("path", "-")
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders.from_message(message)["X-Request-Id"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log.info(
                "%s %s %s %.1fms request_id=%s",
                scope.get("method", "-"),
                path,
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
            )


def security_headers(settings: Settings) -> Any:
    """A ``before_send`` hook that puts DESIGN §8's headers on every response, errors included."""
    headers = {
        "Content-Security-Policy": CSP,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if settings.secure:
        headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            out = MutableScopeHeaders.from_message(message)
            for name, value in headers.items():
                out[name] = value

    return before_send


def wants_html(request: Request[Any, Any, Any]) -> bool:
    """True for a browser navigation; API clients (JSON or no Accept) get JSON errors."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept


_TITLES = {
    400: "Bad request",
    401: "Sign-in required",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    413: "Request too large",
    429: "Too many requests",
    500: "Something went wrong",
}


def error_response(request: Request[Any, Any, Any], status: int, detail: str, **extra: Any) -> Response[Any]:
    """An error as an HTML page or a JSON object, never with a stack trace."""
    title = _TITLES.get(status, "Error")
    request_id = request_id_of(request.scope)
    if wants_html(request):
        context = {"status": status, "title": title, "detail": detail, "request_id": request_id, **extra}
        return Template("portal/error.html", context=context, status_code=status)
    body: dict[str, Any] = {"error": {"status": status, "title": title, "detail": detail, **extra}}
    body["error"]["request_id"] = request_id
    return Response(body, status_code=status, media_type=MediaType.JSON)


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Expected HTTP errors: the status and a human detail (validation errors name their field).

    Signed-out browsers are sent to the login page with a way back; API clients get 401.
    """
    from portal.web.guard import Denied, SignInRequired, login_url

    if isinstance(exc, SignInRequired) and wants_html(request):
        # The path as the browser asked for it: the router drops a trailing slash from scope["path"].
        raw = request.scope.get("raw_path")
        path = unquote(raw.decode("latin-1")) if isinstance(raw, bytes) and raw else request.url.path
        return Redirect(login_url(path, request.url.query), status_code=303)
    extra: dict[str, Any] = {}
    if isinstance(exc, Denied):
        extra["reason"] = exc.decision.reason.value if exc.decision.reason else None
        extra["missing"] = exc.decision.missing
    if exc.extra:
        extra["fields"] = exc.extra
    detail = exc.detail if exc.status_code < 500 else _TITLES[500]
    return error_response(request, exc.status_code, detail, **extra)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Unexpected errors: logged with the request id; the user sees only that id."""
    request_id = request_id_of(request.scope)
    logging.getLogger("portal.error").exception("unhandled error request_id=%s", request_id, exc_info=exc)
    return error_response(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "The error has been logged. Quote the request id if you report it.",
    )

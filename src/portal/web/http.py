"""Cross-cutting web plumbing: request ids, one log line per request, security headers, error pages."""

from __future__ import annotations

import logging
import random
import time
from typing import Any, cast
from urllib.parse import unquote

from litestar import MediaType, Request, Response
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from portal.core import db
from portal.core.settings import Settings

log = logging.getLogger("portal.request")

CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"


def request_id_of(scope: Scope) -> str:
    """The id given to this request by :class:`RequestLogMiddleware`."""
    return str(scope.get("state", {}).get("request_id", "-"))


def security_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    """DESIGN §8's headers, encoded once: :class:`RequestLogMiddleware` puts them on every response."""
    headers = {
        "content-security-policy": CSP,
        "x-frame-options": "DENY",
        "referrer-policy": "same-origin",
        "x-content-type-options": "nosniff",
        "cross-origin-opener-policy": "same-origin",
    }
    if settings.secure:
        headers["strict-transport-security"] = "max-age=63072000; includeSubDomains"
    return [(name.encode(), value.encode()) for name, value in headers.items()]


class RequestLogMiddleware:
    """The outermost layer, plain ASGI: give each HTTP request an id (``X-Request-Id``), put the security
    headers on every response (errors and unmatched paths included), and log one line when the response
    starts."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.app = app
        self.headers = headers or []
        self.names = {name for name, _ in self.headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        # An id to quote, not a secret: Python's PRNG saves a system call per request.
        request_id = f"{random.getrandbits(64):016x}"
        scope.setdefault("state", {})["request_id"] = request_id
        # Read now: a mounted app (``/api/v1``) sees its own part of the path in the scope.
        path = scope.get("path", "-")
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = cast("list[tuple[bytes, bytes]]", message.setdefault("headers", []))
                names = self.names
                if any(name.lower() in names for name, _ in headers):
                    # A response that set one of these itself: ours replace it.
                    headers[:] = [(n, v) for n, v in headers if n.lower() not in names]
                headers.extend(self.headers)
                headers.append((b"x-request-id", request_id.encode()))
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
    503: "Temporarily unavailable",
}
#: Seconds a client is asked to wait when the database is not answering.
UNAVAILABLE_RETRY_AFTER = 5


def error_response(request: Request[Any, Any, Any], status: int, detail: str, **extra: Any) -> Response[Any]:
    """An error as an HTML page or a JSON object, never with a stack trace."""
    title = _TITLES.get(status, "Error")
    request_id = request_id_of(request.scope)
    if wants_html(request):
        context = {"status": status, "title": title, "detail": detail, "request_id": request_id, **extra}
        if request.scope.get("state", {}).get("auth") is not None:
            # Signed in: the error keeps the portal's header and navigation (issue 16).
            from portal.web.pages import render

            return render(request, "portal/error_shell.html", status_code=status, **context)
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
        ended = request.scope.get("state", {}).get("session_ended")
        return Redirect(login_url(path, request.url.query, ended), status_code=303)
    extra: dict[str, Any] = {}
    if isinstance(exc, Denied):
        extra["reason"] = exc.decision.reason.value if exc.decision.reason else None
        extra["missing"] = exc.decision.missing
    if exc.extra:
        extra["fields"] = exc.extra
    detail = exc.detail if exc.status_code < 500 else _TITLES[500]
    return error_response(request, exc.status_code, detail, **extra)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Unexpected errors: logged with the request id; the user sees only that id. The database being out of
    reach is not a bug: a 503 saying so, with Retry-After, and one log line without a traceback."""
    request_id = request_id_of(request.scope)
    if db.is_unavailable(exc):
        logging.getLogger("portal.error").warning(
            "database unavailable request_id=%s: %s: %s", request_id, type(exc).__name__, exc
        )
        response = error_response(
            request,
            HTTP_503_SERVICE_UNAVAILABLE,
            "The portal cannot reach its database at the moment; please try again in a few seconds.",
        )
        response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
        return response
    logging.getLogger("portal.error").exception("unhandled error request_id=%s", request_id, exc_info=exc)
    return error_response(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "The error has been logged. Quote the request id if you report it.",
    )

"""Cross-cutting web plumbing: request ids, one log line per request, security headers, error pages."""

from __future__ import annotations

import logging
import random
import time
from typing import Any, cast
from urllib.parse import unquote

from litestar import MediaType, Request, Response
from litestar.datastructures import UploadFile
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)
from litestar.utils.scope.state import ScopeState

from portal.core import db
from portal.core.settings import Settings

log = logging.getLogger("portal.request")

CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"


def request_id_of(scope: Scope) -> str:
    """The id given to this request by :class:`RequestLogMiddleware`."""
    return str(scope.get("state", {}).get("request_id", "-"))


def _security_headers(settings: Settings) -> dict[str, str]:
    headers = {
        "content-security-policy": CSP,
        "x-frame-options": "DENY",
        "referrer-policy": "same-origin",
        "x-content-type-options": "nosniff",
        "cross-origin-opener-policy": "same-origin",
    }
    if settings.secure:
        headers["strict-transport-security"] = "max-age=63072000; includeSubDomains"
    return headers


def _encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in headers.items()]


def security_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    """DESIGN §8's headers, encoded once: :class:`RequestLogMiddleware` puts them on every response."""
    return _encode(_security_headers(settings))


def framed_headers(settings: Settings) -> list[tuple[bytes, bytes]] | None:
    """Issue 14: the headers of setup-link pages, which the configured origins may frame (None: nobody may)."""
    if not settings.admin_portal_frame_ancestors:
        return None
    headers = _security_headers(settings)
    ancestors = " ".join(settings.admin_portal_frame_ancestors)
    headers["content-security-policy"] = CSP.replace("frame-ancestors 'none'", f"frame-ancestors {ancestors}")
    del headers["x-frame-options"]
    return _encode(headers)


class RequestLogMiddleware:
    """The outermost layer, plain ASGI: give each HTTP request an id (``X-Request-Id``), put the security
    headers on every response (errors and unmatched paths included), and log one line when the response
    starts. Setup-link pages get ``framed`` headers (issue 14), logos ``logo`` ones; with ``partition``,
    ``SameSite=None`` cookies are also ``Partitioned``."""

    def __init__(
        self,
        app: ASGIApp,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        framed: list[tuple[bytes, bytes]] | None = None,
        logo: list[tuple[bytes, bytes]] | None = None,
        partition: bool = False,
    ) -> None:
        self.app = app
        self.headers = headers or []
        self.framed = framed
        self.logo = logo
        self.partition = partition
        self.names = {name for name, _ in (*self.headers, *(framed or ()), *(logo or ()))}

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
                chosen = self.headers
                if self.framed is not None and frameable(path, scope):
                    chosen = self.framed
                elif self.logo is not None and path.startswith("/brand/") and path.endswith("/logo"):
                    chosen = self.logo
                headers.extend(chosen)
                headers.append((b"x-request-id", request_id.encode()))
                if self.partition:
                    _partition_cookies(message)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            close_uploads(scope)
            path = scope.get("path", "-")
            if path.startswith("/setup/"):
                path = "/setup/<token>"  # issue 14: a link's token never reaches the log
            log.info(
                "%s %s %s %.1fms request_id=%s",
                scope.get("method", "-"),
                path,
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
            )


def _partition_cookies(message: Message) -> None:
    """Issue 14: every ``SameSite=None`` cookie (the setup session's, CSRF, flash) also gets ``Partitioned``
    (CHIPS), so that it is kept in a third-party frame where browsers block unpartitioned cookies. Litestar's
    CSRF cookie has no such option, hence the rewrite here."""
    headers = message.get("headers")
    if not isinstance(headers, list):
        return
    for index, (name, value) in enumerate(headers):
        lowered = value.lower()
        if name.lower() == b"set-cookie" and b"samesite=none" in lowered and b"partitioned" not in lowered:
            headers[index] = (name, value + b"; Partitioned")


def close_uploads(scope: Scope) -> None:
    """Close the temporary files of a parsed multipart form (issue 14: logo uploads). The CSRF check parses
    the form before the guard runs, so a refused upload never reaches a handler that would close them."""
    form = ScopeState.from_scope(scope).form
    if not isinstance(form, dict):
        return
    for value in form.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, UploadFile):
                item.file.close()


#: A logo (an SVG especially) opened directly can run nothing and load nothing.
LOGO_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
LOGO_HEADERS = [
    (b"content-security-policy", LOGO_CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def frameable(path: str, scope: Scope) -> bool:
    """The setup-link pages (issue 14): ``/setup/<token>`` itself and every response to a setup-link session
    (its widget, its 403 pages, its sign-out page). Account sessions' pages never are."""
    if path.startswith("/setup/"):
        return True
    auth = scope.get("state", {}).get("auth")
    return getattr(auth, "link", None) is not None


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
        # Issue 14: an error inside a setup-link frame keeps the organization's branding.
        context.setdefault("brand", request.scope.get("state", {}).get("brand"))
        return Template("portal/error.html", context=context, status_code=status)
    body: dict[str, Any] = {"error": {"status": status, "title": title, "detail": detail, **extra}}
    body["error"]["request_id"] = request_id
    return Response(body, status_code=status, media_type=MediaType.JSON)


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Expected HTTP errors: the status and a human detail (validation errors name their field).

    Signed-out browsers are sent to the login page with a way back; API clients get 401.
    """
    from portal.web.guard import Denied, OutsideIntent, SignInRequired, login_url

    if isinstance(exc, SignInRequired) and wants_html(request):
        # The path as the browser asked for it: the router drops a trailing slash from scope["path"].
        raw = request.scope.get("raw_path")
        path = unquote(raw.decode("latin-1")) if isinstance(raw, bytes) and raw else request.url.path
        ended = request.scope.get("state", {}).get("session_ended")
        return Redirect(login_url(path, request.url.query, ended), status_code=303)
    extra: dict[str, Any] = {}
    if isinstance(exc, OutsideIntent):
        extra["reason"] = "outside_intent"
        extra["intent"] = exc.intent
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


# --- issue 14: host awareness
_BAD_HOST_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Bad request · 400</title>'
    '<link rel="stylesheet" href="/static/portal.css"></head><body><main id="main" class="error">'
    '<p class="muted">Error 400</p><h1>Bad request</h1><p>This portal does not answer for that host name.'
    "</p></main></body></html>"
)
#: Health checks answer whatever host a load balancer uses; they emit no URLs.
_ANY_HOST = ("/healthz", "/readyz")


def host_of(scope: Scope) -> str | None:
    """The request's host name (lowercase, without port), from the Host header; None when missing."""
    for key, value in scope.get("headers", ()):
        if key == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host[1 : host.find("]")] if "]" in host else None
            return host.rsplit(":", 1)[0] if ":" in host else host
    return None


class AllowedHostsMiddleware:
    """Refuse requests whose Host header names a host the portal is not (host-header injection): a 400 page,
    before anything else runs. Allowed: the public URL's host, ``PORTAL_ALLOWED_HOSTS``, and the loopback names
    when the public URL is on loopback."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allowed = settings.allowed_host_names
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {ScopeType.HTTP, ScopeType.WEBSOCKET} or scope.get("path", "").startswith(
            _ANY_HOST
        ):
            await self.app(scope, receive, send)
            return
        if host_of(scope) in self.allowed:
            await self.app(scope, receive, send)
            return
        log.warning("refused host %r for %s", host_of(scope), scope.get("path", "-"))
        accept = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"accept"), "")
        if "text/html" in accept or not accept:
            body, media = _BAD_HOST_PAGE.encode(), b"text/html; charset=utf-8"
        else:
            body = b'{"error":{"status":400,"title":"Bad request","detail":"This portal does not answer for that host name."}}'
            media = b"application/json"
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", media),
            (b"content-length", str(len(body)).encode()),
        ]
        headers += [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]
        headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 400, "headers": headers}
        await send(start)
        done: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
        await send(done)


# --- end issue 14: host awareness

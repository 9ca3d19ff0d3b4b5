"""The app factory: ``create_app(settings)`` builds the whole portal from typed settings."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from os import PathLike
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader
from litestar import Litestar, MediaType, Response, get
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.logging import LoggingConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from litestar.template.config import TemplateConfig
from piccolo.engine.base import Engine

from policy import PolicyEngine, PolicyError
from portal import api, links, oidc, scim
from portal.auth import login, passkey_login
from portal.core import db, logs
from portal.core.settings import Settings, ensure_secret_key
from portal.jobs import ArqQueue, InlineQueue, load_job_modules, make_queue
from portal.links.service import frameable_cookies
from portal.sso import routes as sso_routes
from portal.web import branding, shell
from portal.web.guard import SessionMiddleware, policy_guard
from portal.web.http import (
    LOGO_HEADERS,
    AllowedHostsMiddleware,
    RequestLogMiddleware,
    framed_headers,
    http_exception_handler,
    internal_error_handler,
    security_headers,
)
from portal.web.registry import WidgetRegistry, discover
from portal.webhooks.events import DispatchMiddleware

PACKAGE_DIR = Path(__file__).parent
#: ``src/widgets``: each widget package brings its own ``templates/``.
WIDGETS_DIR = PACKAGE_DIR.parents[1] / "widgets"
#: Health checks and static files: public, and no CSRF cookie (nothing there takes a form; a cookie on a
#: stylesheet also keeps shared caches from storing it).
NO_SESSION = {"public": True, "exclude_from_csrf": True}
log = logging.getLogger("portal")
policy_log = logging.getLogger("portal.policy")


@get("/healthz", opt=NO_SESSION, media_type=MediaType.JSON, sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/readyz", opt=NO_SESSION, media_type=MediaType.JSON)
async def readyz(state: State) -> Response[dict[str, Any]]:
    """The database (and Redis, when configured) answer."""
    checks: dict[str, str] = {}
    try:
        await db.ping(state.engine)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; say which.
        checks["database"] = f"error: {type(exc).__name__}"
    settings: Settings = state.settings
    if settings.redis_url:
        checks["redis"] = await _ping_redis(settings.redis_url)
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    return Response(body, status_code=200 if ready else HTTP_503_SERVICE_UNAVAILABLE)


async def _ping_redis(url: str) -> str:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; say which.
        return f"error: {type(exc).__name__}"
    finally:
        await client.aclose()


async def release_connection(response: Response[Any]) -> Response[Any]:
    """``after_request``: the handler is done with the database; the page renders without holding a pooled
    connection (see db.ConnectionPerRequest)."""
    await db.release_request_connection()
    return response


def template_dirs(registry: WidgetRegistry) -> list[Path | PathLike[Any] | str]:
    """The shell's templates, then each widget package's ``templates/`` (namespaced by widget)."""
    dirs: list[Path | PathLike[Any] | str] = [
        PACKAGE_DIR / "templates",
        PACKAGE_DIR.parent / "links" / "templates",
    ]
    dirs.extend(sorted(p for p in WIDGETS_DIR.glob("*/templates") if p.is_dir()))
    return dirs


def reload_policy(policy: PolicyEngine) -> bool:
    """Re-read the policy files (``portal serve`` does on SIGHUP). With problems, the policy in force stays
    and each problem is logged as ``file:line: message``; False then."""
    try:
        policy.reload()
    except PolicyError as exc:
        policy_log.error(
            "policy in %s NOT reloaded; the previous one stays in force:\n%s", policy.directory, exc
        )
        return False
    policy_log.info("policy reloaded from %s; roles: %s", policy.directory, ", ".join(policy.roles))
    return True


def create_app(
    settings: Settings,
    *,
    engine: Engine[Any] | None = None,
    policy: PolicyEngine | None = None,
    registry: WidgetRegistry | None = None,
    jobs: InlineQueue | ArqQueue | None = None,
) -> Litestar:
    """Build the portal. Tests pass their own engine, policy or registry; otherwise they come from settings."""
    engine = engine or db.make_engine(settings.database_url)
    policy = policy or PolicyEngine.from_dir(settings.policy_dir)
    registry = registry if registry is not None else discover()
    load_job_modules()
    queue = jobs if jobs is not None else make_queue(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        db.bind(engine)
        opened = await db.start(engine)
        await queue.start()
        if settings.gc_freeze:
            # Everything built at start-up (routes, templates, the policy) lives as long as the process: moved
            # out of the collector's reach, a full collection walks only what requests allocate (issue 15).
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await queue.stop()
            if opened:
                await db.stop(engine)

    settings = ensure_secret_key(settings)
    # Templates ship with the package and do not change while it runs: no file check on every render.
    templates = Environment(
        loader=FileSystemLoader(template_dirs(registry)), autoescape=True, auto_reload=False
    )
    template_config = TemplateConfig(instance=JinjaTemplateEngine(engine_instance=templates))
    static = create_static_files_router(
        path="/static", directories=[PACKAGE_DIR / "static"], opt=NO_SESSION, include_in_schema=False
    )
    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            static,
            *shell.HANDLERS,
            *login.HANDLERS,
            *passkey_login.HANDLERS,  # passkey sign-in on /login (security widget issue)
            *oidc.HANDLERS,  # issue 10: OpenID Provider
            *sso_routes.HANDLERS,  # issue 12: sso
            *api.HANDLERS,  # issue 11: management API
            *scim.HANDLERS,  # issue 13: scim
            *links.HANDLERS,  # issue 14: links
            *branding.HANDLERS,  # issue 14: links (organization branding)
            *registry.handlers(),
        ],
        guards=[policy_guard],
        middleware=[SessionMiddleware, DispatchMiddleware],  # issue 11: webhooks sent after the request
        csrf_config=CSRFConfig(
            secret=settings.secret_key,
            cookie_name="__Host-portal_csrf" if settings.secure else "portal_csrf",
            # Issue 14: forms in a framed setup-link page need the CSRF cookie in a third-party context.
            cookie_secure=settings.secure or frameable_cookies(settings),
            cookie_httponly=True,
            cookie_samesite="none" if frameable_cookies(settings) else "lax",
        ),
        state=State(
            {"settings": settings, "engine": engine, "policy": policy, "registry": registry, "jobs": queue}
        ),
        lifespan=[lifespan],
        after_request=release_connection,
        exception_handlers={HTTPException: http_exception_handler, Exception: internal_error_handler},
        template_config=template_config,
        logging_config=LoggingConfig(
            # Log lines written in batches by a background thread (portal.core.logs): the default queue
            # handler costs a thread switch per line, and every request logs one. One format for every line
            # the process writes (issue 16): the CLI's, before the app starts, is the same.
            handlers={"portal": {"class": "portal.core.logs.BatchingHandler", "formatter": "standard"}},
            formatters={"standard": {"format": logs.FORMAT}},
            loggers={
                "litestar": {"level": "INFO", "handlers": ["portal"], "propagate": False},
                **{
                    name: {"level": logging.getLevelName(level), "propagate": True}
                    for name, level in logs.QUIET.items()
                },
            },
            root={"level": settings.log_level.upper(), "handlers": ["portal"]},
            log_exceptions="never",
            disable_stack_trace={404, 401, 403, 405, 429},
        ),
        openapi_config=None,
        debug=False,
    )
    # Outermost, so that unmatched paths (404 before any route middleware) get an id, the security headers and
    # a log line too; then the Host check (issue 14), before anything else looks at the request.
    app.asgi_handler = RequestLogMiddleware(
        AllowedHostsMiddleware(db.ConnectionPerRequest(app.asgi_handler), settings),
        security_headers(settings),
        framed=framed_headers(settings),
        logo=LOGO_HEADERS,
        partition=frameable_cookies(settings),
    )
    return app

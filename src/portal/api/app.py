"""``/api/v1``: a Litestar app of its own (its own OpenAPI document, problem errors, body limit), mounted
into the portal. The portal's request id, log line and security headers wrap it like every other path."""

from __future__ import annotations

import html
from functools import cache
from typing import Any

from litestar import Litestar, MediaType, Request, Response, Router, asgi, get
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme, Server, Tag
from litestar.types import Receive, Scope, Send

from portal.api import hooks, keys, routes
from portal.api.http import MAX_BODY, ApiMiddleware, handle_exception

PUBLIC = {"public": True}
DESCRIPTION = (
    "The portal's management API for the app's backend. Authenticate with an API key "
    "(`Authorization: Bearer portal_sk_...`, created by `portal api-key create NAME --scope ...`). "
    "Errors are RFC 9457 `application/problem+json` naming each bad field; lists are cursor pages with a "
    "`next` link; every POST takes an `Idempotency-Key`; updates take `If-Match`; each key is rate "
    "limited (`RateLimit`, `RateLimit-Policy`, `Retry-After`). Scopes: " + ", ".join(keys.SCOPES) + "."
)


@get("/openapi.json", opt=PUBLIC, include_in_schema=False, media_type="application/vnd.oai.openapi+json")
async def openapi_document(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from the handlers."""
    document: dict[str, Any] = request.app.openapi_schema.to_schema()
    return document


@get("/reference", opt=PUBLIC, include_in_schema=False, media_type=MediaType.HTML)
async def reference(request: Request[Any, Any, Any]) -> Response[str]:
    """The API reference, rendered on the server from the OpenAPI document (no script)."""
    return Response(render_reference(request.app.openapi_schema.to_schema()), media_type=MediaType.HTML)


def _schema_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "oneOf" in schema:
        return " | ".join(_schema_name(part) for part in schema["oneOf"])
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items'))}"
    return str(schema.get("type", "object"))


def _inline(text: str) -> str:
    """Escaped text with `code` spans (the docstrings' only markup)."""
    import re

    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _summary(op: dict[str, Any]) -> str:
    text = str(op.get("description") or op.get("summary") or "")
    return text.split(". ", 1)[0].split("\n", 1)[0].rstrip(".")


def render_reference(doc: dict[str, Any]) -> str:
    """HTML for every operation: method, path, scope, parameters, body and responses; then the schemas."""
    esc = html.escape
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(doc['info']['title'])}</title>",
        '<link rel="stylesheet" href="/static/portal.css"></head><body><main id="main" class="api-reference">',
        f"<h1>{esc(doc['info']['title'])} <small>v{esc(doc['info']['version'])}</small></h1>",
        f"<p>{_inline(doc['info'].get('description', ''))}</p>",
        '<p>Machine-readable: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a> (OpenAPI '
        f"{esc(doc.get('openapi', ''))}).</p>",
    ]
    toc = ['<nav aria-label="Operations"><ul>']
    body = []
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            anchor = esc(op.get("operationId", f"{method}{path}"))
            toc.append(
                f'<li><a href="#{anchor}"><code>{method.upper()} {esc(path)}</code></a> {_inline(_summary(op))}</li>'
            )
            handler = next(
                (
                    h
                    for h in (*routes.HANDLERS, *hooks.HANDLERS)
                    if method.upper() in (h.http_methods or ()) and _same(path, h)
                ),
                None,
            )
            scope = handler.opt.get("scope") if handler else None
            body.append(f'<section id="{anchor}"><h2><code>{method.upper()} /api/v1{esc(path)}</code></h2>')
            body.append(f"<p>{_inline(op.get('description') or op.get('summary', ''))}</p>")
            if scope:
                body.append(f"<p>Scope: <code>{esc(scope)}</code></p>")
            params = op.get("parameters", [])
            if params:
                body.append(
                    '<table><caption>Parameters</caption><thead><tr><th scope="col">name</th>'
                    '<th scope="col">in</th><th scope="col">type</th><th scope="col">required</th>'
                    '<th scope="col">description</th></tr></thead><tbody>'
                )
                for p in params:
                    body.append(
                        f"<tr><td><code>{esc(p['name'])}</code></td><td>{esc(p['in'])}</td>"
                        f"<td>{esc(_schema_name(p.get('schema')))}</td><td>{'yes' if p.get('required') else 'no'}</td>"
                        f"<td>{_inline(p.get('description', ''))}</td></tr>"
                    )
                body.append("</tbody></table>")
            request_body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if request_body:
                body.append(
                    f'<p>Body: <a href="#schema-{esc(_schema_name(request_body.get("schema")))}">'
                    f"{esc(_schema_name(request_body.get('schema')))}</a> (JSON; unknown fields are refused)</p>"
                )
            body.append("<ul>")
            for status, response in op.get("responses", {}).items():
                content = response.get("content") or {}
                kinds = ", ".join(
                    f"{esc(k)} {esc(_schema_name(v.get('schema')))}" for k, v in content.items()
                )
                body.append(
                    f"<li><strong>{esc(status)}</strong> {esc(response.get('description', ''))}"
                    f"{' — ' + kinds if kinds else ''}</li>"
                )
            body.append("</ul></section>")
    toc.append("</ul></nav>")
    schemas = ["<h2>Schemas</h2>"]
    for name, schema in sorted(doc.get("components", {}).get("schemas", {}).items()):
        schemas.append(f'<section id="schema-{esc(name)}"><h3>{esc(name)}</h3>')
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        if props:
            schemas.append(
                '<table><thead><tr><th scope="col">field</th><th scope="col">type</th>'
                '<th scope="col">required</th></tr></thead><tbody>'
            )
            for field, spec in props.items():
                schemas.append(
                    f"<tr><td><code>{esc(field)}</code></td><td>{esc(_schema_name(spec))}</td>"
                    f"<td>{'yes' if field in required else 'no'}</td></tr>"
                )
            schemas.append("</tbody></table>")
        schemas.append("</section>")
    return "".join(parts + toc + body + schemas + ["</main></body></html>"])


def _same(openapi_path: str, handler: Any) -> bool:
    import re

    return any(re.sub(r"\{(\w+):\w+\}", r"{\1}", path) == openapi_path for path in handler.paths)


@cache
def api_app() -> Litestar:
    """The API app (built once; it reads the portal's state from the mount, per request)."""
    return Litestar(
        route_handlers=[*routes.HANDLERS, *hooks.HANDLERS, openapi_document, reference],
        middleware=[ApiMiddleware],
        exception_handlers={Exception: handle_exception},
        request_max_body_size=MAX_BODY,
        openapi_config=OpenAPIConfig(
            title="Portal management API",
            version="1",
            description=DESCRIPTION,
            servers=[Server(url="/api/v1")],
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(
                        type="http", scheme="bearer", description="An API key: `portal_sk_...`."
                    )
                }
            ),
            security=[{"apiKey": []}],
            tags=[
                Tag(name=n)
                for n in (
                    "organizations",
                    "users",
                    "memberships",
                    "invitations",
                    "domains",
                    "sessions",
                    "audit events",
                    "webhooks",
                    "portal links",
                )
            ],
            # Litestar's own schema routes (with a catch-all) stay out of the way under /_schema; the document
            # is served by ``openapi_document`` at /openapi.json.
            render_plugins=[JsonRenderPlugin(path="/openapi.json")],
            openapi_router=Router(path="/_schema", route_handlers=[], opt=PUBLIC, include_in_schema=False),
            use_handler_docstrings=True,
            # The handler's name (``update_membership``): stable ids for generated clients.
            operation_id_creator=lambda handler, _method, _path: handler.handler_name,
        ),
        logging_config=None,
        debug=False,
    )


@asgi("/api/v1", is_mount=True, copy_scope=True, opt={"public": True, "exclude_from_csrf": True})
async def mount(scope: Scope, receive: Receive, send: Send) -> None:
    """Hand the request to the API app with the portal's state (settings, policy, job queue)."""
    scope["state"]["portal_state"] = scope["litestar_app"].state
    await api_app()(scope, receive, send)


HANDLERS = [mount]

"""The OpenID Provider's endpoints (DESIGN §12) at the issuer ``PORTAL_PUBLIC_URL``: discovery, JWKS,
authorize, token, userinfo, RP-initiated logout and revocation. Authorization code flow only."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from litestar import MediaType, Request, Response, get, post, route
from litestar.response import Redirect

from policy import PolicyEngine
from portal.auth import accounts, sessions
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import User
from portal.oidc import clients, keys, tokens
from portal.oidc.clients import Client
from portal.web.guard import auth_of
from portal.web.http import error_response
from portal.web.pages import render
from portal.web.shell import client_ip

log = logging.getLogger("portal.oidc")
#: Token-style endpoints: called by apps with no cookie and no CSRF token.
API = {"public": True, "exclude_from_csrf": True}
PROMPTS = frozenset({"none", "login", "select_account", "consent"})
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@get("/.well-known/openid-configuration", opt=API, media_type=MediaType.JSON)
async def discovery(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0."""
    base = tokens.issuer(_settings(request))
    return {
        "issuer": base,
        "authorization_endpoint": f"{base}/oauth/authorize",
        "token_endpoint": f"{base}/oauth/token",
        "userinfo_endpoint": f"{base}/oauth/userinfo",
        "jwks_uri": f"{base}/oauth/jwks",
        "end_session_endpoint": f"{base}/oauth/logout",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(keys.ALGS),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": sorted(tokens.SCOPES),
        "claims_supported": [
            "sub",
            "sid",
            "email",
            "email_verified",
            "name",
            "org_id",
            "org_roles",
            "permissions",
            "amr",
            "auth_time",
        ],
        "prompt_values_supported": sorted(PROMPTS - {"consent"}),
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "authorization_response_iss_parameter_supported": True,
    }


@get("/oauth/jwks", opt=API, media_type=MediaType.JSON)
async def jwks(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The public keys: the signers and retired keys whose tokens have not all expired."""
    document = await keys.public_jwks(_settings(request))
    return Response(document, headers={"Cache-Control": "public, max-age=60"})


# --- authorize ----------------------------------------------------------------------------------------------


def _error_page(request: Request[Any, Any, Any], detail: str) -> Response[Any]:
    """Errors that must not redirect (unknown client, unregistered redirect URI): a page, never a redirect."""
    return error_response(request, 400, detail)


def _to_client(
    request: Request[Any, Any, Any], redirect_uri: str, params: dict[str, str | None]
) -> Response[Any]:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if urlsplit(redirect_uri).query else "?"
    location = f"{redirect_uri}{separator}{query}"
    if request.headers.get("sec-fetch-site") == "same-origin":
        # Reached by redirects from the hosted login's form: browsers hold the whole redirect chain to the
        # form's CSP (form-action 'self') and would refuse the app's origin. A page that moves on by itself
        # (meta refresh, no script) starts a fresh navigation.
        return render(request, "oidc/continue.html", location=location)
    return Redirect(location, status_code=302)


def _client_error(
    request: Request[Any, Any, Any],
    settings: Settings,
    redirect_uri: str,
    state: str | None,
    error: str,
    description: str,
) -> Response[Any]:
    """RFC 6749 §4.1.2.1: the error goes back to the (registered) redirect URI."""
    return _to_client(
        request,
        redirect_uri,
        {"error": error, "error_description": description, "state": state, "iss": tokens.issuer(settings)},
    )


def _login_redirect(
    request: Request[Any, Any, Any], *, force: bool, organization: str | None
) -> Response[Any]:
    """The hosted login, coming back to this authorize request (without prompt/max_age: the new session
    satisfies them)."""
    query = [(k, v) for k, v in request.query_params.items() if k not in {"prompt", "max_age"}]
    return_to = "/oauth/authorize?" + urlencode(query)
    params = {"return_to": return_to}
    if organization:
        params["organization"] = organization
    hint = request.query_params.get("login_hint")
    if hint:
        params["login_hint"] = hint
    if force:
        params["prompt"] = "login"
    return Redirect("/login?" + urlencode(params), status_code=303)


@get("/oauth/authorize", opt={"public": True})
async def authorize(request: Request[Any, Any, Any]) -> Response[Any]:
    """The authorization endpoint: reuses the portal session (single sign-on with ``/ui/``), else the hosted
    login; ``organization_id`` (or the external id) sets the session's active organization."""
    settings = _settings(request)
    q = request.query_params
    client = await clients.get(q.get("client_id") or "")
    if client is None:
        return _error_page(request, "Unknown client: this app is not registered with the portal.")
    redirect_uri = q.get("redirect_uri") or ""
    if redirect_uri not in client.redirect_uris:
        return _error_page(request, "The redirect URI is not registered for this app.")
    state = q.get("state")

    def fail(error: str, description: str) -> Response[Any]:
        return _client_error(request, settings, redirect_uri, state, error, description)

    if q.get("response_type") != "code":
        return fail("unsupported_response_type", "only response_type=code is supported")
    scopes = (q.get("scope") or "").split()
    if "openid" not in scopes:
        return fail("invalid_scope", "the scope must include openid")
    unknown = sorted(set(scopes) - tokens.SCOPES)
    if unknown:
        return fail("invalid_scope", f"unknown scope: {' '.join(unknown)}")
    challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
    if challenge:
        if method != "S256":
            return fail("invalid_request", "code_challenge_method must be S256")
        if not 43 <= len(challenge) <= 128:
            return fail("invalid_request", "code_challenge is malformed")
    elif method:
        return fail("invalid_request", "code_challenge_method without code_challenge")
    elif client.public:
        return fail("invalid_request", "PKCE with S256 is required for this client")
    prompts = set((q.get("prompt") or "").split())
    if prompts - PROMPTS:
        return fail("invalid_request", f"unsupported prompt: {' '.join(sorted(prompts - PROMPTS))}")
    if "none" in prompts and len(prompts) > 1:
        return fail("invalid_request", "prompt=none cannot be combined with other values")
    max_age: int | None = None
    if q.get("max_age") is not None:
        try:
            max_age = int(q.get("max_age") or "")
        except ValueError:
            return fail("invalid_request", "max_age must be a whole number of seconds")
        if max_age < 0:
            return fail("invalid_request", "max_age must not be negative")
    nonce = q.get("nonce")
    if nonce is not None and len(nonce) > 500:
        return fail("invalid_request", "nonce is too long")
    org_ref = q.get("organization_id")

    auth = auth_of(request)
    stale = False
    if auth is not None and max_age is not None:
        age = (clock.utcnow() - auth.session["authenticated_at"]).total_seconds()
        stale = age > max_age
    if auth is None or stale or prompts & {"login", "select_account"}:
        if "none" in prompts:
            return fail("login_required", "the user is not signed in to the portal")
        # The hosted login takes an organization id or name; the app may name it by its external id.
        wanted = await tokens.organization_ref(org_ref) if org_ref else None
        return _login_redirect(request, force=auth is not None, organization=wanted["id"] if wanted else None)

    organization_id = auth.organization_id
    if org_ref:
        # tenant check: only an organization the user is an active member of becomes active.
        organization = await tokens.organization_ref(org_ref)
        member_of = {o["id"] for o in auth.organizations}
        if organization is None or organization["id"] not in member_of:
            return fail("access_denied", "the user is not a member of the requested organization")
        organization_id = organization["id"]
        if organization_id != auth.organization_id:
            await sessions.set_active_organization(auth.session["id"], organization_id)
            await User.update({User.last_organization: organization_id}).where(User.id == auth.user["id"])
    code = await tokens.create_code(
        client,
        session=auth.session,
        organization_id=organization_id,
        scope=" ".join(dict.fromkeys(scopes)),
        nonce=nonce,
        redirect_uri=redirect_uri,
        code_challenge=challenge,
    )
    return _to_client(request, redirect_uri, {"code": code, "state": state, "iss": tokens.issuer(settings)})


# --- token, revoke: client authentication -------------------------------------------------------------------


def _token_error(error: tokens.TokenError) -> Response[Any]:
    headers = dict(NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="portal"'
    body = {"error": error.error, "error_description": error.description}
    return Response(body, status_code=error.status, headers=headers, media_type=MediaType.JSON)


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise tokens.TokenError("invalid_request", "the body must be application/x-www-form-urlencoded")
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def _authenticate(request: Request[Any, Any, Any], form: dict[str, str]) -> Client:
    """client_secret_basic, client_secret_post, or a public client's bare client_id."""
    header = request.headers.get("authorization", "")
    client_id, secret = form.get("client_id"), form.get("client_secret")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
            basic_id, _, basic_secret = decoded.partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise tokens.TokenError("invalid_client", "malformed Basic credentials", 401) from None
        client_id, secret = unquote(basic_id), unquote(basic_secret)
    client = await clients.get(client_id or "")
    if client is None:
        raise tokens.TokenError("invalid_client", "unknown client", 401)
    if client.public:
        if secret:
            raise tokens.TokenError("invalid_client", "a public client has no secret", 401)
        return client
    if not clients.secret_matches(client, secret):
        raise tokens.TokenError("invalid_client", "client authentication failed", 401)
    return client


@post("/oauth/token", opt=API, status_code=200)
async def token(request: Request[Any, Any, Any]) -> Response[Any]:
    """The token endpoint: authorization_code (with PKCE) and refresh_token grants."""
    settings = _settings(request)
    policy: PolicyEngine = request.app.state.policy
    try:
        form = await _form(request)
        client = await _authenticate(request, form)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise tokens.TokenError("invalid_request", "grant_type is required")
        if grant_type == "authorization_code":
            issued = await tokens.exchange_code(
                settings,
                policy,
                client,
                code=form.get("code", ""),
                redirect_uri=form.get("redirect_uri"),
                code_verifier=form.get("code_verifier"),
            )
        elif grant_type == "refresh_token":
            if form.get("scope") and not set(form["scope"].split()) <= tokens.SCOPES:
                raise tokens.TokenError("invalid_scope", "unknown scope")
            issued = await tokens.refresh(settings, policy, client, token=form.get("refresh_token", ""))
        else:
            raise tokens.TokenError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    except tokens.TokenError as exc:
        log.info("token request refused: %s (%s)", exc.error, exc.description)
        return _token_error(exc)
    return Response(issued, headers=NO_STORE, media_type=MediaType.JSON)


@post("/oauth/revoke", opt=API, status_code=200)
async def revoke(request: Request[Any, Any, Any]) -> Response[Any]:
    """RFC 7009: revoke a refresh token (and its family) or an access token (its grant); 200 for any token."""
    try:
        form = await _form(request)
        client = await _authenticate(request, form)
        value = form.get("token")
        if not value:
            raise tokens.TokenError("invalid_request", "token is required")
        await tokens.revoke_token(_settings(request), client, value)
    except tokens.TokenError as exc:
        return _token_error(exc)
    return Response(b"", headers=NO_STORE, status_code=200)


# --- userinfo ------------------------------------------------------------------------------------------------


@route("/oauth/userinfo", http_method=["GET", "POST"], opt=API, status_code=200)
async def userinfo(request: Request[Any, Any, Any]) -> Response[Any]:
    """The signed-in user's claims for a valid access token (fresh roles and permissions)."""
    header = request.headers.get("authorization", "")
    claims = None
    if header.lower().startswith("bearer "):
        claims = await tokens.verify_access_token(_settings(request), header[7:].strip())
    if claims is None:
        body = {
            "error": "invalid_token",
            "error_description": "the access token is missing, invalid or expired",
        }
        challenge = 'Bearer error="invalid_token"'
        return Response(body, status_code=401, headers={"WWW-Authenticate": challenge, **NO_STORE})
    who = await tokens.identity(request.app.state.policy, claims["sub"], claims.get("org_id"))
    if who is None:
        return Response({"error": "invalid_token"}, status_code=401, headers=NO_STORE)
    user = who.user
    scopes = set(str(claims.get("scope", "")).split())
    info: dict[str, Any] = {
        "sub": user["id"],
        "org_id": who.organization_id,
        "org_roles": who.roles,
        "permissions": who.permissions,
    }
    if "email" in scopes:
        info |= {"email": user["email"], "email_verified": bool(user["email_verified"])}
    if "profile" in scopes:
        info |= {
            "name": tokens._display_name(user),
            "given_name": user["given_name"],
            "family_name": user["family_name"],
            "locale": user["locale"],
        }
    return Response(info, headers=NO_STORE, media_type=MediaType.JSON)


# --- RP-initiated logout ------------------------------------------------------------------------------------


async def _logout_target(
    request: Request[Any, Any, Any], params: dict[str, str]
) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(post-logout URL or None, the hint's claims, an error message)."""
    settings = _settings(request)
    hint = params.get("id_token_hint")
    claims = None
    if hint:
        claims = tokens.decode_own(hint, await tokens.own_keys(settings, hint))
        if claims is None or claims.get("iss") != tokens.issuer(settings):
            return None, None, "The id_token_hint is not a token this portal issued."
    client_id = params.get("client_id") or (str(claims["aud"]) if claims and claims.get("aud") else None)
    if claims and params.get("client_id") and claims.get("aud") != params["client_id"]:
        return None, None, "The id_token_hint was issued to another client."
    target = params.get("post_logout_redirect_uri")
    if not target:
        return None, claims, None
    client = await clients.get(client_id or "")
    if client is None or target not in client.post_logout_redirect_uris:
        return None, None, "The post_logout_redirect_uri is not registered for this app."
    state = params.get("state")
    if state:
        target += ("&" if urlsplit(target).query else "?") + urlencode({"state": state})
    return target, claims, None


async def _sign_out(request: Request[Any, Any, Any], target: str | None) -> Response[Any]:
    settings = _settings(request)
    auth = auth_of(request)
    if auth is not None:
        await sessions.revoke(auth.session["id"], "logout")
        await accounts.audit(
            "logout",
            organization_id=auth.organization_id,
            actor_id=auth.user["id"],
            target=auth.user["id"],
            details={"via": "oidc"},
            ip=client_ip(request),
        )
    response: Response[Any]
    if target and request.method == "POST":
        # After the confirmation form: the same form-action rule as in _to_client.
        response = render(request, "oidc/continue.html", location=target)
    else:
        response = Redirect(target or "/login?signed_out=1", status_code=303)
    response.set_cookie(sessions.session_cookie(settings, "", max_age=0))
    return response


@get("/oauth/logout", opt={"public": True})
async def logout_page(request: Request[Any, Any, Any]) -> Response[Any]:
    """RP-Initiated Logout 1.0. With an id_token_hint naming this browser's session the user is signed out at
    once; otherwise they confirm (a GET alone must not sign anyone out of a page they did not ask for)."""
    params = dict(request.query_params.items())
    target, claims, error = await _logout_target(request, params)
    if error:
        return _error_page(request, error)
    auth = auth_of(request)
    if auth is None:
        return Redirect(target or "/login?signed_out=1", status_code=303)
    if claims is not None and claims.get("sid") == auth.session["id"]:
        return await _sign_out(request, target)
    return render(request, "oidc/logout.html", params=params)


@post("/oauth/logout", opt={"public": True}, status_code=303)
async def logout_confirm(request: Request[Any, Any, Any]) -> Response[Any]:
    """The confirmation form (CSRF-protected like every POST form)."""
    form = await request.form()
    params = {k: v for k, v in form.items() if isinstance(v, str) and k != "_csrf_token"}
    target, _, error = await _logout_target(request, params)
    if error:
        return _error_page(request, error)
    return await _sign_out(request, target)


HANDLERS = [discovery, jwks, authorize, token, revoke, userinfo, logout_page, logout_confirm]

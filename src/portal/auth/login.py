"""The hosted login (DESIGN §4): email one-time code, the choice of the active organization, JIT join.

Who may receive a code: existing users, and addresses whose domain some organization allows. Everyone else
gets the same answer and the same next page, but no email, so the page does not reveal who has an account.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.exceptions import NotFoundException
from litestar.params import FromQuery, URLEncodedBody
from litestar.response import Redirect
from piccolo.columns.combination import WhereRaw

from policy import Permission, PolicyEngine
from portal.auth import accounts, codes, passkeys, ratelimit, sessions
from portal.core import mail
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import Membership, Organization, User
from portal.sso import service as sso
from portal.web import flash
from portal.web.guard import ENDED_MESSAGES, auth_of, require_auth
from portal.web.http import error_response
from portal.web.pages import render
from portal.web.shell import client_ip, safe_return_to

log = logging.getLogger("portal.login")

AUTH_METHOD = "email_code"
JIT_ROLES = ("member",)
_CODE = re.compile(r"[0-9]{6}")
_MAX_ORGANIZATION_REF = 200


# --- forms -------------------------------------------------------------------------------------------------


class EmailForm(msgspec.Struct):
    email: str = ""
    return_to: str = ""
    organization: str = ""
    #: ``code``: an email code even where the domain signs in with SSO (the offer's "Email me a code
    #: instead", or the break-glass link when SSO is enforced).
    method: str = ""


class CodeForm(msgspec.Struct):
    challenge: str = ""
    code: str = ""
    return_to: str = ""
    organization: str = ""


class JoinForm(msgspec.Struct):
    organization_id: str = ""
    return_to: str = ""


# --- service: who may sign in, which organization is active, what may be joined ---------------------------


def email_domain(email: str) -> str:
    """The domain part of a normalized email address."""
    return email.rpartition("@")[2].lower()


async def organizations_allowing(domain: str) -> list[dict[str, Any]]:
    """Organizations whose allowed email domains include ``domain``."""
    if not domain:
        return []
    # The LIKE only narrows the scan portably (JSON operators differ between engines); the exact check on
    # the list below decides, so a stray match (or a wildcard, which a normalized domain cannot hold) is harmless.
    rows = (
        await Organization.select(
            Organization.id, Organization.name, Organization.display_name, Organization.allowed_email_domains
        )
        .where(WhereRaw("CAST(allowed_email_domains AS TEXT) LIKE {}", f'%"{domain}"%'))
        .order_by(Organization.display_name)
        .output(load_json=True)
    )
    return [
        row
        for row in rows
        if domain in {str(d).strip().lower() for d in (row["allowed_email_domains"] or [])}
    ]


async def may_receive_code(email: str) -> tuple[dict[str, Any] | None, bool]:
    """(the user, if any; whether a code may be sent): existing users and allowed domains only."""
    user = await accounts.find_user(email)
    if user is not None:
        return user, True
    return None, bool(await organizations_allowing(email_domain(email)))


async def active_memberships(user_id: str) -> list[dict[str, Any]]:
    """The organizations (id, name) the user is an active member of."""
    rows = await Membership.select(
        Membership.organization.id.as_alias("id"), Membership.organization.name.as_alias("name")
    ).where((Membership.user == user_id) & (Membership.status == "active"))
    return rows


async def jit_offers(user: dict[str, Any]) -> list[dict[str, Any]]:
    """Organizations the user may join: their proven email's domain is allowed there and they are not in it."""
    if not user.get("email_verified"):
        return []
    allowing = await organizations_allowing(email_domain(user["email"]))
    if not allowing:
        return []
    mine = {
        row["organization"]
        for row in await Membership.select(Membership.organization).where(Membership.user == user["id"])
    }
    return [org for org in allowing if org["id"] not in mine]


@dataclass(frozen=True, slots=True)
class OrganizationChoice:
    """The organization to make active (None: none or several), and whether the user has several to pick from."""

    organization_id: str | None
    choose: bool


async def choose_organization(user: dict[str, Any], requested: str | None) -> OrganizationChoice:
    """The ``organization`` parameter (id or name) if the user is an active member, else the last used one,
    else the only one; with several and none of those, the user chooses."""
    memberships = await active_memberships(user["id"])
    # tenant check: only organizations the user is an active member of can become active.
    if requested:
        for row in memberships:
            if requested in (row["id"], row["name"]):
                return OrganizationChoice(row["id"], choose=False)
    last = user.get("last_organization")
    if last and any(row["id"] == last for row in memberships):
        return OrganizationChoice(last, choose=False)
    if len(memberships) == 1:
        return OrganizationChoice(memberships[0]["id"], choose=False)
    return OrganizationChoice(None, choose=len(memberships) > 1)


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: str
    session_id: str
    user: dict[str, Any]
    choice: OrganizationChoice
    offers: list[dict[str, Any]]


async def sign_in(
    email: str, *, challenge_id: str, requested_organization: str | None, ip: str, user_agent: str
) -> SignedIn | None:
    """The email is proven: find or (JIT) create the user, open a new session. None if nobody may sign in."""
    user = await accounts.find_user(email)
    if user is None:
        if not await organizations_allowing(email_domain(email)):
            return None
        try:
            user = await accounts.create_user(email, verified=True)
        except InvalidInput:
            # Created by a concurrent sign-in with another code for the same address.
            user = await accounts.find_user(email)
            if user is None:
                raise
    return await open_session(
        user,
        auth_method=AUTH_METHOD,
        requested_organization=requested_organization,
        ip=ip,
        user_agent=user_agent,
        details={"challenge_id": challenge_id},
    )


async def open_session(
    user: dict[str, Any],
    *,
    auth_method: str,
    requested_organization: str | None,
    ip: str,
    user_agent: str,
    details: dict[str, Any] | None = None,
) -> SignedIn:
    """The user has just proven their email (a code, an invitation link): mark it verified, choose the active
    organization, open a new session and audit ``login.succeeded``."""
    if not user["email_verified"]:
        await User.update({User.email_verified: True}).where(User.id == user["id"])
        user["email_verified"] = True
    choice = await choose_organization(user, requested_organization)
    token, session_id = await sessions.create_session(
        user["id"],
        auth_method=auth_method,
        organization_id=choice.organization_id,
        ip=ip,
        user_agent=user_agent,
    )
    if choice.organization_id and choice.organization_id != user.get("last_organization"):
        await User.update({User.last_organization: choice.organization_id}).where(User.id == user["id"])
    await accounts.audit(
        "login.succeeded",
        organization_id=choice.organization_id,
        actor_id=user["id"],
        target=user["email"],
        details={"method": auth_method, "session_id": session_id, **(details or {})},
        ip=ip,
    )
    return SignedIn(token, session_id, user, choice, await jit_offers(user))


async def complete_sign_in(
    request: Request[Any, Any, Any], signed_in: SignedIn, destination: str
) -> Response[Any]:
    """Redirect to ``destination`` with the new session's cookie; this browser's earlier session is revoked."""
    settings: Settings = request.app.state.settings
    previous = auth_of(request)
    if previous is not None:
        # This browser's earlier session is replaced, not left alive behind the new cookie.
        await sessions.revoke(previous.session["id"], "replaced")
    response: Response[Any] = Redirect(destination, status_code=303)
    response.set_cookie(
        sessions.session_cookie(settings, signed_in.token, max_age=settings.session_absolute_timeout)
    )
    return response


async def join(
    user: dict[str, Any], session_id: str, organization_id: str, *, known_roles: tuple[str, ...], ip: str
) -> dict[str, Any] | None:
    """Join an organization the user was offered (as ``member``, source ``jit``); None if not offered."""
    # tenant check: the id comes from a form; only an organization that allows the user's proven email
    # domain, and that the user is not in yet, may be joined.
    organization = next((o for o in await jit_offers(user) if o["id"] == organization_id), None)
    if organization is None:
        return None
    await accounts.add_member(
        organization["id"],
        user["id"],
        list(JIT_ROLES),
        known_roles=known_roles,
        source="jit",
        actor_id=user["id"],
    )
    await accounts.audit(
        "member.joined",
        organization_id=organization["id"],
        actor_id=user["id"],
        target=user["id"],
        details={"source": "jit", "roles": list(JIT_ROLES), "domain": email_domain(user["email"])},
        ip=ip,
    )
    await sessions.set_active_organization(session_id, organization["id"])
    await User.update({User.last_organization: organization["id"]}).where(User.id == user["id"])
    return organization


# --- single sign-on: home realm discovery and Enforce SSO (DESIGN §15) ----------------------------------


async def holds_sso_manage(user_id: str | None, organization: dict[str, Any], policy: PolicyEngine) -> bool:
    """The break-glass rule: an active member holding ``sk_org_sso_manage`` there keeps email codes."""
    if user_id is None:
        return False
    row = (
        await Membership.select(Membership.roles)
        .where(
            (Membership.user == user_id)
            & (Membership.organization == organization["id"])
            & (Membership.status == "active")
        )
        .output(load_json=True)
        .first()
    )
    if row is None:
        return False
    features = organization.get("features") or []
    return bool(policy.decide(row["roles"] or [], features, Permission.SSO_MANAGE))


async def sso_refuses(
    email: str, user_id: str | None, policy: PolicyEngine, *, method: str
) -> sso.Realm | None:
    """The realm whose Enforce SSO refuses ``method`` (``email_code`` or ``passkey``) for this email, or None.
    Email codes stay open to break-glass holders; passkeys do not."""
    realm = await sso.realm_of(email)
    if realm is None or not realm.enforced:
        return None
    if method == AUTH_METHOD and await holds_sso_manage(user_id, realm.organization, policy):
        return None
    return realm


def code_mail(settings: Settings, code: str) -> tuple[str, str]:
    """Subject and text of the sign-in code email."""
    minutes = codes.DEFAULT_TTL_SECONDS // 60
    subject = mail.subject(settings, "your sign-in code")
    text = (
        f"Your code to sign in to {settings.brand_name}:\n\n"
        f"    {code}\n\n"
        f"Enter it on the sign-in page at {settings.origin}. It expires in {minutes} minutes and works once.\n\n"
        "If you did not try to sign in, ignore this email: nobody can sign in without the code.\n"
    )
    return subject, text


async def deliver(settings: Settings, to: str, subject: str, text: str, code: str = "") -> None:
    """Send after the response, so the answer takes as long whether or not a mail goes out."""
    try:
        await mail.send_mail(settings, to, subject, text, dev_log=f"sign-in code {code}" if code else "")
    except Exception:
        # SMTP or disk trouble must not show in the answer (it would tell who has an account): log it.
        log.exception("could not send the sign-in code to %s", to)


# --- pages ------------------------------------------------------------------------------------------------


def _query(**params: str) -> str:
    return urlencode({k: v for k, v in params.items() if v and not (k == "return_to" and v == "/ui/")})


def _login_url(return_to: str, organization: str) -> str:
    query = _query(return_to=return_to, organization=organization)
    return "/login" + (f"?{query}" if query else "")


def _organization_ref(value: str | None) -> str:
    return (value or "").strip()[:_MAX_ORGANIZATION_REF]


def _login_page(
    request: Request[Any, Any, Any],
    *,
    return_to: str,
    organization: str,
    email: str = "",
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
    method: str = "",
) -> Response[Any]:
    return render(
        request,
        "portal/login.html",
        status_code=status_code,
        email=email,
        error=error,
        notice=notice,
        return_to=return_to,
        organization=organization,
        method="code" if method == "code" else "",
        # Passkey sign-in (portal.passkey_login): offered when the public URL has a host name.
        passkeys_available=passkeys.available(request.app.state.settings),
    )


_TERMINAL = {
    "expired": "This code has expired. Request a new one.",
    "unknown": "This code has expired. Request a new one.",
    "used": "This code has already been used. Request a new one.",
    "locked": "Too many wrong attempts. Request a new code.",
}


def _code_page(
    request: Request[Any, Any, Any],
    *,
    challenge: dict[str, Any] | None,
    return_to: str,
    organization: str,
    error: str | None = None,
    ended: str | None = None,
    status_code: int = 200,
) -> Response[Any]:
    return render(
        request,
        "portal/login_code.html",
        status_code=status_code,
        challenge_id=challenge["id"] if challenge else "",
        email=challenge["email"] if challenge else "",
        error=error,
        ended=_TERMINAL.get(ended) if ended else None,
        return_to=return_to,
        organization=organization,
        restart_url=_login_url(return_to, organization),
    )


def _too_many(request: Request[Any, Any, Any], result: ratelimit.RateResult, detail: str) -> Response[Any]:
    wait = ratelimit.describe_wait(result.retry_after_seconds)
    response = error_response(request, 429, detail, retry_after=wait)
    response.set_header("Retry-After", str(result.retry_after_seconds))
    return response


async def _limited(*checks: tuple[str, tuple[int, int]]) -> ratelimit.RateResult | None:
    """The first refusal among ``(key, (limit, window))`` checks, counted in order; None if all allow."""
    for key, (limit, window) in checks:
        result = await ratelimit.hit(key, limit, window)
        if not result.allowed:
            return result
    return None


@get("/login", opt={"public": True})
async def login_page(
    request: Request[Any, Any, Any],
    return_to: FromQuery[str | None] = None,
    organization: FromQuery[str | None] = None,
    signed_out: FromQuery[str | None] = None,
    prompt: FromQuery[str | None] = None,
    login_hint: FromQuery[str | None] = None,
    ended: FromQuery[str | None] = None,
    method: FromQuery[str | None] = None,
) -> Response[Any]:
    """The branded sign-in page: one email field. ``prompt=login`` (an app asking the user to sign in again,
    OIDC) shows it even with a live session; ``login_hint`` pre-fills the address."""
    target = safe_return_to(return_to)
    if auth_of(request) is not None and prompt != "login":
        return Redirect(target, status_code=303)
    response = _login_page(
        request,
        return_to=target,
        organization=_organization_ref(organization),
        email=(login_hint or "").strip()[:320],
        notice="You have been signed out." if signed_out == "1" else ENDED_MESSAGES.get(ended or ""),
        method=method or "",
    )
    settings: Settings = request.app.state.settings
    if request.cookies.get(sessions.cookie_name(settings)):
        # A cookie that names no live session (revoked, expired, tampered) is of no further use.
        response.set_cookie(sessions.session_cookie(settings, "", max_age=0))
    return response


@post("/login", opt={"public": True}, status_code=303)
async def request_code(request: Request[Any, Any, Any], data: URLEncodedBody[EmailForm]) -> Response[Any]:
    """Send a code if this address may sign in; answer the same either way."""
    settings: Settings = request.app.state.settings
    return_to = safe_return_to(data.return_to)
    organization = _organization_ref(data.organization)
    try:
        email = accounts.normalize_email(data.email)
    except InvalidInput as exc:
        return _login_page(
            request,
            return_to=return_to,
            organization=organization,
            email=data.email[:320],
            error=exc.message,
            status_code=400,
        )
    ip = client_ip(request)
    refused = await _limited(
        (f"login.code.ip:{ip}", ratelimit.LOGIN_CODE_PER_IP),
        (f"login.code.email:{email}", ratelimit.LOGIN_CODE_PER_EMAIL),
    )
    if refused is not None:
        return _too_many(request, refused, "Too many sign-in codes were requested.")
    realm = await sso.realm_of(email)
    if realm is not None and data.method != "code":
        # Home realm discovery: the domain is verified by an organization with an active connection.
        if realm.enforced and len(realm.connections) == 1:
            target = sso.login_path(realm.connections[0]) + "?" + urlencode({"return_to": return_to})
            # Not a redirect: the IdP is another origin, and this form's redirect chain is held to its CSP.
            return render(
                request,
                "portal/sso_continue.html",
                location=target,
                heading=f"{realm.organization['display_name']} signs in with single sign-on",
            )
        return render(
            request,
            "portal/login_sso.html",
            realm=realm,
            email=email,
            return_to=return_to,
            organization=organization,
            return_query=urlencode({"return_to": return_to}),
            login_path=sso.login_path,
        )
    user, allowed = await may_receive_code(email)
    reason = "unknown_email"
    if allowed and realm is not None and realm.enforced:
        policy: PolicyEngine = request.app.state.policy
        if not await holds_sso_manage(user["id"] if user else None, realm.organization, policy):
            # Enforce SSO: no code, and the same answer as for an unknown address (who is an admin stays private).
            allowed, reason = False, "sso_enforced"
    challenge_id, code = await codes.issue_code(
        email, "login", user_id=user["id"] if user else None, ip=ip, details={"delivered": allowed}
    )
    background = None
    if allowed:
        background = BackgroundTask(deliver, settings, email, *code_mail(settings, code), code)
    else:
        await accounts.audit(
            "login.failed",
            target=email,
            details={"reason": reason, "challenge_id": challenge_id},
            ip=ip,
        )
    return Redirect(
        "/login/code?" + _query(challenge=challenge_id, return_to=return_to, organization=organization),
        status_code=303,
        background=background,
    )


@get("/login/code", opt={"public": True})
async def code_page(
    request: Request[Any, Any, Any],
    challenge: FromQuery[str | None] = None,
    return_to: FromQuery[str | None] = None,
    organization: FromQuery[str | None] = None,
) -> Response[Any]:
    """Where the code is entered."""
    target = safe_return_to(return_to)
    org_ref = _organization_ref(organization)
    row = await codes.get_challenge(challenge or "", "login")
    if row is None:
        return Redirect(_login_url(target, org_ref), status_code=303)
    return _code_page(request, challenge=row, return_to=target, organization=org_ref)


@post("/login/code", opt={"public": True}, status_code=303)
async def submit_code(request: Request[Any, Any, Any], data: URLEncodedBody[CodeForm]) -> Response[Any]:
    """Check the code; on success start a new session and go on to ``return_to``."""
    return_to = safe_return_to(data.return_to)
    organization = _organization_ref(data.organization)
    ip = client_ip(request)
    refused = await _limited((f"login.verify.ip:{ip}", ratelimit.LOGIN_VERIFY_PER_IP))
    if refused is not None:
        return _too_many(request, refused, "Too many codes were tried from your network.")
    challenge = await codes.get_challenge(data.challenge, "login")
    if challenge is None:
        await _failed("", ip, "unknown_challenge", data.challenge[:40])
        return _code_page(
            request,
            challenge=None,
            return_to=return_to,
            organization=organization,
            ended="unknown",
            status_code=400,
        )
    code = "".join(data.code.split())
    if not _CODE.fullmatch(code):
        # Not a guess at all: no attempt is counted.
        return _code_page(
            request,
            challenge=challenge,
            return_to=return_to,
            organization=organization,
            error="Enter the 6-digit code from the email.",
            status_code=400,
        )
    result = await codes.verify_code(challenge["id"], code, "login")
    if result.status == "wrong":
        await _failed(challenge["email"], ip, "wrong_code", challenge["id"])
        left = result.attempts_left
        return _code_page(
            request,
            challenge=challenge,
            return_to=return_to,
            organization=organization,
            error=f"Wrong code. {left} attempt{'s' if left != 1 else ''} left.",
            status_code=400,
        )
    if result.status != "ok":
        await _failed(challenge["email"], ip, result.status, challenge["id"])
        return _code_page(
            request,
            challenge=challenge,
            return_to=return_to,
            organization=organization,
            ended=result.status,
            status_code=400,
        )
    policy: PolicyEngine = request.app.state.policy
    existing = await accounts.find_user(challenge["email"])
    if await sso_refuses(
        challenge["email"], existing["id"] if existing else None, policy, method=AUTH_METHOD
    ):
        # A code sent before the organization enforced SSO.
        await _failed(challenge["email"], ip, "sso_enforced", challenge["id"])
        return _code_page(
            request,
            challenge=challenge,
            return_to=return_to,
            organization=organization,
            error="Your organization requires single sign-on: start again and continue with your identity provider.",
            status_code=403,
        )
    signed_in = await sign_in(
        challenge["email"],
        challenge_id=challenge["id"],
        requested_organization=organization or None,
        ip=ip,
        user_agent=request.headers.get("user-agent", ""),
    )
    if signed_in is None:
        # Only reachable by guessing the code of a challenge that was never sent: answer like a wrong code.
        await _failed(challenge["email"], ip, "not_allowed", challenge["id"])
        return _code_page(
            request,
            challenge=challenge,
            return_to=return_to,
            organization=organization,
            error=f"Wrong code. {result.attempts_left} attempt{'s' if result.attempts_left != 1 else ''} left.",
            status_code=400,
        )
    return await complete_sign_in(request, signed_in, after_sign_in(signed_in, return_to))


def after_sign_in(signed_in: SignedIn, return_to: str) -> str:
    """The offer to join comes first, then the chooser if one is needed, then ``return_to``."""
    if signed_in.offers:
        return "/ui/join?" + urlencode({"return_to": return_to})
    if signed_in.choice.choose:
        return "/ui/organizations?" + urlencode({"return_to": return_to})
    return return_to


async def _failed(email: str, ip: str, reason: str, challenge_id: str) -> None:
    await accounts.audit(
        "login.failed", target=email, details={"reason": reason, "challenge_id": challenge_id}, ip=ip
    )


@get("/ui/join", opt={"authenticated": True})
async def join_page(
    request: Request[Any, Any, Any], return_to: FromQuery[str | None] = None
) -> Response[Any]:
    """Offer the organizations that allow the user's proven email domain."""
    auth = require_auth(request)
    target = safe_return_to(return_to)
    offers = await jit_offers(auth.user)
    if not offers:
        return Redirect(target, status_code=303)
    later = target
    if auth.organization is None and len(auth.organizations) > 1:
        later = "/ui/organizations?" + urlencode({"return_to": target})
    return render(request, "portal/join.html", offers=offers, return_to=target, later_url=later)


@post("/ui/join", opt={"authenticated": True}, status_code=303)
async def join_organization(request: Request[Any, Any, Any], data: URLEncodedBody[JoinForm]) -> Response[Any]:
    """Join one offered organization as a member; it becomes the active organization."""
    auth = require_auth(request)
    settings: Settings = request.app.state.settings
    policy: PolicyEngine = request.app.state.policy
    target = safe_return_to(data.return_to)
    try:
        organization = await join(
            auth.user,
            auth.session["id"],
            data.organization_id,
            known_roles=policy.roles,
            ip=client_ip(request),
        )
    except InvalidInput as exc:
        log.warning("JIT join refused for %s: %s", auth.user["id"], exc)
        response: Response[Any] = Redirect(target, status_code=303)
        return flash.flash(response, settings, "You could not be added to this organization.", "error")
    if organization is None:
        raise NotFoundException("This organization cannot be joined with your email address.")
    response = Redirect(target, status_code=303)
    return flash.flash(response, settings, f"You joined {organization['display_name']}.")


HANDLERS = [login_page, request_code, code_page, submit_code, join_page, join_organization]

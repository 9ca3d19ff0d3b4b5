"""Members pages: the list with search and filters, invitations, a member's roles, removal; and the public
page where an invitation is accepted.

Organization routes act on the session's active organization only (the guard has checked membership and
the route's permission); ids in the URL are looked up within it, so another organization's id is a 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect

from policy import Permission
from portal.auth import login
from portal.core import db
from portal.web.flash import flash
from portal.web.forms import FormErrors
from portal.web.guard import Auth, auth_of, require_auth
from portal.web.http import error_response, wants_html
from portal.web.pages import policy_of, render, settings_of
from portal.web.shell import client_ip
from widgets.members import service
from widgets.members.schemas import (
    AcceptForm,
    InvitationView,
    InviteForm,
    MemberQuery,
    RemoveForm,
    RolesForm,
)

if TYPE_CHECKING:
    from portal.web.registry import Widget

URL = "/ui/organization/members"
ACCEPT_URL = "/invitations/accept"
LABELS = {"emails": "Email addresses", "roles": "Roles", "member": "Member", "invitation": "Invitation"}
READ = {"permission": Permission.USERS_READ}
INVITE = {"permission": Permission.USERS_INVITE}
ROLE_CHANGE = {"permission": Permission.USERS_ROLE_CHANGE}
DELETE = {"permission": Permission.USERS_DELETE}
PUBLIC = {"public": True}


def _widget() -> Widget:
    # The package's __init__ imports this module, so WIDGET is read at request time.
    from widgets.members import WIDGET

    return WIDGET


def _actor(request: Request[Any, Any, Any]) -> service.Actor:
    auth = require_auth(request)
    if auth.organization is None or auth.roles is None:  # pragma: no cover - the guard denies first
        raise NotFoundException("No active organization.")
    return service.Actor(
        user_id=auth.user["id"],
        organization_id=auth.organization["id"],
        roles=auth.roles,
        ip=client_ip(request),
    )


def _back(request: Request[Any, Any, Any], url: str, message: str, kind: str = "ok") -> Response[Any]:
    return flash(Redirect(url, status_code=303), settings_of(request), message, kind)


def _json_error(request: Request[Any, Any, Any], exc: FormErrors) -> Response[Any]:
    """The error for an API client: the status, a sentence, and each field's message."""
    fields = [{"key": key, "message": message} for key, message in exc.errors.items()]
    return error_response(request, exc.status_code, " ".join(exc.errors.values()), fields=fields)


async def _refused(
    request: Request[Any, Any, Any],
    exc: FormErrors,
    page: Callable[[], Awaitable[Response[Any]]],
) -> Response[Any]:
    """Bad input or a refused change: the page again with the messages, or a JSON error naming each field."""
    if wants_html(request):
        return await page()
    return _json_error(request, exc)


def _list_url(query: MemberQuery, **changes: str) -> str:
    params = {"q": query.q, "role": query.role, "status": query.status, **changes}
    encoded = urlencode({k: v for k, v in params.items() if v})
    return URL + (f"?{encoded}" if encoded else "")


async def _list_page(
    request: Request[Any, Any, Any],
    query: MemberQuery,
    *,
    invite_form: InviteForm | None = None,
    invite_errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    actor = _actor(request)
    policy = policy_of(request)
    search = query.q.strip()[: service.MAX_SEARCH]
    query = service.clean_query(policy, query)
    page = await service.list_members(policy, actor.organization_id, query)
    if invite_form is None:
        default = ["member"] if "member" in policy.roles else []
        invite_form = InviteForm(roles=default, submission_id=service.new_submission_id())
    return render(
        request,
        "members/index.html",
        status_code=status_code,
        widget=_widget(),
        page=page,
        query=query,
        search=search,
        filtered=bool(query.q or query.role or query.status),
        next_url=_list_url(query, after=page.next_cursor) if page.next_cursor else None,
        prev_url=_list_url(query, before=page.prev_cursor) if page.prev_cursor else None,
        invited_url=_list_url(query, status="invited"),
        roles=policy.roles,
        role_choices=service.role_choices(policy, actor.roles),
        invite_form=invite_form,
        invite_roles=service.role_list(invite_form.roles),
        invite_errors=invite_errors or {},
        labels=LABELS,
        ttl_days=max(1, round(settings_of(request).invitation_ttl / 86400)),
        me=actor.user_id,
        outranks=lambda m: m.user_id == actor.user_id or policy.grants_subset(actor.roles, m.roles),
    )


async def _member_page(
    request: Request[Any, Any, Any],
    member_id: str,
    *,
    roles_form: RolesForm | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    actor = _actor(request)
    policy = policy_of(request)
    try:
        member = await service.get_member(actor.organization_id, member_id)
    except service.NotFound:
        raise NotFoundException("No such member in this organization.") from None
    checked = service.role_list(roles_form.roles) if roles_form is not None else member.roles
    return render(
        request,
        "members/member.html",
        status_code=status_code,
        widget=_widget(),
        member=member,
        is_self=member.user_id == actor.user_id,
        role_choices=service.role_choices(policy, actor.roles),
        checked_roles=checked,
        errors=errors or {},
        labels=LABELS,
    )


async def _remove_page(request: Request[Any, Any, Any], member_id: str) -> Response[Any]:
    """The confirmation step before a removal: who, what they lose, and the button that does it."""
    actor = _actor(request)
    try:
        member = await service.get_member(actor.organization_id, member_id)
    except service.NotFound:
        raise NotFoundException("No such member in this organization.") from None
    return render(
        request,
        "members/remove.html",
        widget=_widget(),
        member=member,
        is_self=member.user_id == actor.user_id,
    )


class MembersController(Controller):
    path = URL

    @get("", opt=READ)
    async def show(
        self,
        request: Request[Any, Any, Any],
        q: FromQuery[str] = "",
        role: FromQuery[str] = "",
        status: FromQuery[str] = "",
        after: FromQuery[str] = "",
        before: FromQuery[str] = "",
    ) -> Response[Any]:
        """Members (and pending invitations) with search, filters and keyset pages."""
        return await _list_page(
            request, MemberQuery(q=q, role=role, status=status, after=after, before=before)
        )

    @post("/invitations", opt=INVITE, status_code=303)
    async def invite(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[InviteForm]
    ) -> Response[Any]:
        """Invite one or several addresses; each gets an email with a link. All or nothing."""
        actor = _actor(request)
        settings = settings_of(request)
        policy = policy_of(request)
        try:
            try:
                async with db.write_transaction():
                    result = await service.invite(settings, policy, actor, data)
            except Exception as exc:
                # The same form submitted twice at once: the loser of the race finds the winner's rows.
                if not db.is_unique_violation(exc):
                    raise
                async with db.write_transaction():
                    result = await service.invite(settings, policy, actor, data)
        except FormErrors as exc:
            refused = exc
            return await _refused(
                request,
                exc,
                lambda: _list_page(
                    request,
                    MemberQuery(),
                    invite_form=data,
                    invite_errors=refused.errors,
                    status_code=refused.status_code,
                ),
            )
        if result.repeated:
            return _back(request, URL, "These invitations were already sent.")
        failed = await service.send_invitations(settings, actor, result.invitations)
        count = len(result.invitations)
        if failed:
            return _back(
                request,
                URL,
                f"Invited, but the email to {', '.join(failed)} could not be sent. Use Resend to try again.",
                "error",
            )
        sent = result.invitations[0][1] if count == 1 else f"{count} people"
        return _back(request, URL, f"Invitation sent to {sent}.")

    @post("/invitations/{invitation_id:str}/resend", opt=INVITE, status_code=303)
    async def resend(self, request: Request[Any, Any, Any], invitation_id: FromPath[str]) -> Response[Any]:
        """Send a new link; the previous one stops working."""
        actor = _actor(request)
        settings = settings_of(request)
        try:
            async with db.write_transaction():
                email, token = await service.resend(settings, policy_of(request), actor, invitation_id)
        except service.NotFound:
            raise NotFoundException("No such invitation in this organization.") from None
        except FormErrors as exc:
            if wants_html(request):
                return _back(request, URL, " ".join(exc.errors.values()), "error")
            return _json_error(request, exc)
        failed = await service.send_invitations(settings, actor, [(invitation_id, email, token)])
        if failed:
            return _back(request, URL, f"The email to {email} could not be sent. Try again later.", "error")
        return _back(request, URL, f"A new invitation link was sent to {email}.")

    @post("/invitations/{invitation_id:str}/revoke", opt=INVITE, status_code=303)
    async def revoke(self, request: Request[Any, Any, Any], invitation_id: FromPath[str]) -> Response[Any]:
        """Revoke a pending invitation: its link stops working."""
        actor = _actor(request)
        try:
            async with db.write_transaction():
                email = await service.revoke(actor, invitation_id)
        except service.NotFound:
            raise NotFoundException("No such invitation in this organization.") from None
        except FormErrors as exc:
            if wants_html(request):
                return _back(request, URL, " ".join(exc.errors.values()), "error")
            return _json_error(request, exc)
        return _back(request, URL, f"The invitation to {email} was revoked.")

    @get("/{member_id:str}", opt=READ)
    async def member(self, request: Request[Any, Any, Any], member_id: FromPath[str]) -> Response[Any]:
        """One member: details, and the role and removal forms for those who may use them."""
        return await _member_page(request, member_id)

    @post("/{member_id:str}/roles", opt=ROLE_CHANGE, status_code=303)
    async def change_roles(
        self, request: Request[Any, Any, Any], member_id: FromPath[str], data: URLEncodedBody[RolesForm]
    ) -> Response[Any]:
        """Give the member new roles; refused for roles the actor does not hold, or for the last admin."""
        actor = _actor(request)
        try:
            async with db.write_transaction():
                member, changed = await service.change_roles(policy_of(request), actor, member_id, data)
        except service.NotFound:
            raise NotFoundException("No such member in this organization.") from None
        except FormErrors as exc:
            refused = exc
            return await _refused(
                request,
                exc,
                lambda: _member_page(
                    request,
                    member_id,
                    roles_form=data,
                    errors=refused.errors,
                    status_code=refused.status_code,
                ),
            )
        who = member.name or member.email
        back = URL if data.back == "list" else f"{URL}/{member.id}"
        if not changed:
            return _back(request, back, f"Nothing changed: {who} already has these roles.")
        return _back(request, back, f"Roles of {who} saved.")

    @get("/{member_id:str}/remove", opt=DELETE)
    async def confirm_remove(
        self, request: Request[Any, Any, Any], member_id: FromPath[str]
    ) -> Response[Any]:
        """Ask before removing: the page says what the member loses; nothing changes until confirmed."""
        return await _remove_page(request, member_id)

    @post("/{member_id:str}/remove", opt=DELETE, status_code=303)
    async def remove(
        self, request: Request[Any, Any, Any], member_id: FromPath[str], data: URLEncodedBody[RemoveForm]
    ) -> Response[Any]:
        """Remove the member from the organization; they lose access at their next request.

        A browser's form must carry ``confirm=yes`` (the confirmation page's button); without it the
        confirmation page is shown and nothing changes. API clients (JSON) confirm by calling.
        """
        actor = _actor(request)
        if wants_html(request) and data.confirm != "yes":
            return await _remove_page(request, member_id)
        try:
            async with db.write_transaction():
                member = await service.remove(policy_of(request), actor, member_id)
        except service.NotFound:
            raise NotFoundException("No such member in this organization.") from None
        except FormErrors as exc:
            refused = exc
            return await _refused(
                request,
                exc,
                lambda: _member_page(
                    request, member_id, errors=refused.errors, status_code=refused.status_code
                ),
            )
        who = member.name or member.email
        if member.user_id == actor.user_id:
            return _back(request, "/ui/", "You left the organization.")
        return _back(request, URL, f"{who} was removed from the organization.")


# --- accepting an invitation (public) -----------------------------------------------------------------------

#: Status of the page for each state of an unusable link.
_GONE = {"unknown": 404, "expired": 410, "revoked": 410, "accepted": 410, "replaced": 410}


def _accept_page(
    request: Request[Any, Any, Any],
    *,
    token: str,
    view: InvitationView | None,
    state: str,
    status_code: int = 200,
) -> Response[Any]:
    auth = auth_of(request)
    return render(
        request,
        "members/accept.html",
        status_code=status_code,
        token=token,
        invitation=view,
        state=state,
        signed_in_email=auth.user["email"] if auth else None,
        is_member=bool(
            auth and view and any(org["id"] == view.organization_id for org in auth.organizations)
        ),
    )


def _state_for(auth: Auth | None, view: InvitationView) -> str:
    if view.state != "open":
        return view.state
    if auth is not None and auth.user["email"] != view.email:
        return "other_account"
    return "open"


class InvitationController(Controller):
    path = "/invitations"

    @get("/accept", opt=PUBLIC)
    async def show(self, request: Request[Any, Any, Any], token: FromQuery[str] = "") -> Response[Any]:
        """What the link leads to: the invitation and a button to accept it (mail scanners only GET)."""
        view = await service.find_invitation(token)
        if view is None:
            return _accept_page(request, token="", view=None, state="unknown", status_code=404)
        state = _state_for(auth_of(request), view)
        return _accept_page(request, token=token, view=view, state=state, status_code=_GONE.get(state, 200))

    @post("/accept", opt=PUBLIC, status_code=303)
    async def accept(
        self, request: Request[Any, Any, Any], data: URLEncodedBody[AcceptForm]
    ) -> Response[Any]:
        """Accept once: join with the invited roles, signed in as the invited address."""
        auth = auth_of(request)
        policy = policy_of(request)
        ip = client_ip(request)
        view = await service.find_invitation(data.token)
        if view is None:
            return _accept_page(request, token="", view=None, state="unknown", status_code=404)
        state = _state_for(auth, view)
        if state == "other_account" and not data.switch_account:
            return _accept_page(request, token=data.token, view=view, state=state, status_code=409)
        same_user = auth is not None and auth.user["email"] == view.email
        signed_in: login.SignedIn | None = None
        for attempt in (1, 2):
            try:
                async with db.write_transaction():
                    accepted = await service.accept(
                        policy, data.token, user=dict(auth.user) if auth and same_user else None, ip=ip
                    )
                    if auth is not None and same_user:
                        await service.make_active(auth.session["id"], auth.user["id"], view.organization_id)
                    else:
                        signed_in = await login.open_session(
                            accepted.user,
                            auth_method="invitation",
                            requested_organization=view.organization_id,
                            ip=ip,
                            user_agent=request.headers.get("user-agent", ""),
                            details={"invitation_id": view.id},
                        )
                break
            except service.InvitationUnusable as exc:
                return _accept_page(
                    request,
                    token="",
                    view=exc.view,
                    state=exc.state,
                    status_code=_GONE.get(exc.state, 410),
                )
            except Exception as exc:
                # The address signed up at this very moment (its user row appeared between our look-up and
                # our insert): everything was rolled back; the second attempt finds that user.
                if attempt == 2 or not db.is_unique_violation(exc):
                    raise
        if accepted.already_member:
            message = f"You were already a member of {view.organization_name}; the invitation's roles are yours now."
        else:
            message = f"Welcome to {view.organization_name}."
        response: Response[Any]
        if signed_in is not None:
            # A new session for the invited address; another account's session in this browser ends.
            response = await login.complete_sign_in(request, signed_in, "/ui/")
        else:
            response = Redirect("/ui/", status_code=303)
        return flash(response, settings_of(request), message)

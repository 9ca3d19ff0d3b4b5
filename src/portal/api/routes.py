"""The ``/api/v1`` resources (DESIGN §13). Each handler checks the key's organization binding, then calls
the same service function the widget (or the CLI) calls, inside one write transaction: the widgets' rules
(last administrator, roles from the policy files, one owner per verified domain) hold here too."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Request, Response, delete, get, patch, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from portal.api import audit as audit_query
from portal.api import schemas as s
from portal.api.http import (
    MAX_LIMIT,
    PROBLEM,
    ApiError,
    Caller,
    FieldError,
    Problem,
    caller_of,
    check_if_match,
    decode_cursor,
    encode_cursor,
    etag_of,
    next_link,
    not_found,
    page_headers,
    policy_of,
    portal_state,
    settings_of,
)
from portal.auth import accounts
from portal.core import clock, db
from portal.core.tables import Invitation as InvitationTable
from portal.core.tables import Membership as MembershipTable
from portal.core.tables import Organization as OrganizationTable
from portal.core.tables import Session as SessionTable
from portal.core.tables import User as UserTable
from portal.web.forms import FormErrors
from widgets.domains import service as domains
from widgets.domains.schemas import AddDomainForm, DomainView
from widgets.members import service as members
from widgets.members.schemas import InviteForm, Member, MemberQuery, RolesForm
from widgets.security import service as security
from widgets.session_policy import service as session_policy
from widgets.session_policy.schemas import PolicyForm
from widgets.settings import service as settings_service
from widgets.settings.schemas import SettingsForm

PathId = Annotated[str, PathParameter(max_length=60)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description="Page size (at most 100).")]
Cursor = Annotated[str | None, QueryParameter(max_length=2000, description="The `next` link's cursor.")]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        max_length=255,
        description="Retry safely: the same key with the same body answers the first answer again; "
        "with another body, 422. Kept 24 hours per API key.",
    ),
]
IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match", max_length=200, description="The ETag you read; 412 if it changed since."
    ),
]


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem, description=description, media_type=PROBLEM, generate_examples=False
    )


_ALL = {
    400: _problem("Malformed request (not JSON, bad header)"),
    401: _problem("No API key, or an unknown or revoked one"),
    403: _problem("The key lacks the scope (named in missing_scope), or is bound to one organization"),
    404: _problem("No such object for this key (another organization's ids included)"),
    413: _problem("Body larger than 64 KiB"),
    422: _problem("Invalid input: each bad field is named in errors"),
    429: _problem("Rate limit: see Retry-After"),
}


def errors(*extra: int) -> dict[int, ResponseSpec]:
    specs = dict(_ALL)
    more = {
        409: _problem("Conflict with the current state (e.g. the last administrator)"),
        412: _problem("If-Match does not match the current ETag"),
    }
    for code in extra:
        specs[code] = more[code]
    return dict(sorted(specs.items()))


def _opt(scope: str) -> dict[str, Any]:
    return {"scope": scope}


def _ip(caller: Caller) -> str:
    return caller.ip


# --- organizations -------------------------------------------------------------------------------------


async def _org_row(caller: Caller, organization_id: PathId) -> dict[str, Any]:
    # tenant check: a bound key reaches its own organization only; any other id is unknown.
    if caller.organization_id is not None and caller.organization_id != organization_id:
        raise not_found("organization")
    row = await (
        OrganizationTable.select()
        .where(OrganizationTable.id == organization_id)
        .first()
        .output(load_json=True)
    )
    if row is None:
        raise not_found("organization")
    return dict(row)


def _organization(row: dict[str, Any]) -> s.Organization:
    custom = row["session_policy_source"] == "custom"
    return s.Organization(
        id=row["id"],
        name=row["name"],
        display_name=row["display_name"],
        external_id=row["external_id"],
        allowed_email_domains=list(row["allowed_email_domains"] or []),
        features=list(row["features"] or []),
        session_policy=s.SessionPolicy(
            source="custom" if custom else "application",
            absolute_timeout=row["session_absolute_timeout"] if custom else None,
            idle_timeout=row["session_idle_timeout"] if custom else None,
        ),
        metadata=dict(row["metadata"] or {}),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _policy_form(policy: s.SessionPolicyIn) -> PolicyForm:
    """The API's seconds as the widget's form (whole minutes), confirmed: an app means what it sends."""

    def minutes(value: int | None, field: str) -> str:
        if value is None:
            return ""
        if value % 60:
            raise ApiError(
                422,
                f"session_policy.{field}: use whole minutes (a multiple of 60 seconds).",
                errors=[
                    FieldError(f"session_policy.{field}", "Use whole minutes (a multiple of 60 seconds).")
                ],
            )
        return str(value // 60)

    return PolicyForm(
        source=policy.source,
        absolute_value=minutes(policy.absolute_timeout, "absolute_timeout"),
        absolute_unit="minutes",
        idle_value=minutes(policy.idle_timeout, "idle_timeout"),
        idle_unit="minutes",
        confirm="yes",
        confirmed_count=str(10**12),
    )


def _prefixed(exc: FormErrors, prefix: str) -> FormErrors:
    """The widget's field names (``idle_value``) as the API's (``session_policy.idle_timeout``)."""
    fields = {
        f"{prefix}.{k.removesuffix('_value')}_timeout" if k.endswith("_value") else f"{prefix}.{k}": v
        for k, v in exc.errors.items()
    }
    return FormErrors(fields, exc.status_code)


async def _apply(
    request: Request[Any, Any, Any],
    caller: Caller,
    organization_id: PathId,
    data: JSONBody[s.OrganizationUpdate],
) -> None:
    """Apply an update through the services: settings (name, display name, allowed domains), session policy,
    then the app-owned fields. Call inside a write transaction."""
    settings = settings_of(request)
    if data.name is not None or data.display_name is not None or data.allowed_email_domains is not None:
        current = await settings_service.get_settings(organization_id)
        form = SettingsForm(
            name=data.name if data.name is not None else current.name,
            display_name=data.display_name if data.display_name is not None else current.display_name,
            allowed_email_domains="\n".join(
                data.allowed_email_domains
                if data.allowed_email_domains is not None
                else current.allowed_email_domains
            ),
        )
        await settings_service.update_settings(organization_id, form, actor_id=caller.key_id, ip=caller.ip)
    if data.session_policy is not None:
        try:
            await session_policy.save(
                settings,
                organization_id,
                _policy_form(data.session_policy),
                actor_id=caller.key_id,
                own_session={},
                ip=caller.ip,
            )
        except FormErrors as exc:
            raise _prefixed(exc, "session_policy") from None
    if data.features is not None or data.external_id is not None or data.metadata is not None:
        extra: dict[str, Any] = {}
        if data.external_id is not None:
            extra["external_id"] = data.external_id
        await accounts.update_organization(
            organization_id,
            features=data.features,
            metadata=data.metadata,
            actor_id=caller.key_id,
            ip=caller.ip,
            **extra,
        )


@get("/organizations", opt=_opt("organizations:read"), responses=errors(), tags=["organizations"])
async def list_organizations(
    request: Request[Any, Any, Any],
    limit: Limit = 20,
    cursor: Cursor = None,
    external_id: Annotated[str | None, QueryParameter(max_length=200)] = None,
    name: Annotated[str | None, QueryParameter(max_length=100)] = None,
) -> Response[s.OrganizationPage]:
    """Organizations, by id; filter by `external_id` or `name`. A bound key sees its own only."""
    caller = caller_of(request)
    where: Any = OrganizationTable.id.is_not_null()
    if caller.organization_id is not None:
        where &= OrganizationTable.id == caller.organization_id  # tenant check
    if external_id is not None:
        where &= OrganizationTable.external_id == external_id
    if name is not None:
        where &= OrganizationTable.name == name
    after = decode_cursor(cursor, 1)
    if after is not None:
        where &= OrganizationTable.id > after[0]
    rows = (
        await OrganizationTable.select()
        .where(where)
        .order_by(OrganizationTable.id)
        .limit(limit + 1)
        .output(load_json=True)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    link = next_link(request, encode_cursor(rows[-1]["id"]) if more and rows else None)
    return Response(
        s.OrganizationPage(data=[_organization(r) for r in rows], next=link), headers=page_headers(link)
    )


@post("/organizations", opt=_opt("organizations:write"), responses=errors(409), tags=["organizations"])
async def create_organization(
    request: Request[Any, Any, Any],
    data: JSONBody[s.OrganizationCreate],
    idempotency_key: IdempotencyKey = None,
) -> Response[s.Organization]:
    """Create an organization (a key bound to an organization cannot)."""
    caller = caller_of(request)
    if caller.organization_id is not None:
        raise ApiError(403, "This API key is bound to one organization and cannot create organizations.")
    async with db.write_transaction():
        row = await accounts.create_organization(
            data.name,
            data.display_name,
            features=data.features,
            external_id=data.external_id or None,
            actor_id=caller.key_id,
        )
        rest = s.OrganizationUpdate(
            allowed_email_domains=data.allowed_email_domains or None,
            session_policy=data.session_policy,
            metadata=data.metadata or None,
        )
        await _apply(request, caller, row["id"], rest)
        created = _organization(await _org_row(caller, row["id"]))
    return Response(
        created,
        status_code=201,
        headers={
            "Location": f"{settings_of(request).origin}/api/v1/organizations/{created.id}",
            "ETag": etag_of(created),
        },
    )


@get(
    "/organizations/{organization_id:str}",
    opt=_opt("organizations:read"),
    responses=errors(),
    tags=["organizations"],
)
async def get_organization(
    request: Request[Any, Any, Any], organization_id: PathId
) -> Response[s.Organization]:
    """One organization, with an ETag for `If-Match`."""
    org = _organization(await _org_row(caller_of(request), organization_id))
    return Response(org, headers={"ETag": etag_of(org)})


@patch(
    "/organizations/{organization_id:str}",
    opt=_opt("organizations:write"),
    responses=errors(409, 412),
    tags=["organizations"],
)
async def update_organization(
    request: Request[Any, Any, Any],
    organization_id: PathId,
    data: JSONBody[s.OrganizationUpdate],
    if_match: IfMatch = None,
) -> Response[s.Organization]:
    """Change the fields given. With `If-Match`, only if nobody changed the organization since (412)."""
    caller = caller_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)  # tenant check before taking the organization's lock
        await db.lock_organization(organization_id)
        check_if_match(request, _organization(await _org_row(caller, organization_id)))
        await _apply(request, caller, organization_id, data)
        org = _organization(await _org_row(caller, organization_id))
    return Response(org, headers={"ETag": etag_of(org)})


@delete(
    "/organizations/{organization_id:str}",
    opt=_opt("organizations:write"),
    responses=errors(412),
    tags=["organizations"],
    status_code=204,
)
async def delete_organization(
    request: Request[Any, Any, Any], organization_id: PathId, if_match: IfMatch = None
) -> None:
    """Delete an organization with its memberships, invitations and domains (audit events stay)."""
    caller = caller_of(request)
    async with db.write_transaction():
        check_if_match(request, _organization(await _org_row(caller, organization_id)))
        await accounts.delete_organization(organization_id, actor_id=caller.key_id, ip=caller.ip)


# --- users ---------------------------------------------------------------------------------------------


def _user(row: dict[str, Any]) -> s.User:
    return s.User(
        id=row["id"],
        email=row["email"],
        email_verified=bool(row["email_verified"]),
        given_name=row["given_name"],
        family_name=row["family_name"],
        display_name=row["display_name"],
        created_at=row["created_at"],
    )


def _visible_users(caller: Caller) -> Any:
    if caller.organization_id is None:
        return UserTable.id.is_not_null()
    # tenant check: a bound key sees the users who are members of its organization.
    member_ids = MembershipTable.select(MembershipTable.user).where(
        MembershipTable.organization == caller.organization_id
    )
    return UserTable.id.is_in(member_ids)


@get("/users", opt=_opt("users:read"), responses=errors(), tags=["users"])
async def list_users(
    request: Request[Any, Any, Any],
    limit: Limit = 20,
    cursor: Cursor = None,
    email: Annotated[str | None, QueryParameter(max_length=320)] = None,
) -> Response[s.UserPage]:
    """Users, by id; `email` finds one. A bound key sees its organization's members only."""
    caller = caller_of(request)
    where: Any = _visible_users(caller)
    if email is not None:
        where &= UserTable.email == email.strip().lower()
    after = decode_cursor(cursor, 1)
    if after is not None:
        where &= UserTable.id > after[0]
    rows = await UserTable.select().where(where).order_by(UserTable.id).limit(limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    link = next_link(request, encode_cursor(rows[-1]["id"]) if more and rows else None)
    return Response(s.UserPage(data=[_user(r) for r in rows], next=link), headers=page_headers(link))


@post("/users", opt=_opt("users:write"), responses=errors(409), tags=["users"])
async def create_user(
    request: Request[Any, Any, Any], data: JSONBody[s.UserCreate], idempotency_key: IdempotencyKey = None
) -> Response[s.User]:
    """Create a user (a key bound to an organization cannot: add members with memberships instead)."""
    caller = caller_of(request)
    if caller.organization_id is not None:
        raise ApiError(403, "This API key is bound to one organization and cannot create users.")
    async with db.write_transaction():
        row = await accounts.create_user(
            data.email,
            given_name=data.given_name,
            family_name=data.family_name,
            verified=data.email_verified,
            actor_id=caller.key_id,
            ip=caller.ip,
        )
    user = _user(row)
    return Response(
        user, status_code=201, headers={"Location": f"{settings_of(request).origin}/api/v1/users/{user.id}"}
    )


async def _user_row(caller: Caller, user_id: PathId) -> dict[str, Any]:
    row = await UserTable.select().where((UserTable.id == user_id) & _visible_users(caller)).first()
    if row is None:
        raise not_found("user")
    return dict(row)


@get("/users/{user_id:str}", opt=_opt("users:read"), responses=errors(), tags=["users"])
async def get_user(request: Request[Any, Any, Any], user_id: PathId) -> s.User:
    """One user."""
    return _user(await _user_row(caller_of(request), user_id))


# --- memberships ---------------------------------------------------------------------------------------


def _actor(request: Request[Any, Any, Any], caller: Caller, organization_id: PathId) -> members.Actor:
    # The app's key stands above every role: it may grant any role the policy defines. The rails that protect
    # the organization itself (its last administrator) still hold.
    return members.Actor(
        user_id=caller.key_id,
        organization_id=organization_id,
        roles=tuple(policy_of(request).roles),
        ip=caller.ip,
        is_user=False,
    )


def _membership(organization_id: PathId, member: Member) -> s.Membership:
    return s.Membership(
        id=member.id,
        organization_id=organization_id,
        user_id=member.user_id,
        email=member.email,
        name=member.name,
        roles=member.roles,
        status=member.status,
        source=member.source,
        created_at=member.joined,
    )


async def _member(organization_id: PathId, membership_id: PathId) -> Member:
    try:
        return await members.get_member(organization_id, membership_id)  # tenant check inside
    except members.NotFound:
        raise not_found("membership") from None


MEMBERS = "/organizations/{organization_id:str}/memberships"


@get(MEMBERS, opt=_opt("memberships:read"), responses=errors(), tags=["memberships"])
async def list_memberships(
    request: Request[Any, Any, Any],
    organization_id: PathId,
    limit: Limit = 20,
    cursor: Cursor = None,
    role: Annotated[str | None, QueryParameter(max_length=100)] = None,
    q: Annotated[str | None, QueryParameter(max_length=100, description="Start of a name or email.")] = None,
) -> Response[s.MembershipPage]:
    """An organization's members (the Members widget's list: by name, keyset pages)."""
    await _org_row(caller_of(request), organization_id)
    if role is not None and role not in policy_of(request).roles:
        raise ApiError(
            422,
            f"role: {role!r} is not a role defined in the policy.",
            errors=[
                FieldError(
                    "role", f"Not a role defined in the policy ({', '.join(policy_of(request).roles)})."
                )
            ],
        )
    page = await members.list_members(
        policy_of(request),
        organization_id,
        MemberQuery(q=q or "", role=role or "", status="active", after=cursor or ""),
        limit=limit,
    )
    link = next_link(request, page.next_cursor)
    data = [_membership(organization_id, m) for m in page.members]
    return Response(s.MembershipPage(data=data, next=link), headers=page_headers(link))


@post(MEMBERS, opt=_opt("memberships:write"), responses=errors(409), tags=["memberships"])
async def create_membership(
    request: Request[Any, Any, Any],
    organization_id: PathId,
    data: JSONBody[s.MembershipCreate],
    idempotency_key: IdempotencyKey = None,
) -> Response[s.Membership]:
    """Add an existing user with roles defined in the policy files (source `api`)."""
    caller = caller_of(request)
    policy = policy_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        if not await UserTable.exists().where(UserTable.id == data.user_id):
            raise ApiError(422, "user_id: no such user.", errors=[FieldError("user_id", "No such user.")])
        roles = members.parse_roles(policy, data.roles)
        row = await accounts.add_member(
            organization_id,
            data.user_id,
            roles,
            known_roles=policy.roles,
            source="api",
            actor_id=caller.key_id,
        )
        created = _membership(organization_id, await _member(organization_id, row["id"]))
    return Response(
        created,
        status_code=201,
        headers={
            "Location": f"{settings_of(request).origin}/api/v1{MEMBERS.replace('{organization_id:str}', organization_id)}/{created.id}",
            "ETag": etag_of(created),
        },
    )


@get(MEMBERS + "/{membership_id:str}", opt=_opt("memberships:read"), responses=errors(), tags=["memberships"])
async def get_membership(
    request: Request[Any, Any, Any], organization_id: PathId, membership_id: PathId
) -> Response[s.Membership]:
    """One membership, with an ETag for `If-Match`."""
    await _org_row(caller_of(request), organization_id)
    found = _membership(organization_id, await _member(organization_id, membership_id))
    return Response(found, headers={"ETag": etag_of(found)})


@patch(
    MEMBERS + "/{membership_id:str}",
    opt=_opt("memberships:write"),
    responses=errors(409, 412),
    tags=["memberships"],
)
async def update_membership(
    request: Request[Any, Any, Any],
    organization_id: PathId,
    membership_id: PathId,
    data: JSONBody[s.MembershipUpdate],
    if_match: IfMatch = None,
) -> Response[s.Membership]:
    """Change a member's roles (policy roles only; the last member who can change roles keeps them: 409)."""
    caller = caller_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        await db.lock_organization(organization_id)
        check_if_match(request, _membership(organization_id, await _member(organization_id, membership_id)))
        await members.change_roles(
            policy_of(request),
            _actor(request, caller, organization_id),
            membership_id,
            RolesForm(roles=data.roles),
        )
        found = _membership(organization_id, await _member(organization_id, membership_id))
    return Response(found, headers={"ETag": etag_of(found)})


@delete(
    MEMBERS + "/{membership_id:str}",
    opt=_opt("memberships:write"),
    responses=errors(409, 412),
    tags=["memberships"],
    status_code=204,
)
async def delete_membership(
    request: Request[Any, Any, Any], organization_id: PathId, membership_id: PathId, if_match: IfMatch = None
) -> None:
    """Remove a member: they lose access at once (the account stays)."""
    caller = caller_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        check_if_match(request, _membership(organization_id, await _member(organization_id, membership_id)))
        await members.remove(policy_of(request), _actor(request, caller, organization_id), membership_id)


# --- invitations ---------------------------------------------------------------------------------------

INVITATIONS = "/organizations/{organization_id:str}/invitations"


@get(INVITATIONS, opt=_opt("invitations:read"), responses=errors(), tags=["invitations"])
async def list_invitations(
    request: Request[Any, Any, Any], organization_id: PathId, limit: Limit = 20, cursor: Cursor = None
) -> Response[s.InvitationPage]:
    """Pending invitations (neither accepted nor revoked; `expired` says whether the link still works)."""
    await _org_row(caller_of(request), organization_id)
    page = await members.list_members(
        policy_of(request), organization_id, MemberQuery(status="invited", after=cursor or ""), limit=limit
    )
    link = next_link(request, page.next_cursor)
    data = [
        s.Invitation(
            id=i.id,
            organization_id=organization_id,
            email=i.email,
            roles=i.roles,
            created_at=i.created_at,
            expires_at=i.expires_at,
            expired=i.expired,
        )
        for i in page.invitations
    ]
    return Response(s.InvitationPage(data=data, next=link), headers=page_headers(link))


@post(INVITATIONS, opt=_opt("invitations:write"), responses=errors(409), tags=["invitations"])
async def create_invitations(
    request: Request[Any, Any, Any],
    organization_id: PathId,
    data: JSONBody[s.InvitationCreate],
    idempotency_key: IdempotencyKey = None,
) -> Response[s.InvitationsCreated]:
    """Invite people by email with roles (the Members widget's rules: nobody already a member or invited)."""
    caller = caller_of(request)
    settings = settings_of(request)
    actor = _actor(request, caller, organization_id)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        result = await members.invite(
            settings, policy_of(request), actor, InviteForm(emails="\n".join(data.emails), roles=data.roles)
        )
    undelivered = await members.send_invitations(settings, actor, result.invitations)
    created = await _invitations(
        organization_id, [invitation_id for invitation_id, _, _ in result.invitations]
    )
    return Response(s.InvitationsCreated(data=created, undelivered=undelivered), status_code=201)


@delete(
    INVITATIONS + "/{invitation_id:str}",
    opt=_opt("invitations:write"),
    responses=errors(409),
    tags=["invitations"],
    status_code=204,
)
async def revoke_invitation(
    request: Request[Any, Any, Any], organization_id: PathId, invitation_id: PathId
) -> None:
    """Revoke a pending invitation: its link stops working."""
    caller = caller_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        try:
            await members.revoke(_actor(request, caller, organization_id), invitation_id)
        except members.NotFound:
            raise not_found("invitation") from None


@post(
    INVITATIONS + "/{invitation_id:str}/resend",
    opt=_opt("invitations:write"),
    responses=errors(409),
    tags=["invitations"],
    status_code=200,
)
async def resend_invitation(
    request: Request[Any, Any, Any],
    organization_id: PathId,
    invitation_id: PathId,
    idempotency_key: IdempotencyKey = None,
) -> s.InvitationResent:
    """Mail a new link with a new expiry; the previous link stops working (409 if accepted or revoked)."""
    caller = caller_of(request)
    settings = settings_of(request)
    actor = _actor(request, caller, organization_id)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        try:
            email, token = await members.resend(settings, policy_of(request), actor, invitation_id)
        except members.NotFound:
            raise not_found("invitation") from None
    failed = await members.send_invitations(settings, actor, [(invitation_id, email, token)])
    (found,) = await _invitations(organization_id, [invitation_id])
    return s.InvitationResent(data=found, delivered=not failed)


async def _invitations(organization_id: str, invitation_ids: list[str]) -> list[s.Invitation]:
    """The given invitations of the organization (just written by the Members service), by email."""
    rows = (
        await InvitationTable.select(
            InvitationTable.id,
            InvitationTable.email,
            InvitationTable.roles,
            InvitationTable.created_at,
            InvitationTable.expires_at,
        )
        .where(
            (InvitationTable.organization == organization_id)
            & InvitationTable.id.is_in(invitation_ids or [""])
        )
        .order_by(InvitationTable.email)
        .output(load_json=True)
    )
    now = clock.utcnow()
    return [
        s.Invitation(
            id=r["id"],
            organization_id=organization_id,
            email=r["email"],
            roles=list(r["roles"] or []),
            created_at=r["created_at"],
            expires_at=r["expires_at"],
            expired=r["expires_at"] <= now,
        )
        for r in rows
    ]


@get("/roles", opt=_opt("memberships:read"), responses=errors(), tags=["memberships"])
async def list_roles(request: Request[Any, Any, Any]) -> s.RoleList:
    """The roles defined in the policy files (the only ones memberships and invitations accept)."""
    policy = policy_of(request)
    return s.RoleList(
        data=[
            s.Role(key=role, permissions=sorted(p.value for p in policy.permissions_for(role)))
            for role in policy.roles
        ]
    )


# --- domains -------------------------------------------------------------------------------------------

DOMAINS = "/organizations/{organization_id:str}/domains"


def _domain(organization_id: PathId, view: DomainView) -> s.Domain:
    return s.Domain(
        id=view.id,
        organization_id=organization_id,
        domain=view.domain,
        display_name=view.display_name,
        status=view.status,
        record_name=view.record_name,
        record_value=view.record_value,
        reason=view.reason,
        created_at=view.created_at,
        verify_by=view.verify_by,
        last_checked_at=view.last_checked_at,
        check_queued=view.check_queued,
        verified_at=view.verified_at,
    )


@get(DOMAINS, opt=_opt("domains:read"), responses=errors(), tags=["domains"])
async def list_domains(request: Request[Any, Any, Any], organization_id: PathId) -> s.DomainPage:
    """An organization's domains, by name (at most 100: one page)."""
    await _org_row(caller_of(request), organization_id)
    views = await domains.list_domains(settings_of(request), organization_id)
    return s.DomainPage(data=[_domain(organization_id, v) for v in views], next=None)


@post(DOMAINS, opt=_opt("domains:write"), responses=errors(409), tags=["domains"])
async def add_domain(
    request: Request[Any, Any, Any],
    organization_id: PathId,
    data: JSONBody[s.DomainCreate],
    idempotency_key: IdempotencyKey = None,
) -> Response[s.Domain]:
    """Add a domain to verify by DNS TXT (409 if another organization has verified it)."""
    caller = caller_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        view = await domains.add_domain(
            settings_of(request),
            organization_id,
            AddDomainForm(domain=data.domain),
            actor_id=caller.key_id,
            ip=caller.ip,
        )
    return Response(_domain(organization_id, view), status_code=201)


async def _domain_view(
    request: Request[Any, Any, Any], organization_id: PathId, domain_id: PathId
) -> DomainView:
    view = await domains.get_domain(settings_of(request), organization_id, domain_id)  # tenant check inside
    if view is None:
        raise not_found("domain")
    return view


@get(DOMAINS + "/{domain_id:str}", opt=_opt("domains:read"), responses=errors(), tags=["domains"])
async def get_domain(request: Request[Any, Any, Any], organization_id: PathId, domain_id: PathId) -> s.Domain:
    """One domain and its TXT record."""
    await _org_row(caller_of(request), organization_id)
    return _domain(organization_id, await _domain_view(request, organization_id, domain_id))


@post(
    DOMAINS + "/{domain_id:str}/verify",
    opt=_opt("domains:write"),
    responses=errors(409),
    tags=["domains"],
    status_code=202,
)
async def verify_domain(
    request: Request[Any, Any, Any],
    organization_id: PathId,
    domain_id: PathId,
    idempotency_key: IdempotencyKey = None,
) -> Response[s.Domain]:
    """Verify now: queue a DNS check (a failed domain gets a new window). 202; read the domain for the result."""
    caller = caller_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        try:
            check = await domains.request_check(
                organization_id, domain_id, actor_id=caller.key_id, ip=caller.ip
            )
        except LookupError:
            raise not_found("domain") from None
        except domains.Refused as exc:
            raise ApiError(409, str(exc)) from None
    await domains.queue_check(portal_state(request).jobs, check)
    return Response(
        _domain(organization_id, await _domain_view(request, organization_id, domain_id)), status_code=202
    )


@delete(
    DOMAINS + "/{domain_id:str}",
    opt=_opt("domains:write"),
    responses=errors(),
    tags=["domains"],
    status_code=204,
)
async def delete_domain(request: Request[Any, Any, Any], organization_id: PathId, domain_id: PathId) -> None:
    """Delete a domain (a verified one becomes free for others)."""
    caller = caller_of(request)
    async with db.write_transaction():
        await _org_row(caller, organization_id)
        try:
            await domains.delete_domain(organization_id, domain_id, actor_id=caller.key_id, ip=caller.ip)
        except LookupError:
            raise not_found("domain") from None


# --- sessions ------------------------------------------------------------------------------------------


async def _session_row(caller: Caller, session_id: PathId) -> dict[str, Any]:
    row = await (
        SessionTable.select(SessionTable.id, SessionTable.user, SessionTable.active_organization)
        .where((SessionTable.id == session_id) & SessionTable.revoked_at.is_null())
        .first()
    )
    if row is None:
        raise not_found("session")
    # tenant check: a bound key reaches the sessions of its organization's members only.
    await _user_row(caller, row["user"])
    return dict(row)


@get("/sessions", opt=_opt("sessions:read"), responses=errors(), tags=["sessions"])
async def list_sessions(
    request: Request[Any, Any, Any],
    user_id: Annotated[str, QueryParameter(max_length=40, description="Whose sessions.")],
) -> s.SessionPage:
    """A user's live portal sessions, most recently active first (the Security widget's list)."""
    caller = caller_of(request)
    await _user_row(caller, user_id)
    views = await security.list_sessions(settings_of(request), user_id, "")
    rows = await SessionTable.select(SessionTable.id, SessionTable.active_organization).where(
        SessionTable.id.is_in([v.id for v in views] or [""])
    )
    active = {r["id"]: r["active_organization"] for r in rows}
    data = [
        s.Session(
            id=v.id,
            user_id=user_id,
            active_organization_id=active.get(v.id),
            device=v.device,
            ip=v.ip,
            method=v.method,
            created_at=v.created_at,
            last_seen_at=v.last_seen_at,
        )
        for v in views
    ]
    return s.SessionPage(data=data, next=None)


@delete(
    "/sessions/{session_id:str}",
    opt=_opt("sessions:write"),
    responses=errors(),
    tags=["sessions"],
    status_code=204,
)
async def revoke_session(request: Request[Any, Any, Any], session_id: PathId) -> None:
    """Sign a session out: it stops working at its next request; apps get back-channel logout."""
    caller = caller_of(request)
    async with db.write_transaction():
        row = await _session_row(caller, session_id)
        try:
            await security.revoke_session(
                row["user"],
                session_id,
                organization_id=row["active_organization"],
                ip=caller.ip,
                actor_id=caller.key_id,
            )
        except security.NotFound:
            raise not_found("session") from None


@put(
    "/sessions/{session_id:str}/active-organization",
    opt=_opt("sessions:write"),
    responses=errors(),
    tags=["sessions"],
)
async def set_active_organization(
    request: Request[Any, Any, Any], session_id: PathId, data: JSONBody[s.ActiveOrganization]
) -> s.Session:
    """Make one of the user's organizations the session's active one (what `/ui/` then shows)."""
    caller = caller_of(request)
    async with db.write_transaction():
        row = await _session_row(caller, session_id)
        await _org_row(caller, data.organization_id)
        try:
            await accounts.switch_organization(
                session_id,
                row["user"],
                data.organization_id,
                from_id=row["active_organization"],
                actor_id=caller.key_id,
                ip=caller.ip,
            )
        except LookupError:
            raise ApiError(
                422,
                "organization_id: the user is not an active member of this organization.",
                errors=[
                    FieldError("organization_id", "The user is not an active member of this organization.")
                ],
            ) from None
    views = await security.list_sessions(settings_of(request), row["user"], session_id)
    view = next(v for v in views if v.id == session_id)
    return s.Session(
        id=view.id,
        user_id=row["user"],
        active_organization_id=data.organization_id,
        device=view.device,
        ip=view.ip,
        method=view.method,
        created_at=view.created_at,
        last_seen_at=view.last_seen_at,
    )


# --- audit events -----------------------------------------------------------------------------------


@get("/audit-events", opt=_opt("audit_events:read"), responses=errors(), tags=["audit events"])
async def list_audit_events(
    request: Request[Any, Any, Any],
    limit: Limit = 50,
    cursor: Cursor = None,
    organization_id: Annotated[str | None, QueryParameter(max_length=40)] = None,
    actor_id: Annotated[str | None, QueryParameter(max_length=40)] = None,
    action: Annotated[
        str | None, QueryParameter(max_length=60, description="Exact, or a prefix ending in `.`")
    ] = None,
    since: Annotated[
        datetime | None, QueryParameter(description="At or after (ISO 8601 with offset).")
    ] = None,
    until: Annotated[datetime | None, QueryParameter(description="Before (ISO 8601 with offset).")] = None,
) -> Response[s.AuditEventPage]:
    """Audit events, newest first. A bound key sees its organization's events only."""
    caller = caller_of(request)
    if caller.organization_id is not None:
        if organization_id is not None and organization_id != caller.organization_id:
            raise not_found("organization")
        organization_id = caller.organization_id  # tenant check
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ApiError(
                422,
                f"{name}: give a time zone offset (e.g. Z).",
                errors=[FieldError(name, "Give a time zone offset (e.g. Z).")],
            )
    after = decode_cursor(cursor, 2)
    rows, more = await audit_query.list_events(
        organization_id=organization_id,
        actor_id=actor_id,
        action=action,
        since=since,
        until=until,
        after=after,
        limit=limit,
    )
    link = next_link(
        request, encode_cursor(rows[-1]["at"].isoformat(), rows[-1]["id"]) if more and rows else None
    )
    data = [
        s.AuditEvent(
            id=r["id"],
            organization_id=r["organization_id"],
            actor_id=r["actor_id"],
            action=r["action"],
            target=r["target"],
            details=dict(r["details"] or {}),
            ip=r["ip"],
            at=r["at"],
        )
        for r in rows
    ]
    return Response(s.AuditEventPage(data=data, next=link), headers=page_headers(link))


HANDLERS = [
    list_organizations,
    create_organization,
    get_organization,
    update_organization,
    delete_organization,
    list_users,
    create_user,
    get_user,
    list_memberships,
    create_membership,
    get_membership,
    update_membership,
    delete_membership,
    list_invitations,
    create_invitations,
    revoke_invitation,
    resend_invitation,
    list_roles,
    list_domains,
    add_domain,
    get_domain,
    verify_domain,
    delete_domain,
    list_sessions,
    revoke_session,
    set_active_organization,
    list_audit_events,
]

"""Members rules: the list (search, filters, keyset pages), invitations, role changes, removal, accepting.

Every query is scoped to the active organization's id, which the controller takes from the session (never
from the form or the URL); an id that belongs to another organization is as good as unknown (404).

Safety rails, checked inside the write transaction that makes the change:
- the organization keeps at least one active member holding ``sk_org_users_role_change``;
- nobody grants a role carrying a permission they do not hold, nor changes or removes a member who holds
  one (``PolicyEngine.grants_subset``).
On PostgreSQL the transaction first locks the organization row (``db.lock_organization``), so two admins
demoting each other at once are serialized and the second sees the first's change; on SQLite the write
transaction is BEGIN IMMEDIATE, which serializes writers anyway.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from piccolo.utils.encoding import dump_json

from policy import Permission, PolicyEngine
from portal.auth import accounts, sessions
from portal.core import db, ids, mail
from portal.core.clock import utcnow
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import (
    AuditEvent,
    Invitation,
    InvitationReplacedToken,
    Membership,
    Organization,
    Session,
    User,
)
from portal.web.forms import FormErrors
from widgets.members.schemas import (
    InvitationView,
    InviteForm,
    InviteResult,
    Member,
    MemberPage,
    MemberQuery,
    PendingInvitation,
    Roles,
    RolesForm,
)

log = logging.getLogger("widgets.members")

PAGE_SIZE = 20
#: Pending invitations shown above the first page of members (the "invited" filter pages through all).
INVITATION_SUMMARY = 10
MAX_INVITES = 50
#: Invitation emails (new and resent) one organization may send per hour: the portal is no mail cannon.
INVITES_PER_HOUR = 200
MAX_SEARCH = 100
STATUSES = ("active", "invited")
#: Greater than any character: ``key >= 'ab' AND key < 'ab' + TOP`` is "key starts with ab" in byte order.
_TOP = "\U0010ffff"
_SEPARATORS = re.compile(r"[\s,;]+")
_SUBMISSION_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: What ``portal.ids`` makes: anything else in a URL is unknown without asking the database.
_ID = re.compile(r"^[a-z]{2,3}_[A-Za-z0-9_-]{1,36}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

LAST_ROLE_CHANGER = (
    "{name} is the last active member who can change roles. Give that permission to someone else first, "
    "so that the organization is never left without an administrator."
)
#: The same refusal when the member is the one asking.
LAST_ROLE_CHANGER_SELF = (
    "You are the last active member who can change roles. Give that permission to someone else first, "
    "so that the organization is never left without an administrator."
)


def _last_role_changer(actor: Actor, member: Member) -> str:
    if member.user_id == actor.user_id:
        return LAST_ROLE_CHANGER_SELF
    return LAST_ROLE_CHANGER.format(name=member.name or member.email)


class NotFound(Exception):
    """No such member or invitation in the active organization."""


class InvitationUnusable(Exception):
    """The link's invitation cannot be accepted: ``unknown``, ``expired``, ``revoked`` or ``accepted``."""

    def __init__(self, state: str, view: InvitationView | None = None) -> None:
        self.state = state
        self.view = view
        super().__init__(state)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change: the signed-in user, in the active organization, with their roles there."""

    user_id: str
    organization_id: str
    roles: tuple[str, ...]
    ip: str
    #: False for a management API key (``user_id`` is then the key's id, the actor of its audit events):
    #: it is nobody's user, so invitations record no inviter and their email names the organization.
    is_user: bool = True


# --- roles --------------------------------------------------------------------------------------------------


def describe_role(policy: PolicyEngine, role: str) -> str:
    """What a role means, for pickers: its description from the policy files, else what it grants."""
    return policy.role_description(role)


def role_choices(policy: PolicyEngine, actor_roles: Iterable[str]) -> list[tuple[str, str, str, bool]]:
    """(role key, title, description, whether the actor may grant it) for every role the policy defines."""
    mine = list(actor_roles)
    return [
        (role, policy.role_title(role), describe_role(policy, role), policy.grants_subset(mine, [role]))
        for role in policy.roles
    ]


def role_list(raw: Roles) -> list[str]:
    """The roles a checkbox group posted: one string or several."""
    return [raw] if isinstance(raw, str) else list(raw)


def parse_roles(policy: PolicyEngine, raw: Roles) -> list[str]:
    """The chosen roles, de-duplicated and sorted; each must be defined in the policy."""
    roles = sorted({r.strip() for r in role_list(raw) if r.strip()})
    if not roles:
        raise FormErrors({"roles": "Choose at least one role."})
    unknown = [r for r in roles if r not in policy.roles]
    if unknown:
        shown = unknown[0][:60]
        raise FormErrors(
            {
                "roles": f"{shown!r} is not a role defined in the policy. Choose from: {', '.join(policy.roles)}."
            }
        )
    return roles


def check_grant(policy: PolicyEngine, actor_roles: Sequence[str], roles: Sequence[str]) -> None:
    """No privilege escalation: refuse (403) roles carrying permissions the actor does not hold."""
    held = set().union(*(policy.permissions_for(r) for r in actor_roles)) if actor_roles else set()
    for role in roles:
        missing = sorted(p.value for p in policy.permissions_for(role) - held)
        if missing:
            labels = ", ".join(f"{policy.permission_label(p)} ({p})" for p in missing)
            raise FormErrors(
                {
                    "roles": f"You cannot grant the role {policy.role_title(role)} ({role}): it carries "
                    f"permissions you do not hold: {labels}."
                },
                status_code=403,
            )


def _check_outranks(policy: PolicyEngine, actor: Actor, member: Member, field: str, verb: str) -> None:
    # Changing or removing someone who holds more than you would let a lesser role demote an administrator.
    if member.user_id != actor.user_id and not policy.grants_subset(actor.roles, member.roles):
        raise FormErrors(
            {field: f"You cannot {verb} {member.name or member.email}: they hold permissions you do not."},
            status_code=403,
        )


def _role_changers(policy: PolicyEngine) -> list[str]:
    return [r for r in policy.roles if Permission.USERS_ROLE_CHANGE in policy.permissions_for(r)]


def _has_role(column: str, role: str) -> tuple[str, str]:
    """SQL (one placeholder) and its argument: the JSON list in ``column`` holds the string ``role``.

    PostgreSQL: jsonb containment, served by the GIN index ``membership_roles``. SQLite: the role as a JSON
    string found in the column's text (``instr`` is exact and case-sensitive, unlike LIKE).
    """
    if Membership._meta.db.engine_type == "postgres":
        return f"CAST({column} AS JSONB) @> CAST({{}} AS JSONB)", json.dumps([role])
    return f"instr(CAST({column} AS TEXT), {{}}) > 0", dump_json(role)


async def _another_role_changer(policy: PolicyEngine, organization_id: str, except_member: str) -> bool:
    """Whether an active member other than ``except_member`` holds a role that grants role changes."""
    roles = _role_changers(policy)
    if not roles:
        return True  # the policy lets nobody change roles: there is no administrator to keep
    conditions = [_has_role("roles", r) for r in roles]
    rows = await Membership.raw(
        "SELECT id, roles FROM membership WHERE organization = {} AND status = 'active' AND id <> {}"  # noqa: S608
        f" AND ({' OR '.join(sql for sql, _ in conditions)}) LIMIT 1",
        organization_id,
        except_member,
        *(arg for _, arg in conditions),
    )
    # The SQL narrows; this decides.
    return any(set(_json_list(row["roles"])) & set(roles) for row in rows)


def _json_list(value: Any) -> list[str]:
    return [str(v) for v in (db.json_value(value or "[]") or [])]


# --- the list -----------------------------------------------------------------------------------------------


def encode_cursor(*parts: str) -> str:
    """An opaque position in the list (it only positions within the organization's own rows)."""
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def decode_cursor(raw: str, size: int) -> tuple[str, ...] | None:
    """The parts of a cursor, or None if it is not one of ours."""
    if not raw or len(raw) > 2000:
        return None
    try:
        parts = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(parts, list) or len(parts) != size:
        return None
    if not all(isinstance(p, str) and len(p) <= 400 and not _CONTROL.search(p) for p in parts):
        return None
    return tuple(parts)


def clean_query(policy: PolicyEngine, query: MemberQuery) -> MemberQuery:
    """The query with unknown roles and statuses dropped and the search folded and trimmed."""
    return MemberQuery(
        q=accounts.fold(_CONTROL.sub("", query.q))[:MAX_SEARCH],
        role=query.role if query.role in policy.roles else "",
        status=query.status if query.status in STATUSES else "",
        after=query.after,
        before=query.before,
    )


def _member(row: dict[str, Any]) -> Member:
    name = (row["display_name"] or "").strip()
    name = name or f"{row['given_name'] or ''} {row['family_name'] or ''}".strip()
    return Member(
        id=row["id"],
        user_id=row["user_id"],
        name=name,
        email=row["email"],
        roles=_json_list(row["roles"]),
        status=row["status"],
        source=row["source"],
        joined=row["created_at"],
    )


_MEMBER_COLUMNS = (
    'SELECT m.id, m."user" AS user_id, m.roles, m.status, m.source, m.created_at, m.sort_key,'
    " u.email, u.display_name, u.given_name, u.family_name"
    ' FROM membership m JOIN portal_user u ON u.id = m."user"'
)


async def _member_rows(
    organization_id: str, query: MemberQuery, cursor: tuple[str, ...] | None, backwards: bool, limit: int
) -> list[dict[str, Any]]:
    where = ["m.organization = {}"]  # tenant check
    args: list[Any] = [organization_id]
    if query.status == "active":
        where.append("m.status = 'active'")
    if query.q:
        # Three index range scans (name, email, family name), each "starts with q" in byte order.
        where.append(
            "((m.sort_key >= {} AND m.sort_key < {}) OR (m.email >= {} AND m.email < {})"
            " OR (m.family_key >= {} AND m.family_key < {}))"
        )
        args += [query.q, query.q + _TOP] * 3
    if query.role:
        sql, arg = _has_role("m.roles", query.role)
        where.append(sql)
        args.append(arg)
    if cursor is not None:
        where.append(f"(m.sort_key, m.id) {'<' if backwards else '>'} ({{}}, {{}})")
        args += list(cursor)
    order = "DESC" if backwards else "ASC"
    # Only fixed fragments are formatted in; every value is a bound parameter.
    sql = (
        f"{_MEMBER_COLUMNS} WHERE {' AND '.join(where)}"
        f" ORDER BY m.sort_key {order}, m.id {order} LIMIT {int(limit) + 1}"
    )
    rows = await db.fetch(sql, *args)
    return rows


async def list_members(
    policy: PolicyEngine, organization_id: str, query: MemberQuery, *, limit: int = PAGE_SIZE
) -> MemberPage:
    """One page of members (keyset: ordered by folded name, then id) and the pending invitations."""
    query = clean_query(policy, query)
    if query.status == "invited":
        return await _invitation_page(organization_id, query, limit)
    after = decode_cursor(query.after, 2)
    before = decode_cursor(query.before, 2) if after is None else None
    backwards = before is not None
    rows = await _member_rows(organization_id, query, after or before, backwards, limit)
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
        if not more:
            # Back at the start: show a full first page rather than a short one.
            return await list_members(policy, organization_id, _first_page(query), limit=limit)
    next_cursor = prev_cursor = None
    if rows:
        if more or backwards:
            next_cursor = encode_cursor(rows[-1]["sort_key"], rows[-1]["id"])
        if (more and backwards) or (after is not None and not backwards):
            prev_cursor = encode_cursor(rows[0]["sort_key"], rows[0]["id"])
    invitations: list[PendingInvitation] = []
    more_invitations = False
    if query.status == "" and after is None and before is None:
        invitations, more_invitations = await _invitations(
            organization_id, query, None, False, INVITATION_SUMMARY
        )
    return MemberPage(
        members=[_member(r) for r in rows],
        invitations=invitations,
        more_invitations=more_invitations,
        next_cursor=next_cursor,
        prev_cursor=prev_cursor,
    )


def _first_page(query: MemberQuery) -> MemberQuery:
    return MemberQuery(q=query.q, role=query.role, status=query.status)


async def _invitations(
    organization_id: str, query: MemberQuery, cursor: str | None, backwards: bool, limit: int
) -> tuple[list[PendingInvitation], bool]:
    where = ["i.organization = {}", "i.accepted_at IS NULL", "i.revoked_at IS NULL"]  # tenant check
    args: list[Any] = [organization_id]
    if query.q:
        where.append("i.email >= {} AND i.email < {}")
        args += [query.q, query.q + _TOP]
    if query.role:
        sql, arg = _has_role("i.roles", query.role)
        where.append(sql)
        args.append(arg)
    if cursor is not None:
        # One open invitation per address: the email alone orders them.
        where.append(f"i.email {'<' if backwards else '>'} {{}}")
        args.append(cursor)
    order = "DESC" if backwards else "ASC"
    # Only fixed fragments are formatted in; every value is a bound parameter.
    sql = (
        "SELECT i.id, i.email, i.roles, i.created_at, i.expires_at, u.display_name, u.email AS by_email"  # noqa: S608
        " FROM invitation i LEFT JOIN portal_user u ON u.id = i.invited_by"
        f" WHERE {' AND '.join(where)} ORDER BY i.email {order} LIMIT {int(limit) + 1}"
    )
    rows = await db.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    now = utcnow()
    return [
        PendingInvitation(
            id=row["id"],
            email=row["email"],
            roles=_json_list(row["roles"]),
            invited_by=(row["display_name"] or row["by_email"] or ""),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            expired=row["expires_at"] <= now,
        )
        for row in rows
    ], more


async def _invitation_page(organization_id: str, query: MemberQuery, limit: int) -> MemberPage:
    after = decode_cursor(query.after, 1)
    before = decode_cursor(query.before, 1) if after is None else None
    backwards = before is not None
    cursor = (after or before or (None,))[0]
    invitations, more = await _invitations(organization_id, query, cursor, backwards, limit)
    if backwards and not more:
        invitations, more = await _invitations(organization_id, query, None, False, limit)
        backwards, after = False, None
    next_cursor = prev_cursor = None
    if invitations:
        if more or backwards:
            next_cursor = encode_cursor(invitations[-1].email)
        if (more and backwards) or (after is not None and not backwards):
            prev_cursor = encode_cursor(invitations[0].email)
    return MemberPage(members=[], invitations=invitations, next_cursor=next_cursor, prev_cursor=prev_cursor)


async def get_member(organization_id: str, member_id: str) -> Member:
    """One member of the organization; :class:`NotFound` for an id of another organization or none."""
    if not _ID.match(member_id):
        raise NotFound(member_id)
    rows = await Membership.raw(
        f"{_MEMBER_COLUMNS} WHERE m.id = {{}} AND m.organization = {{}}",  # tenant check
        member_id,
        organization_id,
    )
    if not rows:
        raise NotFound(member_id)
    return _member(rows[0])


# --- invitations --------------------------------------------------------------------------------------------


def parse_emails(raw: str) -> list[str]:
    """The addresses typed into the invite form, normalized and de-duplicated (in the order typed)."""
    found: list[str] = []
    bad: list[str] = []
    for part in _SEPARATORS.split(raw):
        if not part:
            continue
        try:
            email = accounts.normalize_email(part)
        except InvalidInput:
            bad.append(part[:80])
            continue
        if email not in found:
            found.append(email)
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise FormErrors({"emails": f"These are not email addresses: {listed}. Use name@example.com."})
    if not found:
        raise FormErrors({"emails": "Enter at least one email address."})
    if len(found) > MAX_INVITES:
        raise FormErrors({"emails": f"Invite at most {MAX_INVITES} people at once (this has {len(found)})."})
    return found


async def _check_send_rate(organization_id: str, count: int, field: str) -> None:
    """Refuse (429) when ``count`` more invitation emails would pass the organization's hourly limit."""
    since = utcnow() - timedelta(hours=1)
    sent = await AuditEvent.count().where(
        (AuditEvent.organization_id == organization_id)
        & AuditEvent.action.is_in(["member.invited", "invitation.resent"])
        & (AuditEvent.at > since)
    )
    if sent + count > INVITES_PER_HOUR:
        raise FormErrors(
            {
                field: f"This organization has sent {sent} invitations in the last hour; the limit is "
                f"{INVITES_PER_HOUR} an hour. Try again later."
            },
            status_code=429,
        )


def new_submission_id() -> str:
    """The id rendered into an invite form, so a second submission of the same form is recognised."""
    return ids.new_id("inv").removeprefix("inv_")


async def invite(settings: Settings, policy: PolicyEngine, actor: Actor, form: InviteForm) -> InviteResult:
    """Create an invitation per address (call inside ``db.write_transaction()``); the controller mails them.

    Refused as a whole, naming the addresses, if any is already a member or has a pending invitation. The
    same form (``submission_id``) submitted again returns ``repeated`` and creates nothing.
    """
    errors: dict[str, str] = {}
    roles: list[str] = []
    emails: list[str] = []
    try:
        emails = parse_emails(form.emails)
    except FormErrors as exc:
        errors.update(exc.errors)
    try:
        roles = parse_roles(policy, form.roles)
    except FormErrors as exc:
        errors.update(exc.errors)
    if errors:
        raise FormErrors(errors)
    check_grant(policy, actor.roles, roles)
    submission = form.submission_id.strip()
    submission_id = submission if _SUBMISSION_ID.match(submission) else None
    org = actor.organization_id
    if submission_id and await Invitation.exists().where(
        (Invitation.organization == org)  # tenant check
        & (Invitation.submission_id == submission_id)
        & (Invitation.invited_by == actor.user_id)
    ):
        return InviteResult(invitations=[], repeated=True)
    members = await Membership.select(Membership.user.email.as_alias("email")).where(
        (Membership.organization == org) & Membership.user.email.is_in(emails)
    )
    pending = await Invitation.select(
        Invitation.email, Invitation.submission_id, Invitation.invited_by
    ).where(
        (Invitation.organization == org)
        & Invitation.email.is_in(emails)
        & Invitation.accepted_at.is_null()
        & Invitation.revoked_at.is_null()
    )
    # Asked again: on PostgreSQL the same form's first submission may have committed since the check above.
    if submission_id and any(
        r["submission_id"] == submission_id and r["invited_by"] == actor.user_id for r in pending
    ):
        return InviteResult(invitations=[], repeated=True)
    problems = []
    member_emails = sorted(r["email"] for r in members)
    pending_emails = sorted(r["email"] for r in pending)
    if member_emails:
        problems.append(f"Already a member: {', '.join(member_emails)}.")
    if pending_emails:
        problems.append(
            f"Already invited: {', '.join(pending_emails)}. Use Resend in the list of pending invitations."
        )
    if problems:
        raise FormErrors({"emails": " ".join(problems) + " Nobody was invited."})
    await _check_send_rate(org, len(emails), "emails")
    now = utcnow()
    expires_at = now + timedelta(seconds=settings.invitation_ttl)
    created: list[tuple[str, str, str]] = []
    for email in emails:
        token = ids.new_secret("inv")
        invitation = Invitation(
            organization=org,
            email=email,
            roles=roles,
            token_hash=ids.hash_secret(token),
            invited_by=actor.user_id if actor.is_user else None,
            expires_at=expires_at,
            created_at=now,
            submission_id=submission_id,
        )
        await invitation.save()
        created.append((invitation.id, email, token))
        await accounts.audit(
            "member.invited",
            organization_id=org,
            actor_id=actor.user_id,
            target=email,
            details={"invitation_id": invitation.id, "roles": roles, "expires_at": expires_at.isoformat()},
            ip=actor.ip,
        )
    return InviteResult(invitations=created)


async def _open_invitation(organization_id: str, invitation_id: str) -> dict[str, Any]:
    if not _ID.match(invitation_id):
        raise NotFound(invitation_id)
    row = await (
        Invitation.select(
            Invitation.id,
            Invitation.email,
            Invitation.roles,
            Invitation.token_hash,
            Invitation.accepted_at,
            Invitation.revoked_at,
        )
        .where((Invitation.id == invitation_id) & (Invitation.organization == organization_id))
        .first()
        .output(load_json=True)
    )  # tenant check: another organization's invitation id is unknown here
    if row is None:
        raise NotFound(invitation_id)
    if row["accepted_at"] is not None:
        raise FormErrors({"invitation": f"The invitation to {row['email']} has already been accepted."}, 409)
    if row["revoked_at"] is not None:
        raise FormErrors({"invitation": f"The invitation to {row['email']} has been revoked."}, 409)
    return dict(row)


async def resend(
    settings: Settings, policy: PolicyEngine, actor: Actor, invitation_id: str
) -> tuple[str, str]:
    """Issue a new link (the old one stops working) with a new expiry; returns (email, token) to mail."""
    row = await _open_invitation(actor.organization_id, invitation_id)
    check_grant(policy, actor.roles, _json_list(row["roles"]))
    await _check_send_rate(actor.organization_id, 1, "invitation")
    token = ids.new_secret("inv")
    expires_at = utcnow() + timedelta(seconds=settings.invitation_ttl)
    # The old link stops working, but says that a newer invitation was sent (not "does not work").
    await InvitationReplacedToken(token_hash=row["token_hash"], invitation=row["id"]).save()
    await Invitation.update(
        {Invitation.token_hash: ids.hash_secret(token), Invitation.expires_at: expires_at}
    ).where((Invitation.id == row["id"]) & (Invitation.organization == actor.organization_id))
    await accounts.audit(
        "invitation.resent",
        organization_id=actor.organization_id,
        actor_id=actor.user_id,
        target=row["id"],
        details={"email": row["email"], "expires_at": expires_at.isoformat()},
        ip=actor.ip,
    )
    return row["email"], token


async def revoke(actor: Actor, invitation_id: str) -> str:
    """Revoke a pending invitation: its link stops working. Returns the address."""
    row = await _open_invitation(actor.organization_id, invitation_id)
    await Invitation.update({Invitation.revoked_at: utcnow()}).where(
        (Invitation.id == row["id"]) & (Invitation.organization == actor.organization_id)
    )
    await accounts.audit(
        "invitation.revoked",
        organization_id=actor.organization_id,
        actor_id=actor.user_id,
        target=row["id"],
        details={"email": row["email"], "roles": _json_list(row["roles"])},
        ip=actor.ip,
    )
    return str(row["email"])


def accept_url(settings: Settings, token: str) -> str:
    """The link in the invitation email."""
    return f"{settings.origin}/invitations/accept?token={token}"


def invitation_mail(
    settings: Settings,
    *,
    inviter: dict[str, Any],
    organization: str,
    roles: Sequence[str],
    token: str,
    expires_at: datetime,
) -> tuple[str, str]:
    """Subject and text of an invitation email."""
    who = (inviter.get("display_name") or "").strip() or inviter["email"]
    # The API invites in the organization's name: no address of a person to show.
    by = f" ({inviter['email']})" if inviter["email"] else ""
    subject = mail.subject(settings, f"{who} invited you to join {organization}")
    role_text = ", ".join(roles)
    text = (
        f"{who}{by} invited you to join {organization} on {settings.brand_name}"
        f" with the role{'s' if len(roles) != 1 else ''} {role_text}.\n\n"
        f"Accept the invitation:\n\n    {accept_url(settings, token)}\n\n"
        f"The link works once and until {expires_at:%Y-%m-%d %H:%M} UTC. If you did not expect this "
        "invitation, ignore this email: nothing happens unless you open the link and accept.\n"
    )
    return subject, text


async def send_invitations(
    settings: Settings,
    actor: Actor,
    sent: Sequence[tuple[str, str, str]],
) -> list[str]:
    """Email each (invitation id, email, token); returns the addresses that could not be reached."""
    if not sent:
        return []
    inviter = await User.select(User.email, User.display_name).where(User.id == actor.user_id).first()
    org = (
        await Organization.select(Organization.display_name)
        .where(Organization.id == actor.organization_id)
        .first()
    )
    if not actor.is_user and org is not None:
        # Sent by the app through the API: the organization is the inviter.
        inviter = {"email": "", "display_name": org["display_name"]}
    rows = (
        await Invitation.select(Invitation.id, Invitation.roles, Invitation.expires_at)
        .where(
            (Invitation.organization == actor.organization_id) & Invitation.id.is_in([i for i, _, _ in sent])
        )
        .output(load_json=True)
    )
    by_id = {row["id"]: row for row in rows}
    failed = []
    for invitation_id, email, token in sent:
        row = by_id.get(invitation_id)
        if row is None or inviter is None or org is None:
            continue
        subject, text = invitation_mail(
            settings,
            inviter=inviter,
            organization=org["display_name"],
            roles=_json_list(row["roles"]),
            token=token,
            expires_at=row["expires_at"],
        )
        try:
            await mail.send_mail(
                settings, email, subject, text, dev_log=f"invitation link {accept_url(settings, token)}"
            )
        except Exception:  # SMTP or disk: the admin is told, the log gets the cause.
            log.exception("could not send the invitation %s to %s", invitation_id, email)
            failed.append(email)
    return failed


# --- changing and removing members -------------------------------------------------------------------------


async def change_roles(
    policy: PolicyEngine, actor: Actor, member_id: str, form: RolesForm
) -> tuple[Member, bool]:
    """Give a member new roles (call inside ``db.write_transaction()``). Returns (member, changed)."""
    roles = parse_roles(policy, form.roles)
    await db.lock_organization(actor.organization_id)
    member = await get_member(actor.organization_id, member_id)
    _check_outranks(policy, actor, member, "roles", "change the roles of")
    check_grant(policy, actor.roles, roles)
    if sorted(set(member.roles)) == roles:
        return member, False
    changers = set(_role_changers(policy))
    if (
        member.status == "active"
        and changers & set(member.roles)
        and not changers & set(roles)
        and not await _another_role_changer(policy, actor.organization_id, member.id)
    ):
        raise FormErrors({"roles": _last_role_changer(actor, member)}, 409)
    await Membership.update({Membership.roles: roles, Membership.updated_at: utcnow()}).where(
        (Membership.id == member.id) & (Membership.organization == actor.organization_id)
    )
    await accounts.audit(
        "member.roles_changed",
        organization_id=actor.organization_id,
        actor_id=actor.user_id,
        target=member.user_id,
        details={"membership_id": member.id, "email": member.email, "old": member.roles, "new": roles},
        ip=actor.ip,
    )
    return member, True


async def remove(policy: PolicyEngine, actor: Actor, member_id: str) -> Member:
    """Remove a member (call inside ``db.write_transaction()``): they lose access at their next request."""
    await db.lock_organization(actor.organization_id)
    member = await get_member(actor.organization_id, member_id)
    _check_outranks(policy, actor, member, "member", "remove")
    if (
        member.status == "active"
        and set(_role_changers(policy)) & set(member.roles)
        and not await _another_role_changer(policy, actor.organization_id, member.id)
    ):
        raise FormErrors({"member": _last_role_changer(actor, member)}, 409)
    await Membership.delete().where(
        (Membership.id == member.id) & (Membership.organization == actor.organization_id)
    )
    # The guard already refuses them (it reads the membership on every request); their sessions also stop
    # pointing at the organization, so their next page does not show its name.
    detached = (
        await Session.update({Session.active_organization: None})
        .where(
            (Session.user == member.user_id)
            & (Session.active_organization == actor.organization_id)
            & Session.revoked_at.is_null()
        )
        .returning(Session.id)
    )
    # The app's sessions for this organization end with the membership (back-channel logout).
    await sessions.ended(
        [(row["id"], member.user_id) for row in detached], "removed", organization_id=actor.organization_id
    )
    await accounts.audit(
        "member.removed",
        organization_id=actor.organization_id,
        actor_id=actor.user_id,
        target=member.user_id,
        details={"membership_id": member.id, "email": member.email, "roles": member.roles},
        ip=actor.ip,
    )
    return member


# --- accepting an invitation (public: the link's token is the proof) ----------------------------------------


def _state(row: dict[str, Any], now: datetime) -> str:
    if row["accepted_at"] is not None:
        return "accepted"
    if row["revoked_at"] is not None:
        return "revoked"
    if row["expires_at"] <= now:
        return "expired"
    return "open"


async def find_invitation(token: str) -> InvitationView | None:
    """The invitation a link's token opens (in any state), or None for a token that opens nothing."""
    if not token or len(token) > 200:
        return None
    row = await (
        Invitation.select(
            Invitation.id,
            Invitation.organization.id.as_alias("organization_id"),
            Invitation.organization.display_name.as_alias("organization_name"),
            Invitation.email,
            Invitation.roles,
            Invitation.invited_by.display_name.as_alias("by_name"),
            Invitation.invited_by.email.as_alias("by_email"),
            Invitation.expires_at,
            Invitation.accepted_at,
            Invitation.revoked_at,
        )
        .where(Invitation.token_hash == ids.hash_secret(token))
        .first()
        .output(load_json=True)
    )
    replaced = False
    if row is None:
        old = (
            await InvitationReplacedToken.select(InvitationReplacedToken.invitation)
            .where(InvitationReplacedToken.token_hash == ids.hash_secret(token))
            .first()
        )
        if old is None:
            return None
        row = await (
            Invitation.select(
                Invitation.id,
                Invitation.organization.id.as_alias("organization_id"),
                Invitation.organization.display_name.as_alias("organization_name"),
                Invitation.email,
                Invitation.roles,
                Invitation.invited_by.display_name.as_alias("by_name"),
                Invitation.invited_by.email.as_alias("by_email"),
                Invitation.expires_at,
                Invitation.accepted_at,
                Invitation.revoked_at,
            )
            .where(Invitation.id == old["invitation"])
            .first()
            .output(load_json=True)
        )
        if row is None:  # pragma: no cover - the cascade deletes replaced tokens with their invitation
            return None
        replaced = True
    return InvitationView(
        id=row["id"],
        organization_id=row["organization_id"],
        organization_name=row["organization_name"],
        email=row["email"],
        roles=_json_list(row["roles"]),
        invited_by=(row["by_name"] or row["by_email"] or ""),
        expires_at=row["expires_at"],
        # An old link of an invitation still open says a newer one was sent; if the invitation has since
        # been accepted, revoked or has expired, the old link says that.
        state="replaced" if replaced and _state(row, utcnow()) == "open" else _state(row, utcnow()),
    )


@dataclass(frozen=True, slots=True)
class Accepted:
    """An accepted invitation: who joined where, and whether the user or the membership is new."""

    user: dict[str, Any]
    invitation: InvitationView
    new_user: bool
    already_member: bool


async def accept(policy: PolicyEngine, token: str, *, user: dict[str, Any] | None, ip: str) -> Accepted:
    """Use the invitation once (call inside ``db.write_transaction()``): find or create the invited user, make
    them a member with the invited roles. ``user`` is the signed-in user, whose email the controller has
    matched to the invitation's; None signs in whoever owns the address."""
    view = await find_invitation(token)
    if view is None:
        raise InvitationUnusable("unknown")
    if view.state != "open":
        raise InvitationUnusable(view.state, view)
    now = utcnow()
    claimed = (
        await Invitation.update({Invitation.accepted_at: now})
        .where(
            (Invitation.id == view.id)
            & Invitation.accepted_at.is_null()
            & Invitation.revoked_at.is_null()
            & (Invitation.expires_at > now)
        )
        .returning(Invitation.id)
    )
    if not claimed:  # used by a concurrent request a moment ago
        raise InvitationUnusable("accepted", view)
    new_user = False
    if user is None:
        user = await accounts.find_user(view.email)
        if user is None:
            try:
                user = await accounts.create_user(view.email, verified=True)
                new_user = True
            except InvalidInput:
                # The address signed up a moment ago (after the look-up above): that is the invited user.
                user = await accounts.find_user(view.email)
                if user is None:  # pragma: no cover - create_user refuses only an existing address
                    raise
    if user["email"] != view.email:  # pragma: no cover - the controller matches them first
        raise InvitationUnusable("unknown")
    if not user["email_verified"]:
        # The link proves the address.
        await User.update({User.email_verified: True}).where(User.id == user["id"])
        user["email_verified"] = True
    roles = [r for r in view.roles if r in policy.roles]
    if len(roles) != len(view.roles):
        log.warning(
            "invitation %s: roles %s are no longer in the policy", view.id, set(view.roles) - set(roles)
        )
    existing = (
        await Membership.select(Membership.id, Membership.roles)
        .where((Membership.organization == view.organization_id) & (Membership.user == user["id"]))
        .first()
        .output(load_json=True)
    )
    if existing is None:
        await accounts.add_member(
            view.organization_id,
            user["id"],
            roles,
            known_roles=policy.roles,
            source="portal",
            actor_id=user["id"],
        )
    else:
        # Joined meanwhile (e.g. by email domain): the invitation still brings its roles.
        old = _json_list(existing["roles"])
        merged = sorted(set(old) | set(roles))
        if merged != sorted(old):
            await Membership.update({Membership.roles: merged, Membership.updated_at: now}).where(
                Membership.id == existing["id"]
            )
            await accounts.audit(
                "member.roles_changed",
                organization_id=view.organization_id,
                actor_id=user["id"],
                target=user["id"],
                details={
                    "membership_id": existing["id"],
                    "email": user["email"],
                    "old": old,
                    "new": merged,
                    "invitation_id": view.id,
                },
                ip=ip,
            )
    await accounts.audit(
        "invitation.accepted",
        organization_id=view.organization_id,
        actor_id=user["id"],
        target=view.id,
        details={"email": view.email, "roles": roles, "new_user": new_user},
        ip=ip,
    )
    return Accepted(user=user, invitation=view, new_user=new_user, already_member=existing is not None)


async def make_active(session_id: str, user_id: str, organization_id: str) -> None:
    """Make the organization the signed-in session's active one (after joining it)."""
    await sessions.set_active_organization(session_id, organization_id)
    await User.update({User.last_organization: organization_id}).where(User.id == user_id)

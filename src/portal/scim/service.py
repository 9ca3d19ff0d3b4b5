"""SCIM directories: tokens, Users and Groups, and what they mean for the organization (DESIGN §16).

A SCIM User is linked by email to a portal user and that user's membership of the directory's organization
(source ``scim`` when the directory created it). ``active: false`` suspends the membership and ends its
sessions in the organization; DELETE removes it. The account (email, names) changes only when the organization
has verified the email's domain; otherwise the directory's values stay on its own row. Group members are rows
of ``scim_group_member``; a member's roles are its base roles plus what the directory maps its groups to,
worked out again on every change.

Callers open the write transaction (``db.write_transaction()``); every function here runs inside it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from piccolo.engine.postgres import PostgresEngine

from portal.auth import accounts, sessions
from portal.core import clock, db, ids
from portal.core.errors import InvalidInput
from portal.core.tables import (
    Domain,
    Membership,
    ScimDirectory,
    ScimGroup,
    ScimGroupMember,
    ScimRequest,
    ScimToken,
    ScimUser,
    Session,
    User,
)
from portal.scim import errors, filters, resources
from portal.scim.schema import ENTERPRISE, GROUP, GROUPS, USER, USERS, ResourceType

log = logging.getLogger("portal.scim")
TOKEN_PREFIX = "scim"  # noqa: S105 (a prefix, not a secret)
PROVIDERS = ("okta", "entra", "jumpcloud", "onelogin", "generic")


@dataclass(frozen=True, slots=True)
class Directory:
    id: str
    organization_id: str
    name: str
    provider: str
    group_roles: dict[str, list[str]]
    default_roles: list[str]


def _directory(row: dict[str, Any]) -> Directory:
    return Directory(
        id=row["id"],
        organization_id=row["organization"],
        name=row["name"],
        provider=row["provider"],
        group_roles=dict(db.json_value(row["group_roles"]) or {}),
        default_roles=list(db.json_value(row["default_roles"]) or []),
    )


def postgres() -> bool:
    return isinstance(db.current_engine(), PostgresEngine)


# --- directories and tokens ---------------------------------------------------------------------------------


async def get_directory(directory_id: str) -> Directory | None:
    row = await ScimDirectory.select().where(ScimDirectory.id == directory_id).first()
    return _directory(row) if row else None


async def org_directory(organization_id: str, directory_id: str) -> Directory:
    """A directory of this organization, else :class:`InvalidInput` (the widget answers 404)."""
    row = (
        await ScimDirectory.select()
        .where(
            (ScimDirectory.id == directory_id) & (ScimDirectory.organization == organization_id)
        )  # tenant check
        .first()
    )
    if row is None:
        raise LookupError(directory_id)
    return _directory(row)


async def list_directories(organization_id: str) -> list[Directory]:
    rows = (
        await ScimDirectory.select()
        .where(ScimDirectory.organization == organization_id)
        .order_by(ScimDirectory.created_at)
    )
    return [_directory(r) for r in rows]


async def create_directory(
    organization_id: str, name: str, provider: str, *, actor_id: str | None
) -> Directory:
    name = name.strip()
    if not name:
        raise InvalidInput("name", "Give the directory a name, such as the IdP it comes from.")
    if len(name) > 200:
        raise InvalidInput("name", "Use at most 200 characters.")
    if provider not in PROVIDERS:
        raise InvalidInput("provider", "Choose one of the listed identity providers.")
    row = ScimDirectory(organization=organization_id, name=name, provider=provider)
    await row.save()
    await accounts.audit(
        "scim.directory.created",
        organization_id=organization_id,
        actor_id=actor_id,
        target=row.id,
        details={"name": name, "provider": provider},
    )
    directory = await get_directory(row.id)
    assert directory is not None
    return directory


async def issue_token(directory: Directory, *, overlap: timedelta, actor_id: str | None) -> str:
    """A new token (returned once, stored hashed); tokens issued before keep working for ``overlap``."""
    now = clock.utcnow()
    await ScimToken.update({ScimToken.expires_at: now + overlap}).where(
        (ScimToken.directory == directory.id)
        & (ScimToken.expires_at.is_null() | (ScimToken.expires_at > now + overlap))
    )
    token = ids.new_secret(TOKEN_PREFIX)
    await ScimToken(directory=directory.id, token_hash=ids.hash_secret(token), hint=token[:16]).save()
    await accounts.audit(
        "scim.token.rotated",
        organization_id=directory.organization_id,
        actor_id=actor_id,
        target=directory.id,
        details={"overlap_seconds": int(overlap.total_seconds())},
    )
    return token


async def revoke_tokens(directory: Directory, *, actor_id: str | None) -> int:
    """Every token of the directory stops working now."""
    now = clock.utcnow()
    rows = (
        await ScimToken.update({ScimToken.expires_at: now})
        .where(
            (ScimToken.directory == directory.id)
            & (ScimToken.expires_at.is_null() | (ScimToken.expires_at > now))
        )
        .returning(ScimToken.id)
    )
    await accounts.audit(
        "scim.token.revoked",
        organization_id=directory.organization_id,
        actor_id=actor_id,
        target=directory.id,
    )
    return len(rows)


async def tokens(directory_id: str) -> list[dict[str, Any]]:
    rows = (
        await ScimToken.select(
            ScimToken.id, ScimToken.hint, ScimToken.created_at, ScimToken.expires_at, ScimToken.last_used_at
        )
        .where(ScimToken.directory == directory_id)
        .order_by(ScimToken.created_at, ascending=False)
    )
    return rows


_AUTH = (
    "SELECT t.id, t.directory, t.expires_at, t.last_used_at, d.organization, d.name, d.provider, d.group_roles,"
    " d.default_roles FROM scim_token t JOIN scim_directory d ON d.id = t.directory WHERE t.token_hash = {}"
)


async def authenticate(directory_id: str, authorization: str | None) -> Directory:
    """The directory whose live token is in the ``Authorization: Bearer`` header, else 401.

    The token is looked up by its SHA-256 (the secret itself is never compared byte by byte), and the
    directory is compared with :func:`hmac.compare_digest`, so timing tells nothing about either.
    """
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise errors.ScimError(401, "Send the directory's token in an Authorization: Bearer header.")
    rows = await ScimToken.raw(_AUTH, ids.hash_secret(token))
    row = rows[0] if rows else None
    import hmac

    now = clock.utcnow()
    ok = row is not None and hmac.compare_digest(str(row["directory"]), directory_id)
    if row is None or not ok or (row["expires_at"] is not None and _aware(row["expires_at"]) <= now):
        raise errors.ScimError(401, "The token is not valid for this directory.")
    last = row["last_used_at"]
    if last is None or _aware(last) < now - timedelta(minutes=1):
        await ScimToken.update({ScimToken.last_used_at: now}).where(ScimToken.id == row["id"])
    return _directory({**row, "id": row["directory"]})


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def log_request(
    directory_id: str, method: str, path: str, status: int, detail: str, duration_ms: int
) -> None:
    """Keep the request (no body) for the widget; now and then drop all but the directory's last 100."""
    await ScimRequest(
        directory_id=directory_id,
        method=method[:10],
        path=path[:1000],
        status=status,
        detail=detail[:200],
        duration_ms=duration_ms,
        at=clock.utcnow(),
    ).save()
    if random.random() < 0.05:  # noqa: S311 - pruning cadence, not security
        keep = (
            await ScimRequest.select(ScimRequest.id)
            .where(ScimRequest.directory_id == directory_id)
            .order_by(ScimRequest.id, ascending=False)
            .offset(100)
            .limit(1)
        )
        if keep:
            await ScimRequest.delete().where(
                (ScimRequest.directory_id == directory_id) & (ScimRequest.id <= keep[0]["id"])
            )


async def recent_requests(directory_id: str, limit: int = 100) -> list[dict[str, Any]]:
    rows = (
        await ScimRequest.select()
        .where(ScimRequest.directory_id == directory_id)
        .order_by(ScimRequest.id, ascending=False)
        .limit(limit)
    )
    return rows


async def counts(directory_id: str) -> tuple[int, int]:
    users = await ScimUser.count().where(ScimUser.directory == directory_id)
    groups = await ScimGroup.count().where(ScimGroup.directory == directory_id)
    return users, groups


# --- rendering ----------------------------------------------------------------------------------------------


def _iso(value: datetime | str) -> str:
    return _aware(value).astimezone(UTC).isoformat().replace("+00:00", "Z")


def etag(version: int) -> str:
    return f'W/"{version}"'


def user_resource(row: dict[str, Any], base_url: str, groups: list[dict[str, Any]] | None) -> dict[str, Any]:
    body = dict(db.json_value(row["resource"]) or {})
    schemas = [USER] + ([ENTERPRISE] if ENTERPRISE in body else [])
    out: dict[str, Any] = {"schemas": schemas, "id": row["id"], **body}
    if groups:
        out["groups"] = groups
    out["meta"] = {
        "resourceType": "User",
        "created": _iso(row["created_at"]),
        "lastModified": _iso(row["updated_at"]),
        "location": f"{base_url}/Users/{row['id']}",
        "version": etag(row["version"]),
    }
    return out


def group_resource(
    row: dict[str, Any], base_url: str, members: list[dict[str, Any]] | None
) -> dict[str, Any]:
    body = dict(db.json_value(row["resource"]) or {})
    out: dict[str, Any] = {"schemas": [GROUP], "id": row["id"], **body}
    if members:
        out["members"] = members
    out["meta"] = {
        "resourceType": "Group",
        "created": _iso(row["created_at"]),
        "lastModified": _iso(row["updated_at"]),
        "location": f"{base_url}/Groups/{row['id']}",
        "version": etag(row["version"]),
    }
    return out


async def _groups_of(user_ids: Sequence[str], base_url: str) -> dict[str, list[dict[str, Any]]]:
    if not user_ids:
        return {}
    rows = await ScimGroupMember.raw(
        'SELECT gm.member, g.id, g.display_name FROM scim_group_member gm JOIN scim_group g ON g.id = gm."group"'  # noqa: S608 (fixed names and {} placeholders only)
        " WHERE gm.member IN (" + ", ".join("{}" for _ in user_ids) + ") ORDER BY g.display_name, g.id",
        *user_ids,
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["member"], []).append(
            {
                "value": r["id"],
                "$ref": f"{base_url}/Groups/{r['id']}",
                "display": r["display_name"],
                "type": "direct",
            }
        )
    return out


async def _members_of(group_ids: Sequence[str], base_url: str) -> dict[str, list[dict[str, Any]]]:
    if not group_ids:
        return {}
    rows = await ScimGroupMember.raw(
        'SELECT gm."group", gm.display, u.id FROM scim_group_member gm'  # noqa: S608 (fixed names and {} placeholders only)
        ' JOIN scim_user u ON u.id = gm.member WHERE gm."group" IN ('
        + ", ".join("{}" for _ in group_ids)
        + ") ORDER BY gm.id",
        *group_ids,
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        member = {"value": r["id"], "$ref": f"{base_url}/Users/{r['id']}", "type": "User"}
        if r["display"]:
            member["display"] = r["display"]
        out.setdefault(r["group"], []).append(member)
    return out


# --- queries ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    filter: str | None = None
    sort_by: str | None = None
    descending: bool = False
    start_index: int = 1
    count: int = 100


def _sort_sql(rt: ResourceType, target: filters.Target, sort_by: str | None, pg: bool) -> filters.Sql:
    from portal.scim.schema import resolve

    if not sort_by:
        return filters.Sql(f"{target.table}.created_at")
    resolved = resolve(rt, sort_by)
    if resolved is None:
        raise errors.invalid_value(f"Unknown attribute {sort_by!r} in sortBy.")
    name = resolved.dotted.lower()
    if resolved.extension is None and name in target.columns:
        return filters.Sql(f"{target.table}.{target.columns[name][0]}")
    if resolved.attr.multi or resolved.leaf.type == "complex" or resolved.attr.name == "meta":
        raise errors.invalid_value(f"sortBy {sort_by!r} is not supported; sort by a single-valued attribute.")
    return filters.Dialect(pg).json_text(target.table, resolved)


async def search(
    directory: Directory, rt: ResourceType, query: Query, base_url: str, *, with_links: bool = True
) -> tuple[int, list[dict[str, Any]]]:
    """(totalResults, resources on the page) for a list request."""
    pg = postgres()
    target = filters.USER_TARGET if rt is USERS else filters.GROUP_TARGET
    table = ScimUser if rt is USERS else ScimGroup
    where = filters.Sql(f"{target.table}.directory = {{}}", [directory.id])
    if query.filter:
        extra = filters.to_sql(query.filter, target, postgres=pg)
        where = filters.Sql(f"{where.text} AND {extra.text}", where.values + extra.values)
    sort = _sort_sql(rt, target, query.sort_by, pg)
    direction = "DESC" if query.descending else "ASC"
    if sort.text == f"{target.table}.created_at":
        # The default order, on a NOT NULL column: the (directory, created_at, id) index serves it.
        order = f"{sort.text} {direction}, {target.table}.id {direction}"
        order_values: list[Any] = []
    else:
        order = f"({sort.text}) IS NULL, {sort.text} {direction}, {target.table}.id {direction}"
        order_values = [*sort.values, *sort.values]
    rows: list[dict[str, Any]] = []
    if query.count > 0:
        sql = f"SELECT {target.table}.* FROM {target.table} WHERE {where.text} ORDER BY {order} LIMIT {{}} OFFSET {{}}"  # noqa: S608 (fixed names and {} placeholders only)
        rows = await table.raw(sql, *where.values, *order_values, query.count, query.start_index - 1)
    if query.start_index == 1 and len(rows) < query.count:
        # The whole result is on this page (an IdP's `userName eq` lookup): no separate count.
        total = len(rows)
    else:
        total_rows = await table.raw(
            f"SELECT count(*) AS n FROM {target.table} WHERE {where.text}",  # noqa: S608 (fixed names and {} placeholders only)
            *where.values,
        )
        total = int(total_rows[0]["n"])
    if rt is USERS:
        groups = await _groups_of([r["id"] for r in rows], base_url) if with_links else {}
        return total, [user_resource(r, base_url, groups.get(r["id"])) for r in rows]
    members = await _members_of([r["id"] for r in rows], base_url) if with_links else {}
    return total, [group_resource(r, base_url, members.get(r["id"])) for r in rows]


async def _user_row(directory: Directory, user_id: str, *, lock: bool = False) -> dict[str, Any]:
    sql = "SELECT * FROM scim_user WHERE id = {} AND directory = {}"  # tenant check: this directory's only
    if lock and postgres():
        sql += " FOR UPDATE"
    rows = await ScimUser.raw(sql, user_id, directory.id)
    if not rows:
        raise errors.not_found(f"No User {user_id} in this directory.")
    return cast(dict[str, Any], rows[0])


async def _group_row(directory: Directory, group_id: str, *, lock: bool = False) -> dict[str, Any]:
    sql = "SELECT * FROM scim_group WHERE id = {} AND directory = {}"  # tenant check
    if lock and postgres():
        sql += " FOR UPDATE"
    rows = await ScimGroup.raw(sql, group_id, directory.id)
    if not rows:
        raise errors.not_found(f"No Group {group_id} in this directory.")
    return cast(dict[str, Any], rows[0])


async def get_user(directory: Directory, user_id: str, base_url: str) -> dict[str, Any]:
    row = await _user_row(directory, user_id)
    groups = await _groups_of([row["id"]], base_url)
    return user_resource(row, base_url, groups.get(row["id"]))


async def get_group(directory: Directory, group_id: str, base_url: str) -> dict[str, Any]:
    row = await _group_row(directory, group_id)
    members = await _members_of([row["id"]], base_url)
    return group_resource(row, base_url, members.get(row["id"]))


def check_version(row: dict[str, Any], if_match: str | None) -> None:
    """``If-Match`` must name the current ``meta.version`` (or ``*``), else 412."""
    if if_match is None:
        return
    wanted = {tag.strip() for tag in if_match.split(",")}
    if "*" in wanted:
        return
    current = etag(row["version"])
    if current not in wanted and current.removeprefix("W/") not in wanted:
        raise errors.ScimError(412, f"The resource changed: its version is now {current}.")


# --- users --------------------------------------------------------------------------------------------------


def _primary_email(resource: dict[str, Any]) -> str:
    emails = resource.get("emails") or []
    ordered = sorted(emails, key=lambda e: not e.get("primary")) if isinstance(emails, list) else []
    candidates = [e.get("value") for e in ordered if isinstance(e, dict)] + [resource.get("userName")]
    for value in candidates:
        if isinstance(value, str):
            try:
                return accounts.normalize_email(value)
            except InvalidInput:
                continue
    return ""


def _columns(resource: dict[str, Any]) -> dict[str, Any]:
    user_name = str(resource["userName"]).strip()
    if len(user_name) > 320:
        raise errors.invalid_value("userName is longer than 320 characters.")
    external = resource.get("externalId")
    return {
        "user_name": user_name,
        "user_name_key": user_name.lower(),
        "external_id": external[:320] if isinstance(external, str) else None,
        "active": resource.get("active", True) is not False,
        "email": _primary_email(resource),
    }


async def _verified(organization_id: str) -> set[str]:
    rows = await Domain.select(Domain.domain).where(
        (Domain.organization == organization_id) & (Domain.status == "verified")
    )
    return {r["domain"] for r in rows}


def _names(resource: dict[str, Any]) -> dict[str, str]:
    name = resource.get("name") if isinstance(resource.get("name"), dict) else {}
    assert isinstance(name, dict)
    given = str(name.get("givenName") or "")[:100]
    family = str(name.get("familyName") or "")[:100]
    display = str(
        resource.get("displayName") or name.get("formatted") or " ".join(p for p in (given, family) if p)
    )
    return {"given_name": given, "family_name": family, "display_name": display[:200]}


async def _link(
    directory: Directory,
    row: dict[str, Any],
    resource: dict[str, Any],
    known_roles: Iterable[str],
    *,
    active: bool = True,
) -> dict[str, Any]:
    """Link (or re-link) the SCIM user to a portal user and membership; update the account where allowed.

    Returns the columns to store on the SCIM row (user_id, membership_id, base_roles, email).
    """
    email = _primary_email(resource)
    verified = await _verified(directory.organization_id) if email or row.get("user_id") else set()
    domain_ok = bool(email) and email.rsplit("@", 1)[1] in verified
    user_id = row.get("user_id")
    updates: dict[str, Any] = {}
    #: The account this call created (it has no membership yet, and its names are known).
    created: dict[str, Any] | None = None
    if user_id:
        user = await User.select().where(User.id == user_id).first()
        if user is None:
            user_id = None
        else:
            current_ok = user["email"].rsplit("@", 1)[1] in verified
            if current_ok and domain_ok and email != user["email"]:
                clash = await User.exists().where((User.email == email) & (User.id != user_id))
                if clash:
                    raise errors.uniqueness(f"Another account already uses {email}.")
                await User.update({User.email: email, User.updated_at: clock.utcnow()}).where(
                    User.id == user_id
                )
                await accounts.sync_member_keys(user_id)
            if current_ok:
                await _update_names(user_id, resource)
    if not user_id and email:
        user = await User.select().where(User.email == email).first()
        if user is None:
            names = _names(resource)
            new = User(
                email=email,
                email_verified=domain_ok,
                given_name=names["given_name"],
                family_name=names["family_name"],
                display_name=names["display_name"],
            )
            await new.save()
            await accounts.audit(
                "user.created", target=new.id, details={"source": "scim", "directory_id": directory.id}
            )
            user_id = new.id
            created = {"email": email, **names}
        else:
            user_id = user["id"]
            if domain_ok:
                await _update_names(user_id, resource)
    updates["user_id"] = user_id
    if user_id is None:
        updates["membership_id"] = None
        return updates
    membership = None
    if created is None:
        membership = (
            await Membership.select()
            .where((Membership.organization == directory.organization_id) & (Membership.user == user_id))
            .first()
            .output(load_json=True)
        )
    if membership is None:
        known = set(known_roles)
        roles = sorted(r for r in directory.default_roles if r in known)
        updates["membership_id"] = await _add_membership(directory, user_id, roles, active, created)
        updates["base_roles"] = roles
    elif membership["id"] != row.get("membership_id"):
        updates["membership_id"] = membership["id"]
        updates["base_roles"] = list(membership["roles"] or [])
    return updates


async def _add_membership(
    directory: Directory, user_id: str, roles: list[str], active: bool, user: dict[str, Any] | None
) -> str:
    """A membership with source ``scim`` (what ``accounts.add_member`` writes, in fewer queries)."""
    if user is None:
        user = (
            await User.select(User.email, User.display_name, User.given_name, User.family_name)
            .where(User.id == user_id)
            .first()
        )
    keys = accounts.member_keys(user or {})
    membership = Membership(
        organization=directory.organization_id,
        user=user_id,
        roles=roles,
        status="active" if active else "suspended",
        source="scim",
        email=keys["email"],
        sort_key=keys["sort_key"],
        family_key=keys["family_key"],
    )
    await membership.save()
    await accounts.audit(
        "member.added",
        organization_id=directory.organization_id,
        target=user_id,
        details={"roles": roles, "source": "scim", "directory_id": directory.id},
    )
    return str(membership.id)


async def _update_names(user_id: str, resource: dict[str, Any]) -> None:
    names = _names(resource)
    if not any(names.values()):
        return
    await User.update(
        {
            User.given_name: names["given_name"],
            User.family_name: names["family_name"],
            User.display_name: names["display_name"],
            User.updated_at: clock.utcnow(),
        }
    ).where(User.id == user_id)
    await accounts.sync_member_keys(user_id)


async def _set_status(directory: Directory, membership_id: str | None, active: bool) -> None:
    """Active or suspended; suspending ends the member's sessions in the organization at once."""
    if not membership_id:
        return
    status = "active" if active else "suspended"
    changed = (
        await Membership.update({Membership.status: status, Membership.updated_at: clock.utcnow()})
        .where(
            (Membership.id == membership_id)
            & (Membership.organization == directory.organization_id)
            & (Membership.status != status)
        )
        .returning(Membership.user)
    )
    if changed and not active:
        await _end_sessions(directory.organization_id, changed[0]["user"], "suspended")


async def _end_sessions(organization_id: str, user_id: str, reason: str) -> None:
    detached = (
        await Session.update({Session.active_organization: None})
        .where(
            (Session.user == user_id)
            & (Session.active_organization == organization_id)
            & Session.revoked_at.is_null()
        )
        .returning(Session.id)
    )
    await sessions.ended([(r["id"], user_id) for r in detached], reason, organization_id=organization_id)


async def apply_roles(directory: Directory, scim_user_ids: Iterable[str]) -> None:
    """Membership roles = base roles plus the roles the directory maps the user's groups to."""
    wanted = list(dict.fromkeys(scim_user_ids))
    if not wanted:
        return
    placeholders = ", ".join("{}" for _ in wanted)
    rows = await ScimUser.raw(
        f"SELECT id, membership_id, base_roles FROM scim_user WHERE directory = {{}} AND id IN ({placeholders})",  # noqa: S608 (fixed names and {} placeholders only)
        directory.id,
        *wanted,
    )
    links = await ScimGroupMember.raw(
        f'SELECT member, "group" FROM scim_group_member WHERE member IN ({placeholders})',  # noqa: S608 (fixed names and {} placeholders only)
        *wanted,
    )
    groups: dict[str, set[str]] = {}
    for link in links:
        groups.setdefault(link["member"], set()).add(link["group"])
    for row in rows:
        if not row["membership_id"]:
            continue
        roles = set(db.json_value(row["base_roles"]) or [])
        for group_id in groups.get(row["id"], ()):
            roles.update(directory.group_roles.get(group_id, ()))
        new = sorted(roles)
        current = (
            await Membership.select(Membership.roles)
            .where(Membership.id == row["membership_id"])
            .first()
            .output(load_json=True)
        )
        if current is not None and sorted(current["roles"] or []) != new:
            await Membership.update({Membership.roles: new, Membership.updated_at: clock.utcnow()}).where(
                (Membership.id == row["membership_id"])
                & (Membership.organization == directory.organization_id)
            )
            await accounts.audit(
                "member.roles_changed",
                organization_id=directory.organization_id,
                target=row["id"],
                details={
                    "membership_id": row["membership_id"],
                    "old": current["roles"],
                    "new": new,
                    "source": "scim",
                },
            )


async def _unique_user_name(directory: Directory, key: str, exclude: str | None) -> None:
    query = ScimUser.exists().where((ScimUser.directory == directory.id) & (ScimUser.user_name_key == key))
    if exclude:
        query = query.where(ScimUser.id != exclude)
    if await query:
        raise errors.uniqueness(f"A User with userName {key!r} already exists in this directory.")


async def create_user(
    directory: Directory, body: Any, base_url: str, known_roles: Iterable[str]
) -> dict[str, Any]:
    resource = resources.validate(USERS, body)
    columns = _columns(resource)
    await _unique_user_name(directory, columns["user_name_key"], None)
    now = clock.utcnow()
    stub: dict[str, Any] = {"user_id": None, "membership_id": None, "resource": {}}
    links = await _link(directory, stub, resource, known_roles, active=columns["active"])
    row = ScimUser(
        directory=directory.id,
        organization_id=directory.organization_id,
        resource=resource,
        created_at=now,
        updated_at=now,
        version=1,
        **columns,
        **links,
    )
    await row.save()
    if not columns["active"] and links.get("membership_id"):
        await _set_status(directory, links["membership_id"], False)  # an existing member, created inactive
    # A new user is in no group yet: its roles are its base roles, set with the membership.
    await _audit(
        directory, "scim.user.created", row.id, {"userName": columns["user_name"], "email": columns["email"]}
    )
    stored = {"id": row.id, "resource": resource, "created_at": now, "updated_at": now, "version": 1}
    return user_resource(stored, base_url, None)


async def _save_user(
    directory: Directory,
    row: dict[str, Any],
    resource: dict[str, Any],
    base_url: str,
    known_roles: Iterable[str],
) -> dict[str, Any]:
    columns = _columns(resource)
    if columns["user_name_key"] != row["user_name_key"]:
        await _unique_user_name(directory, columns["user_name_key"], row["id"])
    previous = dict(db.json_value(row["resource"]) or {})
    same_person = (
        row["membership_id"] is not None
        and columns["email"] == row["email"]
        and _names(previous) == _names(resource)
    )
    links = (
        {} if same_person else await _link(directory, row, resource, known_roles, active=columns["active"])
    )
    now = clock.utcnow()
    changes: dict[Any, Any] = {getattr(ScimUser, k): v for k, v in {**columns, **links}.items()}
    changes[ScimUser.resource] = resource
    changes[ScimUser.updated_at] = now
    changes[ScimUser.version] = row["version"] + 1
    await ScimUser.update(changes).where(ScimUser.id == row["id"])
    membership_id = links.get("membership_id", row["membership_id"])
    relinked = membership_id != row["membership_id"]
    if relinked or columns["active"] != bool(row["active"]):
        await _set_status(directory, membership_id, columns["active"])
    if relinked:
        await apply_roles(directory, [row["id"]])
    was_active = bool(row["active"])
    action = "scim.user.deactivated" if was_active and not columns["active"] else "scim.user.updated"
    await _audit(
        directory, action, row["id"], {"userName": columns["user_name"], "active": columns["active"]}
    )
    groups = await _groups_of([row["id"]], base_url)
    stored = {**row, "resource": resource, "updated_at": now, "version": row["version"] + 1}
    return user_resource(stored, base_url, groups.get(row["id"]))


async def replace_user(
    directory: Directory,
    user_id: str,
    body: Any,
    base_url: str,
    known_roles: Iterable[str],
    if_match: str | None,
) -> dict[str, Any]:
    row = await _user_row(directory, user_id, lock=True)
    check_version(row, if_match)
    resource = resources.validate(USERS, body)
    return await _save_user(directory, row, resource, base_url, known_roles)


async def patch_user(
    directory: Directory,
    user_id: str,
    body: Any,
    base_url: str,
    known_roles: Iterable[str],
    if_match: str | None,
) -> dict[str, Any]:
    ops = resources.operations(body)
    row = await _user_row(directory, user_id, lock=True)
    check_version(row, if_match)
    resource = dict(db.json_value(row["resource"]) or {})
    for op, path, value in ops:
        resources.apply(USERS, resource, op, path, value)
    resource = resources.validate(USERS, {"schemas": [USER, ENTERPRISE], **resource})
    return await _save_user(directory, row, resource, base_url, known_roles)


async def delete_user(directory: Directory, user_id: str) -> None:
    row = await _user_row(directory, user_id, lock=True)
    group_ids = [
        r["group"]
        for r in await ScimGroupMember.select(ScimGroupMember.group).where(ScimGroupMember.member == user_id)
    ]
    await ScimUser.delete().where((ScimUser.id == user_id) & (ScimUser.directory == directory.id))
    if row["membership_id"]:
        removed = (
            await Membership.delete()
            .where(
                (Membership.id == row["membership_id"])
                & (Membership.organization == directory.organization_id)
            )
            .returning(Membership.user)
        )
        if removed:
            await _end_sessions(directory.organization_id, removed[0]["user"], "removed")
            await accounts.audit(
                "member.removed",
                organization_id=directory.organization_id,
                target=removed[0]["user"],
                details={
                    "membership_id": row["membership_id"],
                    "source": "scim",
                    "directory_id": directory.id,
                },
            )
    if group_ids:
        await _touch_groups(group_ids)
    await _audit(directory, "scim.user.deleted", user_id, {"userName": row["user_name"]})


async def _audit(directory: Directory, action: str, target: str, details: dict[str, Any]) -> None:
    await accounts.audit(
        action,
        organization_id=directory.organization_id,
        target=target,
        details={"directory_id": directory.id, **details},
    )


# --- groups -------------------------------------------------------------------------------------------------


def _member_ids(value: Any, where: str) -> dict[str, str]:
    """Member id → the ``display`` sent with it (kept and returned as sent), in order."""
    items = value if isinstance(value, list) else [value]
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("value"), str) or not item["value"]:
            raise errors.invalid_value(f'{where}: each member needs a "value" (a User id).')
        display = item.get("display")
        out.setdefault(item["value"], display[:320] if isinstance(display, str) else "")
    return out


async def _check_members(directory: Directory, member_ids: list[str]) -> None:
    if not member_ids:
        return
    placeholders = ", ".join("{}" for _ in member_ids)
    rows = await ScimUser.raw(
        f"SELECT id FROM scim_user WHERE directory = {{}} AND id IN ({placeholders})",  # noqa: S608 (fixed names and {} placeholders only)
        directory.id,
        *member_ids,
    )  # tenant check: members must be Users of this directory
    found = {r["id"] for r in rows}
    missing = [m for m in member_ids if m not in found]
    if missing:
        raise errors.invalid_value(f"members: no User {missing[0]} in this directory.")


async def _add_members(group_id: str, members: dict[str, str]) -> None:
    if not members:
        return
    now = clock.utcnow()
    values = ", ".join("({}, {}, {}, {})" for _ in members)
    params: list[Any] = []
    for member, display in members.items():
        params.extend([group_id, member, display, now])
    # One row per (group, member) under a unique key: concurrent adds never overwrite each other.
    await ScimGroupMember.raw(
        'INSERT INTO scim_group_member ("group", member, display, created_at)'  # noqa: S608 (fixed names and {} placeholders only)
        f" VALUES {values} ON CONFLICT DO NOTHING",
        *params,
    )


async def _remove_members(group_id: str, member_ids: list[str] | None) -> list[str]:
    query = ScimGroupMember.delete().where(ScimGroupMember.group == group_id)
    if member_ids is not None:
        if not member_ids:
            return []
        query = query.where(ScimGroupMember.member.is_in(member_ids))
    rows = await query.returning(ScimGroupMember.member)
    return [r["member"] for r in rows]


async def _current_members(group_id: str) -> list[str]:
    rows = (
        await ScimGroupMember.select(ScimGroupMember.member)
        .where(ScimGroupMember.group == group_id)
        .order_by(ScimGroupMember.id)
    )
    return [r["member"] for r in rows]


async def _touch_groups(group_ids: Iterable[str]) -> None:
    ids_ = list(dict.fromkeys(group_ids))
    if ids_:
        await ScimGroup.update(
            {ScimGroup.version: ScimGroup.version + 1, ScimGroup.updated_at: clock.utcnow()}
        ).where(ScimGroup.id.is_in(ids_))


def _group_columns(resource: dict[str, Any]) -> dict[str, Any]:
    name = str(resource["displayName"]).strip()
    if len(name) > 320:
        raise errors.invalid_value("displayName is longer than 320 characters.")
    external = resource.get("externalId")
    return {
        "display_name": name,
        "display_name_key": name.lower(),
        "external_id": external[:320] if isinstance(external, str) else None,
    }


async def _unique_group_name(directory: Directory, key: str, exclude: str | None) -> None:
    query = ScimGroup.exists().where(
        (ScimGroup.directory == directory.id) & (ScimGroup.display_name_key == key)
    )
    if exclude:
        query = query.where(ScimGroup.id != exclude)
    if await query:
        raise errors.uniqueness(f"A Group named {key!r} already exists in this directory.")


async def create_group(directory: Directory, body: Any, base_url: str) -> dict[str, Any]:
    resource = resources.validate(GROUPS, body)
    members = _member_ids(resource.pop("members", []), "members")
    columns = _group_columns(resource)
    await _unique_group_name(directory, columns["display_name_key"], None)
    await _check_members(directory, list(members))
    now = clock.utcnow()
    row = ScimGroup(
        directory=directory.id,
        organization_id=directory.organization_id,
        resource=resource,
        created_at=now,
        updated_at=now,
        **columns,
    )
    await row.save()
    await _add_members(row.id, members)
    await apply_roles(directory, list(members))
    await _audit(
        directory,
        "scim.group.created",
        row.id,
        {"displayName": columns["display_name"], "members": len(members)},
    )
    return await get_group(directory, row.id, base_url)


async def _save_group(
    directory: Directory,
    row: dict[str, Any],
    resource: dict[str, Any],
    base_url: str,
    changed: list[str],
    details: dict[str, Any],
) -> dict[str, Any]:
    columns = _group_columns(resource)
    await _unique_group_name(directory, columns["display_name_key"], row["id"])
    changes: dict[Any, Any] = {getattr(ScimGroup, k): v for k, v in columns.items()}
    changes[ScimGroup.resource] = resource
    changes[ScimGroup.updated_at] = clock.utcnow()
    changes[ScimGroup.version] = ScimGroup.version + 1
    await ScimGroup.update(changes).where(ScimGroup.id == row["id"])
    await apply_roles(directory, changed)
    await _audit(
        directory, "scim.group.updated", row["id"], {"displayName": columns["display_name"], **details}
    )
    return await get_group(directory, row["id"], base_url)


async def replace_group(
    directory: Directory, group_id: str, body: Any, base_url: str, if_match: str | None
) -> dict[str, Any]:
    row = await _group_row(directory, group_id, lock=True)
    check_version(row, if_match)
    resource = resources.validate(GROUPS, body)
    members = _member_ids(resource.pop("members", []), "members")
    await _check_members(directory, list(members))
    removed = await _remove_members(group_id, None)
    await _add_members(group_id, members)
    changed = sorted(set(removed) ^ set(members))
    return await _save_group(
        directory,
        row,
        resource,
        base_url,
        list(set(removed) | set(members)),
        {"changed_members": len(changed)},
    )


async def patch_group(
    directory: Directory, group_id: str, body: Any, base_url: str, if_match: str | None
) -> dict[str, Any]:
    ops = resources.operations(body)
    row = await _group_row(directory, group_id, lock=True)
    check_version(row, if_match)
    resource = dict(db.json_value(row["resource"]) or {})
    touched: set[str] = set()
    added = removed_count = 0
    for op, path, value in ops:
        member_path = path is not None and path.strip().lower().split("[", 1)[0].split(".", 1)[0] in {
            "members",
            GROUP.lower() + ":members",
        }
        if path is None and isinstance(value, dict):
            member_value = next((v for k, v in value.items() if k.lower() == "members"), None)
            rest = {k: v for k, v in value.items() if k.lower() != "members"}
            if member_value is not None:
                touched_now, a, r = await _patch_members(directory, group_id, op, "members", member_value)
                touched |= touched_now
                added += a
                removed_count += r
            if rest:
                resources.apply(GROUPS, resource, op, None, rest)
            continue
        if member_path:
            assert path is not None
            touched_now, a, r = await _patch_members(directory, group_id, op, path, value)
            touched |= touched_now
            added += a
            removed_count += r
            continue
        resources.apply(GROUPS, resource, op, path, value)
    resource = resources.validate(GROUPS, {"schemas": [GROUP], **resource})
    return await _save_group(
        directory, row, resource, base_url, sorted(touched), {"added": added, "removed": removed_count}
    )


async def _patch_members(
    directory: Directory, group_id: str, op: str, path: str, value: Any
) -> tuple[set[str], int, int]:
    parsed = resources.parse_path(GROUPS, path)
    if parsed.sub is not None:
        raise errors.mutability("members' sub-attributes cannot be changed; add or remove the member.")
    if op == "remove":
        if parsed.filter is not None:
            current = await _current_members(group_id)
            hits = [
                m
                for m in current
                if resources.matches(parsed.attr, {"value": m, "type": "User"}, parsed.filter)
            ]
            removed = await _remove_members(group_id, hits)
        elif value is not None:
            removed = await _remove_members(group_id, list(_member_ids(value, "members")))
        else:
            removed = await _remove_members(group_id, None)
        return set(removed), 0, len(removed)
    if parsed.filter is not None:
        raise errors.invalid_path("add or replace members with a list of members, not a value filter.")
    members = _member_ids(value, "members") if value not in (None, []) else {}
    await _check_members(directory, list(members))
    removed_list: list[str] = []
    if op == "replace":
        keep = set(members)
        current = await _current_members(group_id)
        removed_list = await _remove_members(group_id, [m for m in current if m not in keep])
    await _add_members(group_id, members)
    return set(members) | set(removed_list), len(members), len(removed_list)


async def delete_group(directory: Directory, group_id: str) -> None:
    row = await _group_row(directory, group_id, lock=True)
    members = await _current_members(group_id)
    await ScimGroup.delete().where((ScimGroup.id == group_id) & (ScimGroup.directory == directory.id))
    if group_id in directory.group_roles:
        roles = dict(directory.group_roles)
        roles.pop(group_id)
        await ScimDirectory.update({ScimDirectory.group_roles: roles}).where(ScimDirectory.id == directory.id)
        directory = Directory(
            directory.id,
            directory.organization_id,
            directory.name,
            directory.provider,
            roles,
            directory.default_roles,
        )
    await apply_roles(directory, members)
    await _audit(directory, "scim.group.deleted", group_id, {"displayName": row["display_name"]})


# --- group → role mapping (widget) --------------------------------------------------------------------------


async def list_groups(directory_id: str) -> list[dict[str, Any]]:
    rows = await ScimGroup.raw(
        'SELECT g.id, g.display_name, (SELECT count(*) FROM scim_group_member gm WHERE gm."group" = g.id) AS members'
        " FROM scim_group g WHERE g.directory = {} ORDER BY g.display_name_key, g.id",
        directory_id,
    )
    return cast(list[dict[str, Any]], rows)


async def set_group_roles(
    directory: Directory,
    group_id: str,
    roles: Sequence[str],
    known_roles: Iterable[str],
    *,
    actor_id: str | None,
) -> Directory:
    """Map a group to roles (empty: no mapping) and apply it to the group's members now."""
    known = set(known_roles)
    unknown = [r for r in roles if r not in known]
    if unknown:
        raise InvalidInput("roles", f"Role {unknown[0]!r} is not defined in the policy.")
    exists = await ScimGroup.exists().where(
        (ScimGroup.id == group_id) & (ScimGroup.directory == directory.id)
    )  # tenant check
    if not exists:
        raise LookupError(group_id)
    mapping = dict(directory.group_roles)
    if roles:
        mapping[group_id] = sorted(set(roles))
    else:
        mapping.pop(group_id, None)
    await ScimDirectory.update(
        {ScimDirectory.group_roles: mapping, ScimDirectory.updated_at: clock.utcnow()}
    ).where(ScimDirectory.id == directory.id)
    updated = Directory(
        directory.id,
        directory.organization_id,
        directory.name,
        directory.provider,
        mapping,
        directory.default_roles,
    )
    await apply_roles(updated, await _current_members(group_id))
    await accounts.audit(
        "scim.group_roles.changed",
        organization_id=directory.organization_id,
        actor_id=actor_id,
        target=group_id,
        details={"directory_id": directory.id, "roles": sorted(set(roles))},
    )
    return updated


async def save_self_test(directory_id: str, result: dict[str, Any]) -> None:
    await ScimDirectory.update({ScimDirectory.self_test: result}).where(ScimDirectory.id == directory_id)


async def self_test_result(directory_id: str) -> dict[str, Any]:
    row = (
        await ScimDirectory.select(ScimDirectory.self_test)
        .where(ScimDirectory.id == directory_id)
        .first()
        .output(load_json=True)
    )
    return dict(row["self_test"] or {}) if row else {}

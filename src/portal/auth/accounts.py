"""Admin operations on organizations, users and memberships, shared by the CLI, the demo and tests."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, cast

from policy import Feature
from portal.core import clock, db
from portal.core.errors import InvalidInput
from portal.core.tables import AuditEvent, Membership, Organization, User
from portal.webhooks import events

_EMAIL = re.compile(
    # Local part: RFC 5322 dot-atom characters only (no spaces, quotes or control characters).
    r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_ORG_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")
MEMBERSHIP_SOURCES = ("portal", "api", "scim", "jit", "sso")


def normalize_email(raw: str) -> str:
    """Trim and lowercase an email address; raise :class:`InvalidInput` if it is not one."""
    email = raw.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise InvalidInput("email", "Enter an email address like name@example.com.")
    return email


def parse_features(values: Iterable[str]) -> list[str]:
    """Validate feature keys against the vocabulary; sorted and de-duplicated."""
    known = {f.value for f in Feature}
    features = sorted({v.strip() for v in values if v.strip()})
    unknown = [f for f in features if f not in known]
    if unknown:
        raise InvalidInput("features", f"unknown feature {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return features


# --- member keys (members widget): what membership rows keep of their user for search and ordering -----


def fold(text: str) -> str:
    """Text as the members list sorts and searches it: casefolded, accents dropped, spaces collapsed.

    ``Émile  Zola`` -> ``emile zola``. Applied to stored keys and to search terms alike.
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(unicodedata.normalize("NFC", stripped).split())


def member_keys(user: dict[str, Any]) -> dict[str, str]:
    """The membership columns copied from ``user``: email, sort_key (name, else email), family_key."""
    email = str(user.get("email") or "")
    name = str(user.get("display_name") or "").strip()
    if not name:
        name = " ".join(str(user.get(k) or "").strip() for k in ("given_name", "family_name")).strip()
    return {
        "email": email,
        "sort_key": fold(name or email)[:320],
        "family_key": fold(str(user.get("family_name") or ""))[:100],
    }


async def sync_member_keys(user_id: str) -> None:
    """Copy the user's current email and names onto all their memberships (after any change to them)."""
    user = (
        await User.select(User.email, User.display_name, User.given_name, User.family_name)
        .where(User.id == user_id)
        .first()
    )
    if user is None:
        return
    keys = member_keys(user)
    await Membership.update(
        {
            Membership.email: keys["email"],
            Membership.sort_key: keys["sort_key"],
            Membership.family_key: keys["family_key"],
        }
    ).where(Membership.user == user_id)


# --- end member keys


#: Issue 14: the actor of audit rows written by a setup-link session (``actor_id`` is the link's ``lnk_…`` id).
SETUP_LINK_ACTOR = "IT admin via setup link"


async def audit(
    action: str,
    *,
    organization_id: str | None = None,
    actor_id: str | None = None,
    target: str = "",
    details: dict[str, Any] | None = None,
    ip: str = "",
) -> None:
    """Write one audit event (DESIGN §3: every change made through the portal), and the webhook event it
    stands for (issue 11), in the caller's transaction: call it inside the change's own transaction."""
    if actor_id is not None and actor_id.startswith("lnk_"):
        # Issue 14: a setup-link session acts as the link (no account); the row says so in words too.
        details = {**(details or {}), "actor": SETUP_LINK_ACTOR}
    row = AuditEvent(
        organization_id=organization_id,
        actor_id=actor_id or None,  # "" is the operator (the portal command)
        action=action,
        target=target,
        details=details or {},
        ip=ip,
        at=clock.utcnow(),
    )
    event = events.event_for_audit(  # issue 11: webhooks
        action, organization_id=organization_id, actor_id=actor_id, target=target, details=details or {}
    )
    batch = _audit_batch.get()
    if batch is not None:
        batch.append((row, event))
        return
    await row.save()
    if event is not None:
        await events.emit_many([event])


#: The audit rows (and their webhook events) of the current :func:`batched_audit` block, not yet written.
_audit_batch: ContextVar[list[tuple[AuditEvent, events.Event | None]] | None] = ContextVar(
    "audit_batch", default=None
)


@asynccontextmanager
async def batched_audit() -> AsyncIterator[None]:
    """Inside a transaction: the :func:`audit` calls of the block are written together when it ends without
    an error (one INSERT for the rows, one for their events), still in that transaction. A SCIM create audits
    the account, the membership and the SCIM user: two statements instead of six."""
    batch: list[tuple[AuditEvent, events.Event | None]] = []
    token = _audit_batch.set(batch)
    try:
        yield
    finally:
        _audit_batch.reset(token)
    if batch:
        await AuditEvent.insert(*(row for row, _ in batch))
        await events.emit_many([event for _, event in batch if event is not None])


async def find_organization(ref: str) -> dict[str, Any] | None:
    """An organization by id, name or external id."""
    query = Organization.select().where(
        (Organization.id == ref) | (Organization.name == ref) | (Organization.external_id == ref)
    )
    return cast(dict[str, Any] | None, await query.first().output(load_json=True))


async def find_user(email: str) -> dict[str, Any] | None:
    """A user by (normalized) email."""
    row: dict[str, Any] | None = await User.select().where(User.email == email.strip().lower()).first()
    return row


async def find_membership(organization_id: str, email: str) -> str | None:
    """The id of ``email``'s membership (active or invited) in the organization, or None."""
    row = (
        await Membership.select(Membership.id)
        .where((Membership.organization == organization_id) & (Membership.email == email.strip().lower()))
        .first()
    )
    return None if row is None else str(row["id"])


async def list_organizations() -> list[dict[str, Any]]:
    """Every organization with its member count, by name."""
    rows: list[dict[str, Any]] = (
        await Organization.select(
            Organization.id, Organization.name, Organization.display_name, Organization.features
        )
        .order_by(Organization.name)
        .output(load_json=True)
    )
    counts: dict[str, int] = {}
    for m in await Membership.select(Membership.organization):
        counts[m["organization"]] = counts.get(m["organization"], 0) + 1
    for row in rows:
        row["features"] = sorted(row["features"] or [])
        row["members"] = counts.get(row["id"], 0)
    return rows


async def list_users(organization_id: str | None = None) -> list[dict[str, Any]]:
    """Every user (or the organization's members) by email, each with their organizations and roles."""
    names = {o["id"]: o["name"] for o in await Organization.select(Organization.id, Organization.name)}
    query = Membership.select(Membership.user, Membership.organization, Membership.roles)
    memberships: list[dict[str, Any]] = await query.output(load_json=True)
    by_user: dict[str, list[dict[str, Any]]] = {}
    for m in memberships:
        by_user.setdefault(m["user"], []).append(
            {
                "org": names.get(m["organization"], m["organization"]),
                "id": m["organization"],
                "roles": m["roles"],
            }
        )
    users = await User.select(User.id, User.email, User.display_name).order_by(User.email)
    out = []
    for u in users:
        mine = sorted(by_user.get(u["id"], []), key=lambda m: m["org"])
        if organization_id is not None and not any(m["id"] == organization_id for m in mine):
            continue
        out.append({"id": u["id"], "email": u["email"], "name": u["display_name"], "memberships": mine})
    return out


async def create_organization(
    name: str,
    display_name: str | None = None,
    *,
    features: Sequence[str] = (),
    external_id: str | None = None,
    actor_id: str | None = None,
) -> dict[str, Any]:
    """Create an organization; ``name`` is a unique lowercase slug."""
    name = name.strip().lower()
    if not _ORG_NAME.match(name):
        raise InvalidInput("name", "Use lowercase letters, digits and hyphens (at most 100).")
    if await Organization.exists().where(Organization.name == name):
        raise InvalidInput("name", f"An organization named {name!r} already exists.")
    if external_id and await Organization.exists().where(Organization.external_id == external_id):
        raise InvalidInput("external_id", f"An organization with external id {external_id!r} already exists.")
    org = Organization(
        name=name,
        display_name=(display_name or name).strip()[:200],
        external_id=external_id or None,
        features=parse_features(features),
    )
    # The row, its audit event and its webhook event commit together (or not at all).
    async with db.write_transaction():
        await org.save()
        await audit("organization.created", organization_id=org.id, actor_id=actor_id, target=org.id)
    return cast(
        dict[str, Any],
        await Organization.select().where(Organization.id == org.id).first().output(load_json=True),
    )


async def create_user(
    email: str,
    *,
    given_name: str = "",
    family_name: str = "",
    verified: bool = False,
    actor_id: str | None = None,
    ip: str = "",
) -> dict[str, Any]:
    """Create a user with a normalized, unique email."""
    email = normalize_email(email)
    if await User.exists().where(User.email == email):
        raise InvalidInput("email", f"A user with email {email} already exists.")
    display = " ".join(part for part in (given_name.strip(), family_name.strip()) if part)
    user = User(
        email=email,
        email_verified=verified,
        given_name=given_name.strip(),
        family_name=family_name.strip(),
        display_name=display,
    )
    async with db.write_transaction():
        await user.save()
        await audit("user.created", actor_id=actor_id, target=user.id, details={"email": email}, ip=ip)
    return cast(dict[str, Any], await User.select().where(User.id == user.id).first())


async def add_member(
    organization_id: str,
    user_id: str,
    roles: Sequence[str],
    *,
    known_roles: Iterable[str],
    source: str = "portal",
    actor_id: str | None = None,
) -> dict[str, Any]:
    """Make a user an active member with ``roles``, each of which the policy must define."""
    known = set(known_roles)
    unknown = [r for r in roles if r not in known]
    if unknown:
        raise InvalidInput(
            "roles", f"role {unknown[0]!r} is not defined in the policy (known: {', '.join(sorted(known))})"
        )
    if source not in MEMBERSHIP_SOURCES:
        raise InvalidInput("source", f"source must be one of {', '.join(MEMBERSHIP_SOURCES)}")
    exists = await Membership.exists().where(
        (Membership.organization == organization_id) & (Membership.user == user_id)
    )
    if exists:
        raise InvalidInput("user", "This user is already a member of the organization.")
    user = (
        await User.select(User.email, User.display_name, User.given_name, User.family_name)
        .where(User.id == user_id)
        .first()
    )
    if user is None:
        raise InvalidInput("user", "No such user.")
    keys = member_keys(user)
    membership = Membership(
        organization=organization_id,
        user=user_id,
        roles=sorted(set(roles)),
        status="active",
        source=source,
        email=keys["email"],
        sort_key=keys["sort_key"],
        family_key=keys["family_key"],
    )
    async with db.write_transaction():
        await membership.save()
        await audit(
            "member.added",
            organization_id=organization_id,
            actor_id=actor_id,
            target=user_id,
            details={"roles": sorted(set(roles)), "source": source, "email": keys["email"]},
        )
    return cast(
        dict[str, Any],
        await Membership.select().where(Membership.id == membership.id).first().output(load_json=True),
    )


# --- issue 11: api -- the organization fields only the app sets (no widget edits them)
MAX_METADATA_BYTES = 16 * 1024
_UNSET: Any = object()


async def update_organization(
    organization_id: str,
    *,
    features: Sequence[str] | None = None,
    external_id: str | None = _UNSET,
    metadata: dict[str, Any] | None = None,
    actor_id: str | None = None,
    ip: str = "",
) -> list[str]:
    """Set the features, external id (None or ``""`` clears it) and metadata the app owns; audit
    ``organization.updated`` with old and new values. Returns the changed fields. Call inside a write
    transaction."""
    row = await (
        Organization.select(Organization.features, Organization.external_id, Organization.metadata)
        .where(Organization.id == organization_id)
        .first()
        .output(load_json=True)
    )
    if row is None:
        raise LookupError(organization_id)
    new: dict[str, Any] = {}
    if features is not None:
        new["features"] = parse_features(features)
    if external_id is not _UNSET:
        cleaned = (external_id or "").strip() or None
        if cleaned is not None and (len(cleaned) > 200 or any(ord(ch) < 32 for ch in cleaned)):
            raise InvalidInput("external_id", "Use at most 200 characters and no control characters.")
        if cleaned is not None and await Organization.exists().where(
            (Organization.external_id == cleaned) & (Organization.id != organization_id)
        ):
            raise InvalidInput("external_id", f"An organization with external id {cleaned!r} already exists.")
        new["external_id"] = cleaned
    if metadata is not None:
        import json

        if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise InvalidInput("metadata", f"Keep metadata under {MAX_METADATA_BYTES} bytes of JSON.")
        new["metadata"] = metadata
    changes = {k: {"old": row[k], "new": v} for k, v in new.items() if row[k] != v}
    if not changes:
        return []
    update: dict[Any, Any] = {Organization._meta.get_column_by_name(k): new[k] for k in changes}
    update[Organization.updated_at] = clock.utcnow()
    await Organization.update(update).where(Organization.id == organization_id)
    await audit(
        "organization.updated",
        organization_id=organization_id,
        actor_id=actor_id,
        target=organization_id,
        details={"fields": list(changes), "changes": changes},
        ip=ip,
    )
    return list(changes)


async def delete_organization(organization_id: str, *, actor_id: str | None = None, ip: str = "") -> bool:
    """Delete an organization with its memberships, invitations and domains (its audit events stay);
    sessions pointing at it lose their active organization. False if there is none."""
    row = await Organization.select(Organization.name).where(Organization.id == organization_id).first()
    if row is None:
        return False
    await Organization.delete().where(Organization.id == organization_id)
    await audit(
        "organization.deleted",
        organization_id=organization_id,
        actor_id=actor_id,
        target=organization_id,
        details={"name": row["name"]},
        ip=ip,
    )
    return True


async def switch_organization(
    session_id: str, user_id: str, organization_id: str, *, from_id: str | None, actor_id: str, ip: str
) -> None:
    """Make one of the user's organizations the session's active one (and the user's last one); audit
    ``organization.switched``. LookupError unless the user is an active member (tenant check)."""
    if not await Membership.exists().where(
        (Membership.user == user_id)
        & (Membership.organization == organization_id)
        & (Membership.status == "active")
    ):
        raise LookupError(organization_id)
    from portal.auth import sessions

    await sessions.set_active_organization(session_id, organization_id)
    await User.update({User.last_organization: organization_id}).where(User.id == user_id)
    await audit(
        "organization.switched",
        organization_id=organization_id,
        actor_id=actor_id,
        target=organization_id,
        details={"from": from_id, "session_id": session_id},
        ip=ip,
    )


# --- end issue 11: api


DEMO_ORG = "acme"
DEMO_ADMIN = "alice@acme.test"
DEMO_MEMBER = "bob@acme.test"


async def seed_demo(known_roles: Iterable[str]) -> bool:
    """Create organization "Acme" (every feature on) with admin alice and member bob, once. True if created."""
    if await Organization.exists().where(Organization.name == DEMO_ORG):
        return False
    org = await create_organization(DEMO_ORG, "Acme", features=[f.value for f in Feature])
    known = list(known_roles)
    for email, given, family, role in (
        (DEMO_ADMIN, "Alice", "Admin", "admin"),
        (DEMO_MEMBER, "Bob", "Member", "member"),
    ):
        user = await find_user(email) or await create_user(
            email, given_name=given, family_name=family, verified=True
        )
        await add_member(org["id"], user["id"], [role], known_roles=known)
    await Organization.update({Organization.allowed_email_domains: ["acme.test"]}).where(
        Organization.id == org["id"]
    )
    return True

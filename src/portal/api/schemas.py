"""Bodies and resources of the management API. Request bodies refuse unknown fields (a typo is an error,
not a silent no-op); limits here also appear in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

Name = Annotated[str, msgspec.Meta(max_length=100)]
Text200 = Annotated[str, msgspec.Meta(max_length=200)]
Email = Annotated[str, msgspec.Meta(max_length=320)]
RoleKey = Annotated[str, msgspec.Meta(max_length=100)]
Seconds = Annotated[int, msgspec.Meta(ge=1, le=10 * 365 * 86400)]


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are refused."""


# --- organizations -------------------------------------------------------------------------------------


class SessionPolicy(msgspec.Struct, kw_only=True):
    """``application``: the app's default timeouts; ``custom``: the organization's own (seconds, whole
    minutes), which can only tighten the app's."""

    source: str
    absolute_timeout: int | None = None
    idle_timeout: int | None = None


class SessionPolicyIn(Body):
    source: Annotated[str, msgspec.Meta(max_length=20)]
    absolute_timeout: Seconds | None = None
    idle_timeout: Seconds | None = None


class Organization(msgspec.Struct, kw_only=True):
    id: str
    name: str
    display_name: str
    external_id: str | None
    allowed_email_domains: list[str]
    features: list[str]
    session_policy: SessionPolicy
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class OrganizationCreate(Body):
    #: Short unique name: lowercase letters, digits and hyphens.
    name: Name
    display_name: Text200 | None = None
    external_id: Text200 | None = None
    allowed_email_domains: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=253)]], msgspec.Meta(max_length=50)
    ] = []
    features: Annotated[list[Annotated[str, msgspec.Meta(max_length=60)]], msgspec.Meta(max_length=20)] = []
    session_policy: SessionPolicyIn | None = None
    metadata: dict[str, Any] = {}


class OrganizationUpdate(Body):
    """Only the fields given change. ``external_id: ""`` clears it."""

    name: Name | None = None
    display_name: Text200 | None = None
    external_id: Text200 | None = None
    allowed_email_domains: (
        Annotated[list[Annotated[str, msgspec.Meta(max_length=253)]], msgspec.Meta(max_length=50)] | None
    ) = None
    features: (
        Annotated[list[Annotated[str, msgspec.Meta(max_length=60)]], msgspec.Meta(max_length=20)] | None
    ) = None
    session_policy: SessionPolicyIn | None = None
    metadata: dict[str, Any] | None = None


class OrganizationPage(msgspec.Struct):
    data: list[Organization]
    #: The next page's URL, or null on the last page.
    next: str | None


# --- users ---------------------------------------------------------------------------------------------


class User(msgspec.Struct, kw_only=True):
    id: str
    email: str
    email_verified: bool
    given_name: str
    family_name: str
    display_name: str
    created_at: datetime


class UserCreate(Body):
    email: Email
    given_name: Annotated[str, msgspec.Meta(max_length=100)] = ""
    family_name: Annotated[str, msgspec.Meta(max_length=100)] = ""
    #: Whether the app has already proven the address.
    email_verified: bool = False


class UserPage(msgspec.Struct):
    data: list[User]
    next: str | None


# --- memberships and invitations ---------------------------------------------------------------------


class Membership(msgspec.Struct, kw_only=True):
    id: str
    organization_id: str
    user_id: str
    email: str
    name: str
    roles: list[str]
    status: str
    #: ``portal``, ``api``, ``scim``, ``jit`` or ``sso``.
    source: str
    created_at: datetime


class MembershipCreate(Body):
    user_id: Annotated[str, msgspec.Meta(max_length=40)]
    roles: Annotated[list[RoleKey], msgspec.Meta(min_length=1, max_length=20)]


class MembershipUpdate(Body):
    roles: Annotated[list[RoleKey], msgspec.Meta(min_length=1, max_length=20)]


class MembershipPage(msgspec.Struct):
    data: list[Membership]
    next: str | None


class Invitation(msgspec.Struct, kw_only=True):
    id: str
    organization_id: str
    email: str
    roles: list[str]
    created_at: datetime
    expires_at: datetime
    expired: bool


class InvitationCreate(Body):
    emails: Annotated[list[Email], msgspec.Meta(min_length=1, max_length=50)]
    roles: Annotated[list[RoleKey], msgspec.Meta(min_length=1, max_length=20)]


class InvitationPage(msgspec.Struct):
    data: list[Invitation]
    next: str | None


class InvitationResent(msgspec.Struct):
    data: Invitation
    #: False when the email could not be sent (the new link exists; try again later).
    delivered: bool


class Role(msgspec.Struct, kw_only=True):
    """A role defined in the policy files, with the permissions it grants (inherited ones included)."""

    key: str
    permissions: list[str]


class RoleList(msgspec.Struct):
    data: list[Role]


class InvitationsCreated(msgspec.Struct):
    data: list[Invitation]
    #: Addresses the email could not be sent to (the invitation exists; resend from the widget).
    undelivered: list[str]


# --- domains -------------------------------------------------------------------------------------------


class Domain(msgspec.Struct, kw_only=True):
    id: str
    organization_id: str
    #: Normalized ASCII (IDNA).
    domain: str
    display_name: str
    #: ``pending``, ``verified`` or ``failed``.
    status: str
    #: The TXT record to publish.
    record_name: str
    record_value: str
    reason: str | None
    created_at: datetime
    verify_by: datetime | None
    last_checked_at: datetime | None
    check_queued: bool
    verified_at: datetime | None


class DomainCreate(Body):
    domain: Annotated[str, msgspec.Meta(max_length=300)]


class DomainPage(msgspec.Struct):
    data: list[Domain]
    next: str | None


# --- sessions ------------------------------------------------------------------------------------------


class Session(msgspec.Struct, kw_only=True):
    id: str
    user_id: str
    active_organization_id: str | None
    device: str
    ip: str
    method: str
    created_at: datetime
    last_seen_at: datetime


class SessionPage(msgspec.Struct):
    data: list[Session]
    next: str | None


class ActiveOrganization(Body):
    organization_id: Annotated[str, msgspec.Meta(max_length=40)]


# --- audit events -----------------------------------------------------------------------------------


class AuditEvent(msgspec.Struct, kw_only=True):
    id: str
    organization_id: str | None
    #: A user id (``usr_…``), an API key id (``apk_…``) or null (the portal itself, e.g. a job).
    actor_id: str | None
    action: str
    target: str
    details: dict[str, Any]
    ip: str
    at: datetime


class AuditEventPage(msgspec.Struct):
    data: list[AuditEvent]
    next: str | None

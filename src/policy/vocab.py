"""The policy vocabulary: permissions, organization features and the decisions made about them."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Permission(enum.StrEnum):
    """The organization permissions; a role grants them through the policy files."""

    SETTINGS_READ = "sk_org_settings_read"
    SETTINGS_MANAGE = "sk_org_settings_manage"
    USERS_READ = "sk_org_users_read"
    USERS_INVITE = "sk_org_users_invite"
    USERS_ROLE_CHANGE = "sk_org_users_role_change"
    USERS_DELETE = "sk_org_users_delete"
    SSO_READ = "sk_org_sso_read"
    SSO_MANAGE = "sk_org_sso_manage"
    SCIM_READ = "sk_org_scim_read"
    SCIM_MANAGE = "sk_org_scim_manage"
    SESSION_POLICY_READ = "sk_org_session_policy_read"
    SESSION_POLICY_MANAGE = "sk_org_session_policy_manage"
    #: issue 11: the Audit log widget.
    AUDIT_READ = "sk_org_audit_read"


class Feature(enum.StrEnum):
    """Features an organization has enabled or not; some permissions only work with one enabled."""

    SSO = "sso"
    SCIM = "scim"
    DOMAIN_VERIFICATION = "domain_verification"
    SESSION_POLICY = "session_policy"
    #: issue 11: the Audit log widget.
    AUDIT_LOG = "audit_log"
    #: Issue 14: the organization's own logo and colour in the portal (Organization settings).
    ORG_BRANDING = "org_branding"


class DenyReason(enum.StrEnum):
    """Why a decision denies (checked in the order not_member, feature_disabled, missing_permission)."""

    NOT_MEMBER = "not_member"
    MISSING_PERMISSION = "missing_permission"
    FEATURE_DISABLED = "feature_disabled"


@dataclass(frozen=True, slots=True)
class Decision:
    """Allowed, or denied with a reason and the permission or feature that is missing."""

    allowed: bool
    reason: DenyReason | None = None
    missing: str | None = None

    @classmethod
    def allow(cls) -> Decision:
        """An allowing decision."""
        return cls(True)

    @classmethod
    def deny(cls, reason: DenyReason | str, missing: str | None = None) -> Decision:
        """A denying decision; `missing` names the permission or feature, for messages."""
        return cls(False, DenyReason(reason), None if missing is None else str(missing))

    def __bool__(self) -> bool:
        return self.allowed

    def describe(self) -> str:
        """One line for logs and `policy explain`, e.g. ``denied: feature_disabled (sso)``."""
        if self.allowed:
            return "allowed"
        if self.missing is None:
            return f"denied: {self.reason}"
        return f"denied: {self.reason} ({self.missing})"

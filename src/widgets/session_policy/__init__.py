"""Session policy: the organization's absolute and idle session timeouts (DESIGN §1, §5)."""

from policy import Feature, Permission
from portal.web.registry import Section, Widget
from widgets.session_policy.controller import SessionPolicyController

WIDGET = Widget(
    key="session_policy",
    title="Session policy",
    url="/ui/organization/session-policy",
    section=Section.ORGANIZATION,
    description="How long people stay signed in: absolute and idle timeouts.",
    read_permission=Permission.SESSION_POLICY_READ,
    manage_permissions=(Permission.SESSION_POLICY_MANAGE,),
    feature=Feature.SESSION_POLICY,
    handlers=(SessionPolicyController,),
)

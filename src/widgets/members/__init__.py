"""Members: the list, invitations, roles and removal (DESIGN §1), and the public invitation accept page."""

from policy import Permission
from portal.web.registry import Section, Widget
from widgets.members.controller import InvitationController, MembersController

WIDGET = Widget(
    key="members",
    title="Members",
    url="/ui/organization/members",
    section=Section.ORGANIZATION,
    description="Who is in the organization, with which roles; invitations.",
    read_permission=Permission.USERS_READ,
    manage_permissions=(Permission.USERS_INVITE, Permission.USERS_ROLE_CHANGE, Permission.USERS_DELETE),
    # InvitationController serves /invitations/accept, the public page the invitation email links to.
    handlers=(MembersController, InvitationController),
)

"""SCIM provisioning: an organization's SCIM directories, their tokens, group → role mapping (DESIGN §16).

The SCIM server itself is :mod:`portal.scim`; this widget manages it.
"""

from policy import Feature, Permission
from portal.web.registry import Section, Widget
from widgets.scim.controller import ScimController

WIDGET = Widget(
    key="scim",
    title="SCIM provisioning",
    url="/ui/organization/scim",
    section=Section.ORGANIZATION,
    description="Let your identity provider create, update and remove members and groups.",
    read_permission=Permission.SCIM_READ,
    manage_permissions=(Permission.SCIM_MANAGE,),
    feature=Feature.SCIM,
    handlers=(ScimController,),
)

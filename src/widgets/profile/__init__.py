"""Profile: the signed-in user's names, display name and email address (DESIGN §1)."""

from portal.web.registry import Section, Widget
from widgets.profile.controller import ProfileController

WIDGET = Widget(
    key="profile",
    title="Profile",
    url="/ui/account/profile",
    section=Section.ACCOUNT,
    description="Your name and email address.",
    handlers=(ProfileController,),
)

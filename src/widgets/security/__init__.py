"""Security: the signed-in user's passkeys and sessions, with a fresh confirmation for sensitive actions."""

from portal.web.registry import Section, Widget
from widgets.security.controller import SecurityController

WIDGET = Widget(
    key="security",
    title="Security",
    url="/ui/account/security",
    section=Section.ACCOUNT,
    description="Passkeys, and the browsers signed in to your account.",
    handlers=(SecurityController,),
)

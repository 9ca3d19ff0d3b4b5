"""Organization settings: name, display name and allowed email domains (DESIGN §1)."""

from policy import Permission
from portal.web.registry import Section, Widget
from widgets.settings.controller import SettingsController

WIDGET = Widget(
    key="settings",
    title="Organization settings",
    url="/ui/organization/settings",
    section=Section.ORGANIZATION,
    description="Name, display name and the email domains whose people may join.",
    read_permission=Permission.SETTINGS_READ,
    manage_permissions=(Permission.SETTINGS_MANAGE,),
    handlers=(SettingsController,),
)

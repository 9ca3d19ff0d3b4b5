"""Forms of the SCIM widget."""

from __future__ import annotations

import msgspec


class CreateDirectoryForm(msgspec.Struct):
    name: str = ""
    provider: str = "generic"


class GroupRolesForm(msgspec.Struct):
    #: Role keys ticked for the group (none: the group maps to no role); one ticked box arrives as a string.
    roles: list[str] | str = msgspec.field(default_factory=list)

    @property
    def role_list(self) -> list[str]:
        return [self.roles] if isinstance(self.roles, str) else list(self.roles)

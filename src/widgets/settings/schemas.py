"""Forms and output of the Organization settings widget.

Form fields are plain strings with defaults: the service validates them, so that bad input comes back as a
message next to its field. Unknown fields (a forged ``organization_id``) are ignored by msgspec.
"""

from __future__ import annotations

import msgspec


class SettingsForm(msgspec.Struct):
    """The settings form as the browser sent it."""

    name: str = ""
    display_name: str = ""
    #: Domains separated by new lines, commas or spaces.
    allowed_email_domains: str = ""


class OrganizationSettings(msgspec.Struct, frozen=True):
    """What the widget shows about the active organization."""

    id: str
    name: str
    display_name: str
    allowed_email_domains: list[str]
    #: Of the allowed domains, those the organization has verified by DNS (Domains widget).
    verified_domains: frozenset[str] = frozenset()


class ColorForm(msgspec.Struct):
    """Issue 14: the branding colour form (``#rrggbb``; empty resets to the app's colour)."""

    primary_color: str = ""

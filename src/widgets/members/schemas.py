"""Forms and output of the Members widget.

Form fields are plain strings (roles: one string or several) with defaults: the service validates them, so
that bad input comes back as a message next to its field. Unknown fields (a forged ``organization_id``) are
ignored by msgspec.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

#: A checkbox group posts one value as a string and several as a list.
Roles = list[str] | str


class InviteForm(msgspec.Struct):
    """Invite one or several people."""

    #: Addresses separated by new lines, commas, semicolons or spaces.
    emails: str = ""
    roles: Roles = msgspec.field(default_factory=list)
    #: A random id rendered into the form: submitting the same form twice sends the invitations once.
    submission_id: str = ""


class RolesForm(msgspec.Struct):
    """A member's new roles."""

    roles: Roles = msgspec.field(default_factory=list)
    #: ``list`` when the form was the inline one on the members table: go back there afterwards.
    back: str = ""


class RemoveForm(msgspec.Struct):
    """Removing a member. A browser must send ``confirm=yes`` (the confirmation page's button)."""

    confirm: str = ""


class AcceptForm(msgspec.Struct):
    """Accepting an invitation from its page."""

    token: str = ""
    #: Set by "Sign out and continue" when another account is signed in.
    switch_account: str = ""


class MemberQuery(msgspec.Struct, frozen=True):
    """The list's search, filters and position, from the query string."""

    q: str = ""
    role: str = ""
    #: ``""`` (members and pending invitations), ``active`` or ``invited``.
    status: str = ""
    after: str = ""
    before: str = ""


class Member(msgspec.Struct, frozen=True):
    """One row of the members list, or the member page."""

    id: str
    user_id: str
    name: str
    email: str
    roles: list[str]
    status: str
    source: str
    joined: datetime


class PendingInvitation(msgspec.Struct, frozen=True):
    """An invitation that has been neither accepted nor revoked (it may have expired)."""

    id: str
    email: str
    roles: list[str]
    invited_by: str
    created_at: datetime
    expires_at: datetime
    expired: bool


class MemberPage(msgspec.Struct, frozen=True):
    """What the list shows: members (or invitations) of one page and the cursors around it."""

    members: list[Member]
    invitations: list[PendingInvitation]
    #: More pending invitations exist than the summary above the members shows.
    more_invitations: bool = False
    next_cursor: str | None = None
    prev_cursor: str | None = None


class InviteResult(msgspec.Struct, frozen=True):
    """Invitations created by one form, with the clear tokens for the emails (never stored)."""

    invitations: list[tuple[str, str, str]]  # (invitation id, email, token)
    #: The same form was submitted before: nothing new was created or sent.
    repeated: bool = False


class InvitationView(msgspec.Struct, frozen=True):
    """The accept page's view of an invitation."""

    id: str
    organization_id: str
    organization_name: str
    email: str
    roles: list[str]
    invited_by: str
    expires_at: datetime
    #: ``open``, ``expired``, ``revoked``, ``accepted`` or ``replaced`` (an old link of a resent invitation).
    state: str

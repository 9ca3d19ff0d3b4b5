"""Forms and output of the Profile widget.

Every form field is a plain string with a default: the service validates it, so that bad input comes back
as a message next to its field rather than a framework 400. Unknown fields (a forged ``user_id``) are
ignored by msgspec.
"""

from __future__ import annotations

import msgspec


class ProfileForm(msgspec.Struct):
    """The profile form as the browser sent it."""

    given_name: str = ""
    family_name: str = ""
    display_name: str = ""


class EmailChangeForm(msgspec.Struct):
    """Step 1 of an email change: the new address."""

    new_email: str = ""


class EmailCodeForm(msgspec.Struct):
    """Step 2 of an email change: the code sent to the new address."""

    challenge_id: str = ""
    code: str = ""


class Profile(msgspec.Struct, frozen=True):
    """What the profile page shows about the signed-in user."""

    email: str
    email_verified: bool
    given_name: str
    family_name: str
    display_name: str


class PendingEmailChange(msgspec.Struct, frozen=True):
    """An email change waiting for its code."""

    challenge_id: str
    new_email: str
    #: The code can no longer be used; the user should ask for a new one.
    expired: bool = False

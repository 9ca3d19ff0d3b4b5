"""Forms, JSON bodies and views of the Security widget.

Form fields are plain strings with defaults: the service validates them, so bad input comes back as a
message next to its field rather than a framework 400. Unknown fields (a forged ``user_id``) are ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class RenameForm(msgspec.Struct):
    """A passkey's new name."""

    name: str = ""


class ConfirmForm(msgspec.Struct):
    """Ask for a confirmation code (``challenge_id`` empty) or enter one, before ``action``."""

    action: str = ""
    challenge_id: str = ""
    code: str = ""


class CredentialBody(msgspec.Struct):
    """What ``passkeys.js`` posts: the browser's ``PublicKeyCredential.toJSON()`` (and, to confirm, the action)."""

    credential: dict[str, Any]
    action: str = ""


class SessionView(msgspec.Struct, frozen=True):
    """One live session of the user, as the list shows it."""

    id: str
    #: ``Chrome 131 on macOS``.
    device: str
    ip: str
    created_at: datetime
    last_seen_at: datetime
    #: How it signed in: ``an email code``, ``a passkey``…
    method: str
    current: bool


class PasskeyView(msgspec.Struct, frozen=True):
    """One of the user's passkeys."""

    id: str
    name: str
    #: May be synced between devices by a password manager (backup eligible); else bound to one device.
    synced: bool
    created_at: datetime
    last_used_at: datetime | None
    #: The password manager or platform its AAGUID names, if well known.
    provider: str | None = None

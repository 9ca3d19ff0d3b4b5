"""Audit log inputs and views."""

from __future__ import annotations

from datetime import datetime

import msgspec


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """The filter form (a GET query): actor email (part of it), action, first and last day (YYYY-MM-DD)."""

    actor: str = ""
    action: str = ""
    since: str = ""
    until: str = ""
    #: The page's cursor (opaque), from an "Older entries" link.
    cursor: str = ""


class Entry(msgspec.Struct, frozen=True):
    """One audit event as the widget shows it."""

    id: str
    at: datetime
    action: str
    sentence: str
    actor: str
    target: str
    ip: str
    details: dict[str, object]


class Page(msgspec.Struct, frozen=True):
    """One page of entries, newest first; ``next_cursor`` is None on the last page."""

    entries: list[Entry]
    next_cursor: str | None

"""Errors shared across the portal."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Bad input for one field; ``field`` names it so a form or CLI can show the message next to it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

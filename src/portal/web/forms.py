"""What every widget's form handling shares: field errors and the characters names may not hold."""

from __future__ import annotations

#: Bidi embeddings, overrides and isolates: invisible, and used to make a name read as something else.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class FormErrors(Exception):
    """Bad input or a refused change: a message per form field. Nothing has been saved."""

    def __init__(self, errors: dict[str, str], status_code: int = 400) -> None:
        self.errors = errors
        self.status_code = status_code
        super().__init__(", ".join(f"{k}: {v}" for k, v in errors.items()))

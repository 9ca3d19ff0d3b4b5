"""Setup guides: Markdown files that walk an IT admin through their identity provider's screens (DESIGN §15, §16).

A widget keeps its guides in ``<package>/guides/<key>.md``; an app owner overrides one, or adds another, with
a file of the same name in ``PORTAL_GUIDES_DIR/<kind>/`` (``kind`` is ``sso`` or ``scim``). A guide starts with
optional front matter, then Markdown::

    ---
    title: Okta
    protocol: saml
    order: 10
    ---
    In Okta, open **Applications → Create App Integration** and paste {{ acs_url }} as the Single sign-on URL.

``{{ name }}`` placeholders are filled with the connection's own values: in running text as the value with a
Copy button, in code as the plain value. Rendering uses markdown-it-py with raw HTML turned off, so a guide
cannot inject markup, and unsafe link schemes (``javascript:``) are not linked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from html import escape
from itertools import count
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z][a-z0-9_]*)\s*\}\}")
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_MISSING = '<em class="muted">(not set yet)</em>'


@dataclass(frozen=True, slots=True)
class Guide:
    """One guide: ``key`` is its file name without ``.md``; ``meta`` holds the other front-matter fields."""

    key: str
    title: str
    body: str
    order: int = 100
    meta: Mapping[str, str] = field(default_factory=dict)
    #: Where the guide came from (the packaged file or the override), for error messages.
    source: str = ""

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(_PLACEHOLDER.findall(self.body))


def parse(key: str, text: str, source: str = "") -> Guide:
    """A guide from its file text; the title defaults to the key."""
    meta: dict[str, str] = {}
    text = text.replace("\r\n", "\n")
    match = _FRONT_MATTER.match(text)
    if match:
        for line in match.group(1).splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip():
                meta[name.strip().lower()] = value.strip()
        text = text[match.end() :]
    title = meta.pop("title", "") or key.replace("-", " ").replace("_", " ").title()
    try:
        order = int(meta.pop("order", "100"))
    except ValueError:
        order = 100
    return Guide(key=key, title=title, body=text, order=order, meta=meta, source=source)


def _read_dir(directory: Path) -> dict[str, Guide]:
    guides: dict[str, Guide] = {}
    if not directory.is_dir():
        return guides
    for path in sorted(directory.glob("*.md")):
        if _KEY.match(path.stem):
            guides[path.stem] = parse(path.stem, path.read_text(encoding="utf-8"), str(path))
    return guides


def load(packaged: Path, kind: str, override_dir: str | None) -> list[Guide]:
    """The packaged guides with the app owner's overrides and additions, in display order."""
    guides = _read_dir(packaged)
    if override_dir:
        guides.update(_read_dir(Path(override_dir) / kind))
    return sorted(guides.values(), key=lambda guide: (guide.order, guide.title.lower()))


def find(guides: Sequence[Guide], key: str) -> Guide | None:
    return next((guide for guide in guides if guide.key == key), None)


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    # "js-default": CommonMark with tables and strikethrough, html off, links validated.
    return MarkdownIt("js-default", {"html": False, "linkify": False, "typographer": False})


def render(guide: Guide, values: Mapping[str, str], *, id_prefix: str = "guide") -> Markup:
    """The guide as safe HTML, its placeholders filled from ``values`` (missing ones say "not set yet")."""
    ids = count(1)
    md = _markdown()
    env: dict[str, Any] = {}
    tokens = md.parse(guide.body, env)

    def copyable(name: str) -> str:
        value = values.get(name)
        if value is None or value == "":
            return _MISSING
        element = f"{id_prefix}-{name}-{next(ids)}"
        label = escape(name.replace("_", " "))
        return (
            f'<span class="copyable"><code id="{element}">{escape(value)}</code> '
            f'<button type="button" class="copy-button" data-copy="{element}" aria-label="Copy {label}">'
            "Copy</button></span>"
        )

    def plain(text: str) -> str:
        return _PLACEHOLDER.sub(lambda match: values.get(match.group(1)) or "(not set yet)", text)

    # Fill placeholders in code with plain values before rendering (the renderer escapes them) ...
    for token in tokens:
        if token.type in ("fence", "code_block"):
            token.content = plain(token.content)
        for child in token.children or ():
            if child.type == "code_inline":
                child.content = plain(child.content)
    html = md.renderer.render(tokens, md.options, env)
    # ... and in running text after it: placeholders survive escaping unchanged.
    # markdown-it escaped everything (html off) and copyable() escapes each value it inserts.
    return Markup(_PLACEHOLDER.sub(lambda match: copyable(match.group(1)), html))  # noqa: S704

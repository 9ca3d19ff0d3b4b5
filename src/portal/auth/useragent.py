"""Browser and operating system from a User-Agent header, for people reading a list of their sessions.

Deliberately small: the browsers and systems people actually sign in with, in the order that tells them
apart (every Chromium browser also says "Chrome" and "Safari"; Chrome on iOS says "CriOS"). Anything else
shows its first product token (``curl 8.5``), so an unusual client is still recognisable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: (browser name, the token that identifies it) in the order they must be tried.
_BROWSERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Edge", re.compile(r"\b(?:Edg|EdgA|EdgiOS|Edge)/(\d+)")),
    ("Opera", re.compile(r"\b(?:OPR|OPT|Opera)/(\d+)")),
    ("Samsung Internet", re.compile(r"\bSamsungBrowser/(\d+)")),
    ("Firefox", re.compile(r"\b(?:Firefox|FxiOS)/(\d+)")),
    ("Chrome", re.compile(r"\b(?:HeadlessChrome|Chrome|CriOS|Chromium)/(\d+)")),
    ("Safari", re.compile(r"\bVersion/(\d+)(?:[.\d]*)(?: Mobile/\S+)? Safari/")),
)
_SYSTEMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("iOS", re.compile(r"\b(?:iPhone|iPad|iPod)\b")),
    ("Android", re.compile(r"\bAndroid\b")),
    ("Windows", re.compile(r"\bWindows\b")),
    ("ChromeOS", re.compile(r"\bCrOS\b")),
    ("macOS", re.compile(r"\b(?:Macintosh|Mac OS X)\b")),
    ("Linux", re.compile(r"\b(?:Linux|X11|Ubuntu|Fedora)\b")),
)
_PRODUCT = re.compile(r"^([A-Za-z][\w.-]{0,40})/(\d+(?:\.\d+)?)")


@dataclass(frozen=True, slots=True)
class Device:
    """What a person would call the browser and the system (``None`` when the header does not say)."""

    browser: str | None
    version: str | None
    system: str | None

    def describe(self) -> str:
        """``Chrome 131 on macOS``, ``Firefox on Linux``, ``Unknown browser``."""
        browser = self.browser or "Unknown browser"
        if self.version:
            browser = f"{browser} {self.version}"
        return f"{browser} on {self.system}" if self.system else browser


def parse(user_agent: str) -> Device:
    """The browser (with its major version) and the operating system named in ``user_agent``."""
    ua = user_agent.strip()[:500]
    system = next((name for name, pattern in _SYSTEMS if pattern.search(ua)), None)
    for name, pattern in _BROWSERS:
        match = pattern.search(ua)
        if match:
            return Device(name, match.group(1), system)
    if not ua.startswith("Mozilla/"):
        product = _PRODUCT.match(ua)
        if product:
            return Device(product.group(1), product.group(2), system)
    return Device(None, None, system)

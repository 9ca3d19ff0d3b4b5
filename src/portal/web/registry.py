"""The widget registry: the one place that knows every widget (DESIGN §1, §2).

Each package under ``src/widgets/`` declares ``WIDGET = Widget(...)``; :func:`discover` collects them.
Navigation, the home cards, the guard and ``portal policy explain`` all read this registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from types import ModuleType
from typing import Any

from policy import Decision, Feature, Permission, PolicyEngine


class Section(StrEnum):
    ORGANIZATION = "organization"
    ACCOUNT = "account"


@dataclass(frozen=True, slots=True)
class Widget:
    """One widget's entry: who may open it, what it needs, where it lives."""

    key: str
    title: str
    url: str
    section: Section
    description: str = ""
    #: None for account widgets, which every signed-in user may open.
    read_permission: Permission | None = None
    manage_permissions: tuple[Permission, ...] = ()
    #: The organization feature the widget needs, beyond what the policy files require of its permissions.
    feature: Feature | None = None
    #: The Litestar controllers (or route handlers) that serve it.
    handlers: tuple[Any, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.url.startswith("/ui/"):
            raise ValueError(f"widget {self.key!r}: url must start with /ui/")
        if self.section is Section.ORGANIZATION and self.read_permission is None:
            raise ValueError(f"widget {self.key!r}: organization widgets need a read permission")
        if self.section is Section.ACCOUNT and (
            self.read_permission or self.manage_permissions or self.feature
        ):
            raise ValueError(f"widget {self.key!r}: account widgets are open to every signed-in user")

    def decide(
        self,
        engine: PolicyEngine,
        roles: Iterable[str] | None,
        features: Iterable[str],
        permission: Permission,
    ) -> Decision:
        """Decide ``permission`` in this widget's context (its feature is required too)."""
        return engine.decide(roles, features, permission, requires=self.feature)

    def can_open(
        self, engine: PolicyEngine, roles: Iterable[str] | None, features: Iterable[str]
    ) -> Decision:
        """Whether a user with ``roles`` in an organization with ``features`` may open the widget."""
        if self.read_permission is None:
            return Decision.allow()
        return self.decide(engine, roles, features, self.read_permission)


class WidgetRegistry:
    """Widgets by key, in registration order; keys and URLs are unique."""

    def __init__(self, widgets: Iterable[Widget] = ()) -> None:
        self._widgets: dict[str, Widget] = {}
        for widget in widgets:
            self.register(widget)

    def register(self, widget: Widget) -> None:
        """Add a widget; a second widget with the same key or URL is a programming error."""
        if widget.key in self._widgets:
            raise ValueError(f"widget key {widget.key!r} is registered twice")
        if any(w.url == widget.url for w in self._widgets.values()):
            raise ValueError(f"widget url {widget.url!r} is registered twice")
        self._widgets[widget.key] = widget

    def __iter__(self) -> Iterator[Widget]:
        return iter(self._widgets.values())

    def __len__(self) -> int:
        return len(self._widgets)

    def get(self, key: str) -> Widget:
        """The widget with ``key``; KeyError if none."""
        return self._widgets[key]

    def section(self, section: Section) -> list[Widget]:
        """The widgets of one section, in registration order."""
        return [w for w in self._widgets.values() if w.section is section]

    def visible(
        self, engine: PolicyEngine, roles: Iterable[str] | None, features: Iterable[str]
    ) -> list[Widget]:
        """The widgets this user may open in this organization: the same decisions the guard makes."""
        role_list = None if roles is None else list(roles)
        feature_list = list(features)
        return [w for w in self._widgets.values() if w.can_open(engine, role_list, feature_list)]

    def handlers(self) -> list[Any]:
        """Every widget's route handlers, for the app factory."""
        return [handler for widget in self._widgets.values() for handler in widget.handlers]


def discover(package: ModuleType | str = "widgets") -> WidgetRegistry:
    """Import each sub-package of ``package`` and register its ``WIDGET``; order is the package's ``ORDER``."""
    root = importlib.import_module(package) if isinstance(package, str) else package
    found: dict[str, Widget] = {}
    for info in pkgutil.iter_modules(root.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{root.__name__}.{info.name}")
        widget = getattr(module, "WIDGET", None)
        if isinstance(widget, Widget):
            found[widget.key] = widget
    order: list[str] = list(getattr(root, "ORDER", ()))
    ranked = sorted(found, key=lambda key: (order.index(key) if key in order else len(order), key))
    return WidgetRegistry(found[key] for key in ranked)

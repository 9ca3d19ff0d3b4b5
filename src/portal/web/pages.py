"""Rendering portal pages: the shared layout context (branding, navigation, ``can``, flash)."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.response import Template

from policy import Feature, Permission, PolicyEngine
from portal.core.settings import Settings
from portal.web import branding, flash
from portal.web.guard import auth_of
from portal.web.registry import Section, Widget, WidgetRegistry


def settings_of(request: Request[Any, Any, Any]) -> Settings:
    """The app's settings (built once by ``create_app``)."""
    settings: Settings = request.app.state.settings
    return settings


def policy_of(request: Request[Any, Any, Any]) -> PolicyEngine:
    """The app's policy engine."""
    policy: PolicyEngine = request.app.state.policy
    return policy


def render(
    request: Request[Any, Any, Any],
    template: str,
    *,
    status_code: int = 200,
    widget: Widget | None = None,
    **context: Any,
) -> Template:
    """A page in the portal layout. ``can(permission)`` asks the same policy engine the guard asks."""
    state = request.app.state
    settings: Settings = state.settings
    policy: PolicyEngine = state.policy
    registry: WidgetRegistry = state.registry
    auth = auth_of(request)
    nav: dict[str, list[Widget]] = {Section.ORGANIZATION.value: [], Section.ACCOUNT.value: []}
    if auth is not None:
        for item in auth.visible(policy, registry):
            nav[item.section.value].append(item)

    def can(permission: Permission | str, feature: Feature | None = None) -> bool:
        if auth is None:
            return False
        needed = feature if feature is not None else (widget.feature if widget else None)
        return bool(auth.decide(policy, Permission(permission), needed))

    message = flash.read(request, settings)
    base = {
        # Issue 14: the active organization's branding where org_branding is on (loaded by the middleware).
        "brand": request.scope.get("state", {}).get("brand") or branding.app_brand(settings),
        "auth": auth,
        "nav": nav,
        "widget": widget,
        "can": can,
        "flash": message,
        "path": request.url.path,
    }
    cookies = [flash.clear_cookie(settings)] if message else []
    return Template(template, context={**base, **context}, status_code=status_code, cookies=cookies)

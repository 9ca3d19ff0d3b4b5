from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from policy import DenyReason, Feature, Permission, PolicyEngine
from portal.web.registry import Section, Widget, WidgetRegistry, discover

ALL = {f.value for f in Feature}


def org_widget(key: str = "sso", **overrides: object) -> Widget:
    fields: dict[str, object] = {
        "key": key,
        "title": key.title(),
        "url": f"/ui/organization/{key}",
        "section": Section.ORGANIZATION,
        "read_permission": Permission.SSO_READ,
        "manage_permissions": (Permission.SSO_MANAGE,),
        "feature": Feature.SSO,
    }
    fields.update(overrides)
    return Widget(**fields)  # type: ignore[arg-type]


def test_keys_and_urls_are_unique() -> None:
    registry = WidgetRegistry([org_widget("sso")])
    with pytest.raises(ValueError, match="key 'sso' is registered twice"):
        registry.register(org_widget("sso", url="/ui/organization/other"))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(org_widget("other", url="/ui/organization/sso"))


def test_entries_are_validated() -> None:
    with pytest.raises(ValueError, match="must start with /ui/"):
        org_widget(url="/admin/sso")
    with pytest.raises(ValueError, match="need a read permission"):
        org_widget(read_permission=None)
    with pytest.raises(ValueError, match="open to every signed-in user"):
        Widget("me", "Me", "/ui/account/me", Section.ACCOUNT, read_permission=Permission.USERS_READ)


def test_visibility_uses_the_policy_and_the_widget_feature(policy: PolicyEngine) -> None:
    domains = org_widget(
        "domains",
        read_permission=Permission.SETTINGS_READ,
        manage_permissions=(Permission.SETTINGS_MANAGE,),
        feature=Feature.DOMAIN_VERIFICATION,
    )
    settings = org_widget("settings", read_permission=Permission.SETTINGS_READ, feature=None)
    profile = Widget("profile", "Profile", "/ui/account/profile", Section.ACCOUNT)
    registry = WidgetRegistry([settings, domains, org_widget("sso"), profile])

    assert [w.key for w in registry.visible(policy, ["admin"], ALL)] == [
        "settings",
        "domains",
        "sso",
        "profile",
    ]
    assert [w.key for w in registry.visible(policy, ["member"], ALL)] == ["settings", "domains", "profile"]
    assert [w.key for w in registry.visible(policy, ["admin"], ALL - {"domain_verification"})] == [
        "settings",
        "sso",
        "profile",
    ]
    assert [w.key for w in registry.visible(policy, None, ALL)] == ["profile"]
    denied = domains.can_open(policy, ["admin"], set())
    assert denied.reason is DenyReason.FEATURE_DISABLED and denied.missing == "domain_verification"
    assert [w.key for w in registry.section(Section.ACCOUNT)] == ["profile"]


def test_discover_collects_widget_packages_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "fakewidgets"
    for key in ("zeta", "alpha", "beta"):
        (root / key).mkdir(parents=True)
        (root / key / "__init__.py").write_text(
            textwrap.dedent(
                f"""
                from portal.web.registry import Section, Widget
                WIDGET = Widget("{key}", "{key.title()}", "/ui/account/{key}", Section.ACCOUNT)
                """
            )
        )
    (root / "helpers").mkdir()
    (root / "helpers" / "__init__.py").write_text("")  # a package without WIDGET is not a widget
    (root / "__init__.py").write_text('ORDER = ("beta",)\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = discover("fakewidgets")
    assert [w.key for w in registry] == ["beta", "alpha", "zeta"]
    sys.modules.pop("fakewidgets", None)

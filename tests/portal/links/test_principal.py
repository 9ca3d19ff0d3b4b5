"""The setup-link principal decides like a member whose permissions are fixed by the intent (issue 14)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from policy import DenyReason, Feature, Permission, PolicyEngine
from portal.links import service
from portal.web.guard import Auth
from portal.web.registry import WidgetRegistry


def principal(intent: str, features: frozenset[str]) -> Auth:
    grant = service.SetupGrant("lnk_x", service.INTENTS[intent], datetime(2026, 12, 3, tzinfo=UTC))
    organization = {"id": "org_x", "features": sorted(features)}
    return Auth({"id": "lnk_x"}, {"id": "lnk_x"}, organization, None, features, [], link=grant)


ALL = frozenset(f.value for f in Feature)


@pytest.mark.parametrize("intent", list(service.INTENTS))
@pytest.mark.parametrize("permission", list(Permission))
def test_exactly_the_intent_permissions(policy: PolicyEngine, intent: str, permission: Permission) -> None:
    decision = principal(intent, ALL).decide(policy, permission)
    assert bool(decision) is (permission in service.INTENTS[intent].permissions)
    if not decision:
        assert decision.reason is DenyReason.MISSING_PERMISSION and decision.missing == permission.value


@pytest.mark.parametrize("intent", ["sso", "scim"])
def test_the_features_still_apply(policy: PolicyEngine, intent: str) -> None:
    for permission in service.INTENTS[intent].permissions:
        decision = principal(intent, frozenset()).decide(policy, permission)
        assert decision.reason is DenyReason.FEATURE_DISABLED and decision.missing == intent


def test_a_widget_feature_applies_too(policy: PolicyEngine) -> None:
    auth = principal("domain_verification", frozenset())
    assert auth.decide(policy, Permission.SETTINGS_MANAGE)  # settings permissions need no feature…
    denied = auth.decide(policy, Permission.SETTINGS_MANAGE, Feature.DOMAIN_VERIFICATION)  # …Domains does
    assert denied.reason is DenyReason.FEATURE_DISABLED


@pytest.mark.parametrize("intent", list(service.INTENTS))
def test_only_the_intent_widget_is_visible(
    policy: PolicyEngine, registry: WidgetRegistry, intent: str
) -> None:
    visible = [w.key for w in principal(intent, ALL).visible(policy, registry)]
    # The SSO and SCIM widgets live on other branches; when present, each is the only one visible.
    expected = (
        [service.INTENTS[intent].widget]
        if service.INTENTS[intent].widget in {w.key for w in registry}
        else []
    )
    assert visible == expected


def test_paths_outside_the_intent() -> None:
    grant = service.SetupGrant("lnk_x", service.INTENTS["sso"], datetime(2026, 12, 3, tzinfo=UTC))
    for path in ("/ui/organization/sso", "/ui/organization/sso/connections/x", "/setup/t", "/ui/", "/logout"):
        assert grant.allows_path(path), path
    for path in (
        "/ui/organization/ssox",
        "/ui/organization/scim",
        "/ui/organization/domains",
        "/login",
        "/oauth/authorize",
        "/ui/account/profile",
        "/sso/saml/x/acs",
        "/ui/organizations/switch",
    ):
        assert not grant.allows_path(path), path

"""Decisions over the real policies/ files, app-owner roles, reload and the decision cache."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import casbin
import pytest

import policy.engine
from policy import Decision, DenyReason, Feature, Permission, PolicyEngine, PolicyError

POLICIES = Path(__file__).parents[2] / "policies"

# The expected matrix, written out independently of the files under test.
MEMBER_GRANTS = {Permission.SETTINGS_READ, Permission.USERS_READ}
FEATURE_OF = {
    Permission.SSO_READ: Feature.SSO,
    Permission.SSO_MANAGE: Feature.SSO,
    Permission.SCIM_READ: Feature.SCIM,
    Permission.SCIM_MANAGE: Feature.SCIM,
    Permission.SESSION_POLICY_READ: Feature.SESSION_POLICY,
    Permission.SESSION_POLICY_MANAGE: Feature.SESSION_POLICY,
    Permission.AUDIT_READ: Feature.AUDIT_LOG,  # issue 11
}
FEATURE_SUBSETS = [
    frozenset(subset) for size in range(len(Feature) + 1) for subset in itertools.combinations(Feature, size)
]


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.from_dir(POLICIES)


def owner_dir(tmp_path: Path, **files: str) -> Path:
    """A policy directory with the real model.conf and policy.csv plus the owner's extra files."""
    directory = tmp_path / "policies"
    directory.mkdir()
    shutil.copy(POLICIES / "model.conf", directory)
    shutil.copy(POLICIES / "policy.csv", directory)
    for name, text in files.items():
        (directory / f"{name}.csv").write_text(text)
    return directory


@pytest.mark.parametrize("features", FEATURE_SUBSETS, ids=lambda s: "+".join(sorted(s)) or "none")
@pytest.mark.parametrize("permission", list(Permission))
@pytest.mark.parametrize("role", ["admin", "member"])
def test_permission_matrix(
    engine: PolicyEngine, role: str, permission: Permission, features: frozenset[str]
) -> None:
    decision = engine.decide([role], features, permission)

    feature = FEATURE_OF.get(permission)
    if feature is not None and feature not in features:
        expected = Decision(False, DenyReason.FEATURE_DISABLED, feature.value)
    elif role == "admin" or permission in MEMBER_GRANTS:
        expected = Decision(True)
    else:
        expected = Decision(False, DenyReason.MISSING_PERMISSION, permission.value)
    assert decision == expected
    assert bool(decision) is expected.allowed


@pytest.mark.parametrize("role", ["admin", "member"])
def test_domains_widget_requires_domain_verification(engine: PolicyEngine, role: str) -> None:
    on = engine.decide([role], ["domain_verification"], Permission.SETTINGS_READ, Feature.DOMAIN_VERIFICATION)
    off = engine.decide([role], ["sso", "scim"], Permission.SETTINGS_READ, Feature.DOMAIN_VERIFICATION)

    assert on == Decision.allow()
    assert off == Decision.deny(DenyReason.FEATURE_DISABLED, "domain_verification")
    # Organization settings uses the same permission and needs no feature.
    assert engine.decide([role], [], Permission.SETTINGS_READ)


def test_missing_feature_named_is_first_in_sorted_order(engine: PolicyEngine) -> None:
    decision = engine.decide(["admin"], [], Permission.SSO_READ, Feature.DOMAIN_VERIFICATION)

    assert decision == Decision.deny(DenyReason.FEATURE_DISABLED, "domain_verification")
    decision = engine.decide(
        ["admin"], ["domain_verification"], Permission.SSO_READ, Feature.DOMAIN_VERIFICATION
    )
    assert decision == Decision.deny(DenyReason.FEATURE_DISABLED, "sso")


def test_not_a_member_is_denied_before_anything_else(engine: PolicyEngine) -> None:
    assert engine.decide(None, list(Feature), Permission.SETTINGS_READ) == Decision.deny(
        DenyReason.NOT_MEMBER
    )
    assert engine.decide(None, [], Permission.SSO_READ).reason is DenyReason.NOT_MEMBER


def test_feature_is_checked_before_permission(engine: PolicyEngine) -> None:
    assert engine.decide(["member"], [], Permission.SSO_MANAGE) == Decision.deny(
        DenyReason.FEATURE_DISABLED, "sso"
    )


@pytest.mark.parametrize(
    "roles", [[], ["ghost"], ("ghost", "nobody")], ids=["no-role", "ghost", "two-ghosts"]
)
def test_member_without_known_roles_has_no_permission(engine: PolicyEngine, roles: list[str]) -> None:
    for permission in Permission:
        assert engine.decide(roles, list(Feature), permission) == Decision.deny(
            DenyReason.MISSING_PERMISSION, permission.value
        )


def test_unknown_role_beside_a_known_one_changes_nothing(engine: PolicyEngine) -> None:
    assert engine.decide(["ghost", "member"], [], Permission.USERS_READ)
    assert not engine.decide(["ghost", "member"], [], Permission.USERS_INVITE)
    assert engine.decide({"member", "admin"}, [], Permission.USERS_INVITE)


def test_unknown_features_are_ignored(engine: PolicyEngine) -> None:
    assert engine.decide(["admin"], ["sso", "teleport"], Permission.SSO_READ)
    assert engine.decide(["admin"], ["teleport"], Permission.SSO_READ) == Decision.deny(
        DenyReason.FEATURE_DISABLED, "sso"
    )


def test_a_bare_string_is_refused(engine: PolicyEngine) -> None:
    with pytest.raises(TypeError):
        engine.decide("admin", [], Permission.USERS_READ)
    with pytest.raises(TypeError):
        engine.decide(["admin"], "sso", Permission.SSO_READ)


def test_describe() -> None:
    assert Decision.allow().describe() == "allowed"
    assert Decision.deny("feature_disabled", "sso").describe() == "denied: feature_disabled (sso)"
    assert Decision.deny(DenyReason.MISSING_PERMISSION, Permission.SSO_READ).describe() == (
        "denied: missing_permission (sk_org_sso_read)"
    )
    assert Decision.deny(DenyReason.NOT_MEMBER).describe() == "denied: not_member"
    assert Decision.deny("feature_disabled", Feature.SSO).missing.__class__ is str


def test_roles_permissions_and_requirements(engine: PolicyEngine) -> None:
    assert engine.roles == ("admin", "member")
    assert engine.permissions_for("admin") == frozenset(Permission)
    assert engine.permissions_for("member") == frozenset(MEMBER_GRANTS)
    assert engine.permissions_for("ghost") == frozenset()
    for permission in Permission:
        expected = {FEATURE_OF[permission]} if permission in FEATURE_OF else set()
        assert engine.required_features(permission) == expected
    assert engine.directory == POLICIES


def test_grants_subset(engine: PolicyEngine) -> None:
    assert engine.grants_subset(["admin"], ["member"])
    assert engine.grants_subset(["admin"], ["admin", "member"])
    assert engine.grants_subset(["member"], ["member"])
    assert not engine.grants_subset(["member"], ["admin"])
    assert not engine.grants_subset([], ["member"])
    assert not engine.grants_subset(["ghost"], ["member"])
    assert engine.grants_subset([], [])
    assert engine.grants_subset(["member"], ["ghost"])  # an unknown role grants nothing


def test_app_owner_role_needs_no_code_change(tmp_path: Path) -> None:
    directory = owner_dir(tmp_path, roles="p, support, sk_org_users_read\n")
    engine = PolicyEngine.from_dir(directory)

    assert engine.roles == ("admin", "member", "support")
    assert engine.decide(["support"], [], Permission.USERS_READ) == Decision.allow()
    assert engine.decide(["support"], [], Permission.SETTINGS_READ) == Decision.deny(
        DenyReason.MISSING_PERMISSION, "sk_org_settings_read"
    )
    assert engine.grants_subset(["member"], ["support"])


def test_inheritance(tmp_path: Path) -> None:
    roles = (
        "p, support, sk_org_users_read\ng, lead, support\np, lead, sk_org_users_invite\ng, viewer, member\n"
    )
    engine = PolicyEngine.from_dir(owner_dir(tmp_path, roles=roles))

    assert engine.permissions_for("lead") == {Permission.USERS_READ, Permission.USERS_INVITE}
    assert engine.permissions_for("support") == {Permission.USERS_READ}
    assert engine.permissions_for("viewer") == MEMBER_GRANTS  # a role defined by a g row alone
    assert engine.decide(["lead"], [], Permission.USERS_READ)
    assert not engine.decide(["support"], [], Permission.USERS_INVITE)
    assert not engine.grants_subset(["support"], ["lead"])
    assert engine.roles == ("admin", "lead", "member", "support", "viewer")


def test_casbin_matchers_decide(tmp_path: Path) -> None:
    # Owners may change the matchers: here every role also gets member's permissions, and SSO needs nothing.
    directory = owner_dir(tmp_path, roles="p, support, sk_org_users_invite\n")
    model = (directory / "model.conf").read_text()
    model = model.replace("g(r.role, p.role)", '(g(r.role, p.role) || p.role == "member")')
    model = model.replace("r2.feature == p2.feature", 'r2.feature == p2.feature && p2.feature != "sso"')
    (directory / "model.conf").write_text(model)
    engine = PolicyEngine.from_dir(directory)

    assert engine.permissions_for("support") == {Permission.USERS_INVITE, *MEMBER_GRANTS}
    assert engine.decide(["support"], [], Permission.SETTINGS_READ)
    assert engine.required_features(Permission.SSO_READ) == frozenset()
    assert engine.decide(["admin"], [], Permission.SSO_READ)
    assert not engine.decide(["admin"], [], Permission.SCIM_READ)


def test_reload_picks_up_edits_and_drops_the_cache(tmp_path: Path) -> None:
    directory = owner_dir(tmp_path, roles="p, support, sk_org_users_read\n")
    engine = PolicyEngine.from_dir(directory)
    assert engine.decide(["support"], [], Permission.USERS_READ)  # now cached

    (directory / "roles.csv").write_text("p, support, sk_org_settings_read\n")
    assert engine.decide(["support"], [], Permission.USERS_READ)  # still the loaded policy
    engine.reload()

    assert engine.decide(["support"], [], Permission.USERS_READ) == Decision.deny(
        DenyReason.MISSING_PERMISSION, "sk_org_users_read"
    )
    assert engine.decide(["support"], [], Permission.SETTINGS_READ)


def test_reload_of_a_broken_file_keeps_the_old_policy(tmp_path: Path) -> None:
    directory = owner_dir(tmp_path, roles="p, support, sk_org_users_read\n")
    engine = PolicyEngine.from_dir(directory)
    (directory / "roles.csv").write_text("p, support, sk_org_users_read\np, support, sk_org_users_write\n")

    with pytest.raises(PolicyError) as raised:
        engine.reload()

    where = directory / "roles.csv"
    assert [str(problem) for problem in raised.value.problems] == [
        f"{where}:2: unknown permission 'sk_org_users_write', did you mean sk_org_users_invite?"
    ]
    assert str(raised.value) == str(raised.value.problems[0])
    assert engine.roles == ("admin", "member", "support")
    assert engine.decide(["support"], [], Permission.USERS_READ)
    assert not engine.decide(["support"], [], Permission.USERS_INVITE)


def test_from_dir_refuses_a_broken_directory(tmp_path: Path) -> None:
    directory = owner_dir(tmp_path, roles="p, support\ng, lead, ghost\n")
    with pytest.raises(PolicyError) as raised:
        PolicyEngine.from_dir(directory)
    where = directory / "roles.csv"
    assert str(raised.value).splitlines() == [
        f"{where}:1: p row needs 2 fields (role, permission), got 1",
        f"{where}:2: role 'lead' grants no permission: give it p rows or a g row to a role with some",
        f"{where}:2: role 'ghost' grants no permission: give it p rows or a g row to a role with some",
    ]


def test_second_identical_decision_comes_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluated = []
    evaluate = PolicyEngine._evaluate

    def counting(*args: object) -> Decision:
        evaluated.append(args[1:])
        return evaluate(*args)

    monkeypatch.setattr(PolicyEngine, "_evaluate", staticmethod(counting))
    engine = PolicyEngine.from_dir(POLICIES)

    first = engine.decide(["member", "ghost"], ["sso", "teleport"], Permission.SSO_READ)
    second = engine.decide(("ghost", "member"), {"sso"}, Permission.SSO_READ)

    assert first is second
    assert first == Decision.deny(DenyReason.MISSING_PERMISSION, "sk_org_sso_read")
    assert evaluated == [(frozenset({"member"}), frozenset({"sso"}), Permission.SSO_READ, None)]
    engine.decide(["member"], ["sso"], Permission.SSO_READ, Feature.SSO)  # another key
    assert len(evaluated) == 2
    engine.reload()
    engine.decide(["member"], ["sso"], Permission.SSO_READ)
    assert len(evaluated) == 3


def test_casbin_is_asked_at_load_not_per_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    enforce = casbin.Enforcer.enforce

    def counting(self: casbin.Enforcer, *rvals: object) -> bool:
        calls.append(rvals)
        return bool(enforce(self, *rvals))

    monkeypatch.setattr(casbin.Enforcer, "enforce", counting)
    engine = PolicyEngine.from_dir(POLICIES)
    # Every (role, permission) and every (permission, feature) pair, once.
    assert len(calls) == 2 * len(Permission) + len(Permission) * len(Feature)

    calls.clear()
    for permission in Permission:
        engine.decide(["admin", "member"], ["sso"], permission)
    assert calls == []


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluated = []
    evaluate = PolicyEngine._evaluate

    def counting(*args: object) -> Decision:
        evaluated.append(args[1:])
        return evaluate(*args)

    monkeypatch.setattr(PolicyEngine, "_evaluate", staticmethod(counting))
    monkeypatch.setattr(policy.engine, "CACHE_LIMIT", 3)
    engine = PolicyEngine.from_dir(POLICIES)

    for permission in list(Permission)[:4]:  # the fourth finds the cache full and starts it over
        engine.decide(["admin"], [], permission)
    assert len(evaluated) == 4
    engine.decide(["admin"], [], Permission.USERS_INVITE)  # the fourth key: kept
    assert len(evaluated) == 4
    # The first key was dropped when the cache started over.
    engine.decide(["admin"], [], Permission.SETTINGS_READ)
    assert len(evaluated) == 5

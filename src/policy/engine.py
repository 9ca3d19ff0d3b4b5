"""The policy engine: do a member's roles, in an organization with these features, grant a permission?

How decisions are evaluated: Casbin interprets `policies/model.conf` and the rows, but it is asked once per
load, not once per request. At load the enforcer answers every (role in the files, permission) pair through
matcher ``m`` and every (permission, feature) pair through ``m2`` (see `check.compile_policy_dir`); a cold
decision is then a few set operations over those answers (4-7 us), and a cached one a dict lookup (1-2 us).
Asking Casbin live was measured (bench/policy.py) at 85-160 us per role `enforce` and 55-100 us per feature
`enforce` on this small model, because pycasbin re-parses the matcher on every call; a cold decision needs
one of each at least, against a 50 us budget. The matcher still decides; only roles named in the files can
grant anything, which is what the contract asks for anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .check import CompiledPolicy, PolicyError, compile_policy_dir
from .vocab import Decision, DenyReason, Feature, Permission

CACHE_LIMIT = 100_000  # decisions kept before the cache starts over; real traffic has few distinct keys

_KNOWN_FEATURES = frozenset(Feature)
_NOT_MEMBER = Decision.deny(DenyReason.NOT_MEMBER)
_ALLOW = Decision.allow()

_Key = tuple[frozenset[str], frozenset[str], Permission, Feature | None]


class _State:
    """One loaded policy and its decisions; reload() swaps the whole object, so readers never mix two."""

    __slots__ = ("cache", "compiled", "known_roles")

    def __init__(self, compiled: CompiledPolicy) -> None:
        self.compiled = compiled
        self.known_roles = frozenset(compiled.grants)
        self.cache: dict[_Key, Decision] = {}


class PolicyEngine:
    """Decisions over the policy files of one directory; see the module docstring for how they are made."""

    directory: Path

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._state = _State(_compile(self.directory))

    @classmethod
    def from_dir(cls, directory: str | Path) -> PolicyEngine:
        """Load and check `model.conf` and every ``*.csv`` in the directory; PolicyError lists any problem."""
        return cls(directory)

    def __repr__(self) -> str:
        return f"PolicyEngine({str(self.directory)!r}, roles={self.roles!r})"

    def decide(
        self,
        roles: Iterable[str] | None,
        features: Iterable[str],
        permission: Permission,
        requires: Feature | None = None,
    ) -> Decision:
        """Allow, or deny for the first check that fails: not_member, feature_disabled, missing_permission.

        `roles` None means not a member. `requires` is a feature the calling widget needs on top of the
        permission's own. Role and feature strings the policy does not know are ignored.
        """
        if roles is None:
            return _NOT_MEMBER
        if isinstance(roles, str) or isinstance(features, str):
            # A bare string would be read as a set of one-letter roles or features and quietly deny.
            raise TypeError("roles and features must be collections of strings, not a string")
        state = self._state
        known = state.known_roles.intersection(roles)
        key = (known, _KNOWN_FEATURES.intersection(features), permission, requires)
        cache = state.cache
        decision = cache.get(key)
        if decision is None:  # not `if not decision`: a denial is falsy
            decision = self._evaluate(state.compiled, *key)
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[key] = decision
        return decision

    def decide_granted(
        self,
        granted: frozenset[Permission],
        features: Iterable[str],
        permission: Permission,
        requires: Feature | None = None,
    ) -> Decision:
        """Like :meth:`decide` for a principal holding a fixed set of permissions instead of roles (a setup-link
        session): the same feature requirements apply, then the permission must be in ``granted``."""
        permission = Permission(permission)
        needed = self._state.compiled.requirements[permission]
        if requires is not None:
            needed = needed | {Feature(requires)}
        missing = needed.difference(_KNOWN_FEATURES.intersection(features))
        if missing:
            return Decision.deny(DenyReason.FEATURE_DISABLED, min(missing).value)
        if permission not in granted:
            return Decision.deny(DenyReason.MISSING_PERMISSION, permission.value)
        return _ALLOW

    @staticmethod
    def _evaluate(
        compiled: CompiledPolicy,
        roles: frozenset[str],
        features: frozenset[str],
        permission: Permission,
        requires: Feature | None,
    ) -> Decision:
        permission = Permission(permission)
        needed = compiled.requirements[permission]
        if requires is not None:
            needed = needed | {Feature(requires)}
        missing = needed.difference(features)
        if missing:
            return Decision.deny(DenyReason.FEATURE_DISABLED, min(missing).value)
        if roles.isdisjoint(compiled.granted_by[permission]):
            return Decision.deny(DenyReason.MISSING_PERMISSION, permission.value)
        return _ALLOW

    def reload(self) -> None:
        """Re-read and check the files and drop cached decisions; on PolicyError the old policy stays."""
        self._state = _State(_compile(self.directory))

    @property
    def roles(self) -> tuple[str, ...]:
        """The role keys the policy defines, sorted (for role pickers)."""
        return tuple(sorted(self._state.known_roles))

    def role_title(self, role: str) -> str:
        """The role's title from its ``role`` row, else the key itself."""
        found = self._state.compiled.titles.get(role)
        return found[0] if found else role

    def role_description(self, role: str) -> str:
        """The role's description from its ``role`` row, else the labels of what it grants."""
        found = self._state.compiled.titles.get(role)
        if found:
            return found[1]
        granted = sorted(self.permissions_for(role), key=lambda p: p.value)
        return "; ".join(self.permission_label(p) for p in granted) or "No permissions"

    def permission_label(self, permission: Permission | str) -> str:
        """The permission's label from its ``label`` row, else its key."""
        try:
            return self._state.compiled.labels.get(Permission(permission), str(Permission(permission).value))
        except ValueError:
            return str(permission)

    def permissions_for(self, role: str) -> frozenset[Permission]:
        """Everything the role grants, inherited permissions included; nothing for an unknown role."""
        return self._state.compiled.grants.get(role, frozenset())

    def required_features(self, permission: Permission) -> frozenset[Feature]:
        """The features an organization needs enabled for the permission to be usable."""
        return self._state.compiled.requirements[Permission(permission)]

    def grants_subset(self, granter_roles: Iterable[str], roles: Iterable[str]) -> bool:
        """True iff `granter_roles` hold every permission `roles` grant: giving them escalates nothing."""
        if isinstance(granter_roles, str) or isinstance(roles, str):
            raise TypeError("roles must be collections of strings, not a string")
        grants = self._state.compiled.grants
        wanted = _union(grants.get(role) for role in roles)
        return wanted <= _union(grants.get(role) for role in granter_roles)


def _union(sets: Iterable[frozenset[Permission] | None]) -> frozenset[Permission]:
    result: frozenset[Permission] = frozenset()
    for permissions in sets:
        if permissions:
            result |= permissions
    return result


def _compile(directory: Path) -> CompiledPolicy:
    compiled, problems = compile_policy_dir(directory)
    if problems or compiled is None:
        raise PolicyError(problems)
    return compiled

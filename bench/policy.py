"""Policy decision speed against DESIGN section 9: <= 5 us cached, <= 50 us cold, <= 50 us per navigation.

Run: .venv/bin/python bench/policy.py   (the last line printed is one JSON object)
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import casbin  # noqa: E402

from policy import Feature, Permission, PolicyEngine  # noqa: E402

POLICIES = ROOT / "policies"
TARGETS = {"cached_us": 5, "cold_us": 50, "navigation_us": 50}
BATCHES = 200

# What one page of the portal asks: each widget's read permission (with the Domains widget's extra
# feature) and the manage permissions the current page uses for its forms.
NAVIGATION = [
    (Permission.SETTINGS_READ, None),
    (Permission.USERS_READ, None),
    (Permission.SETTINGS_READ, Feature.DOMAIN_VERIFICATION),
    (Permission.SSO_READ, None),
    (Permission.SCIM_READ, None),
    (Permission.SESSION_POLICY_READ, None),
    (Permission.USERS_INVITE, None),
    (Permission.USERS_ROLE_CHANGE, None),
]


def median_us(batch: Callable[[], int], batches: int = BATCHES) -> float:
    """Median over batches of the time per operation; `batch` runs some operations and returns how many."""
    samples = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        count = batch()
        samples.append((time.perf_counter_ns() - start) / count)
    return statistics.median(samples) / 1000


def main() -> None:
    engine = PolicyEngine.from_dir(POLICIES)
    decide = engine.decide
    roles, features = ["member"], ["sso", "domain_verification"]

    # Cold: every call a different key (role sets x feature sets x permissions x requires), cache emptied first.
    role_sets = [[], ["member"], ["admin"], ["member", "admin"], ["ghost", "member"]]
    feature_sets = [list(s) for n in range(len(Feature) + 1) for s in itertools.combinations(Feature, n)]
    cold_keys = list(
        itertools.product(role_sets[:4], feature_sets, Permission, [None, Feature.DOMAIN_VERIFICATION])
    )

    def cold() -> int:
        engine._state.cache.clear()
        for r, f, p, q in cold_keys:
            decide(r, f, p, q)
        return len(cold_keys)

    def cached() -> int:
        for _ in range(1000):
            decide(roles, features, Permission.SSO_READ)
        return 1000

    def navigation() -> int:
        for _ in range(200):
            for permission, requires in NAVIGATION:
                decide(roles, features, permission, requires)
        return 200

    table = {("member", Permission.SSO_READ): True}
    key = ("member", Permission.SSO_READ)

    def dict_lookup() -> int:
        get = table.get
        for _ in range(1000):
            get(key)
        return 1000

    enforcer = casbin.Enforcer(str(POLICIES / "model.conf"), str(POLICIES / "policy.csv"))
    feature_context = enforcer.new_enforce_context("2")

    def live_enforce() -> int:
        for permission in Permission:
            enforcer.enforce("member", permission.value)
        return len(Permission)

    def live_feature_enforce() -> int:
        for permission in Permission:
            enforcer.enforce(feature_context, permission.value, "sso")
        return len(Permission)

    def load() -> int:
        PolicyEngine.from_dir(POLICIES)
        return 1

    navigation()  # fill the cache
    results = {
        "cold_us": median_us(cold, 50),
        "cached_us": median_us(cached),
        "navigation_us": median_us(navigation),
        "dict_lookup_us": median_us(dict_lookup),
        "live_enforce_us": median_us(live_enforce),
        "live_feature_enforce_us": median_us(live_feature_enforce),
        "load_ms": median_us(load, 20) / 1000,
    }
    results["cached_vs_dict"] = results["cached_us"] / results["dict_lookup_us"]
    ok = all(results[name] <= target for name, target in TARGETS.items())

    rows = [
        ("cold decision (cache miss)", "cold_us", "us"),
        ("cached decision", "cached_us", "us"),
        (f"navigation ({len(NAVIGATION)} cached decisions)", "navigation_us", "us"),
        ("dict lookup (baseline)", "dict_lookup_us", "us"),
        ("casbin enforce, role half (reference)", "live_enforce_us", "us"),
        ("casbin enforce, feature half (reference)", "live_feature_enforce_us", "us"),
        ("load + check + precompute", "load_ms", "ms"),
    ]
    print(f"{'measure':<44}{'median':>10}  target")
    for label, name, unit in rows:
        target = f"<= {TARGETS[name]} us" if name in TARGETS else ""
        print(f"{label:<44}{results[name]:>8.2f} {unit}  {target}")
    print(f"cached / dict lookup: {results['cached_vs_dict']:.1f}x   all targets met: {ok}")
    rounded = {name: round(value, 3) for name, value in results.items()}
    print(json.dumps({"bench": "policy", **rounded, "targets": TARGETS, "ok": ok}))


if __name__ == "__main__":
    main()

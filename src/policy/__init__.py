"""The portal's policy engine: role -> permission and permission -> feature, from Casbin files in `policies/`.

Depends on the standard library and casbin only.
"""

from .check import PolicyError, Problem, check_policy_dir
from .engine import PolicyEngine
from .vocab import Decision, DenyReason, Feature, Permission

__all__ = [
    "Decision",
    "DenyReason",
    "Feature",
    "Permission",
    "PolicyEngine",
    "PolicyError",
    "Problem",
    "check_policy_dir",
]

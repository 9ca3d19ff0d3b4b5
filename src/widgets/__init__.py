"""Widget packages. Each sub-package declares ``WIDGET`` (a :class:`portal.registry.Widget`).

``ORDER`` is the order of navigation and home cards; widgets not listed come after, by key.
"""

ORDER = (
    "settings",
    "members",
    "domains",
    "sso",
    "scim",
    "session_policy",
    "audit_log",
    "profile",
    "security",
)

"""``portal policy explain``: for one user in one organization, every permission and widget, and why."""

from __future__ import annotations

from policy import Permission, PolicyEngine
from portal.web.facts import Facts
from portal.web.registry import WidgetRegistry


def explain(facts: Facts, engine: PolicyEngine, registry: WidgetRegistry) -> list[str]:
    """Lines of text: each permission, then each registered widget and its actions, allowed or why not."""
    org = facts.organization
    assert org is not None
    roles = "not a member" if facts.roles is None else (", ".join(facts.roles) or "(no roles)")
    features = ", ".join(sorted(facts.features)) or "(none)"
    lines = [
        f"user:         {facts.user['email']} ({facts.user['id']})",
        f"organization: {org['name']} ({org['display_name']}, {org['id']})",
        f"roles:        {roles}",
        f"features:     {features}",
        "",
        "permissions",
    ]
    width = max(len(p.value) for p in Permission) + 2
    for permission in Permission:
        decision = engine.decide(facts.roles, facts.features, permission)
        lines.append(f"  {permission.value:<{width}}{decision.describe()}")
    lines += ["", "widgets"]
    if not len(registry):
        lines.append("  (no widgets registered)")
    for widget in registry:
        lines.append(f"  {widget.title} [{widget.key}] {widget.url}")
        if widget.read_permission is None:
            lines.append(f"    {'open':<{width}}allowed (every signed-in user)")
            continue
        lines.append(
            f"    {'open':<{width}}{widget.can_open(engine, facts.roles, facts.features).describe()}"
        )
        for permission in widget.manage_permissions:
            decision = widget.decide(engine, facts.roles, facts.features, permission)
            lines.append(f"    {permission.value:<{width}}{decision.describe()}")
    return lines

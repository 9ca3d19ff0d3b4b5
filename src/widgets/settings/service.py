"""Organization settings rules: validate and save name, display name and allowed email domains.

Every query is scoped to the active organization's id, which the controller takes from the session.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from portal.auth import accounts
from portal.core import domains
from portal.core.clock import utcnow
from portal.core.errors import InvalidInput
from portal.core.tables import Domain, Organization
from portal.web.forms import BIDI_CONTROLS, FormErrors
from widgets.settings.schemas import OrganizationSettings, SettingsForm

FIELDS = ("name", "display_name", "allowed_email_domains")
MAX_DISPLAY_NAME = 200
MAX_DOMAINS = 50
NAME_RULE = "Use 1 to 100 lowercase letters, digits and hyphens, not starting or ending with a hyphen."
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")
#: Entries are separated by new lines and commas only: a space inside an entry is part of a (bad) entry, so
#: ``not a domain`` is one entry refused once, not three.
_SEPARATORS = re.compile(r"[\r\n,]+")


async def get_settings(organization_id: str) -> OrganizationSettings:
    """The active organization's settings, and which of its allowed domains are verified."""
    row = await (
        Organization.select(
            Organization.id,
            Organization.name,
            Organization.display_name,
            Organization.allowed_email_domains,
        )
        .where(Organization.id == organization_id)  # tenant check: the session's organization only
        .first()
        .output(load_json=True)
    )
    if row is None:
        raise LookupError(organization_id)
    allowed = [str(d) for d in (row["allowed_email_domains"] or [])]
    verified: set[str] = set()
    if allowed:
        rows = await Domain.select(Domain.domain).where(
            (Domain.organization == organization_id) & (Domain.status == "verified")
        )
        verified = {r["domain"] for r in rows}
    return OrganizationSettings(
        id=row["id"],
        name=row["name"],
        display_name=row["display_name"],
        allowed_email_domains=allowed,
        verified_domains=frozenset(verified & set(allowed)),
    )


def _has_control_characters(value: str) -> bool:
    return any(unicodedata.category(ch) in {"Cc", "Cs", "Zl", "Zp"} or ch in BIDI_CONTROLS for ch in value)


def split_domains(raw: str) -> list[str]:
    """The domains typed into the field: separated by new lines or commas, each trimmed."""
    return [part.strip() for part in _SEPARATORS.split(raw) if part.strip()]


def _entry_problem(raw: str, message: str) -> str:
    """One bad entry's line: the message names the entry as typed."""
    if raw in message or raw.lower().removesuffix(".") in message:
        return message
    return f"{raw}: {message}"


def validate(form: SettingsForm) -> dict[str, Any]:
    """Cleaned values; :class:`FormErrors` naming every bad field. Domains come back normalized (lowercase,
    IDNA), de-duplicated and sorted; public suffixes and free-mail providers are refused."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    name = form.name.strip().lower()
    if not _NAME.match(name):
        errors["name"] = NAME_RULE if name else "Enter a name. " + NAME_RULE
    values["name"] = name
    display_name = " ".join(form.display_name.split())
    if _has_control_characters(form.display_name.strip()):
        errors["display_name"] = "Remove control characters such as line breaks and tabs."
    elif not display_name:
        errors["display_name"] = "Enter the name people see."
    elif len(display_name) > MAX_DISPLAY_NAME:
        errors["display_name"] = f"Use at most {MAX_DISPLAY_NAME} characters (this has {len(display_name)})."
    values["display_name"] = display_name
    problems: list[str] = []
    normalized: set[str] = set()
    raw_domains = split_domains(form.allowed_email_domains)
    for raw in raw_domains:
        try:
            normalized.add(domains.normalize_domain(raw, "allowed_email_domains"))
        except InvalidInput as exc:
            problem = _entry_problem(raw, exc.message)
            if problem not in problems:
                problems.append(problem)
    if problems:
        # One line per bad entry (the page shows each on its own line).
        errors["allowed_email_domains"] = "\n".join(problems)
    elif len(normalized) > MAX_DOMAINS:
        errors["allowed_email_domains"] = f"List at most {MAX_DOMAINS} domains (this has {len(normalized)})."
    values["allowed_email_domains"] = sorted(normalized)
    if errors:
        raise FormErrors(errors)
    return values


async def update_settings(organization_id: str, form: SettingsForm, *, actor_id: str, ip: str) -> list[str]:
    """Validate and save; audit ``settings.updated``. Returns the changed fields (empty: none).

    Call inside ``portal.db.write_transaction()``; a name taken concurrently surfaces as a unique violation.
    """
    values = validate(form)
    current = await get_settings(organization_id)
    old = {
        "name": current.name,
        "display_name": current.display_name,
        "allowed_email_domains": current.allowed_email_domains,
    }
    changes = {f: {"old": old[f], "new": values[f]} for f in FIELDS if old[f] != values[f]}
    if not changes:
        return []
    if "name" in changes and await Organization.exists().where(
        (Organization.name == values["name"]) & (Organization.id != organization_id)
    ):
        raise FormErrors({"name": NAME_TAKEN})
    update: dict[Any, Any] = {Organization._meta.get_column_by_name(f): values[f] for f in changes}
    update[Organization.updated_at] = utcnow()
    await Organization.update(update).where(Organization.id == organization_id)  # tenant check
    await accounts.audit(
        "settings.updated",
        organization_id=organization_id,
        actor_id=actor_id,
        target=organization_id,
        details={"fields": list(changes), "changes": changes},
        ip=ip,
    )
    return list(changes)


NAME_TAKEN = "Another organization already uses this name."

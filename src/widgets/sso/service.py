"""SSO widget rules: an organization's connections, their IdP settings, status, tests and Enforce SSO
(DESIGN §15). Protocol work (metadata parsing, requests, validation) lives in :mod:`portal.sso`.

Every query is scoped to the active organization's id, which the controller takes from the session.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from portal.auth import accounts
from portal.core import clock, crypto
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import Organization, SsoConnection
from portal.sso import oidc, saml
from portal.sso import service as sso
from portal.sso.problems import SsoProblem
from portal.web import guides as guide_files
from portal.web.forms import BIDI_CONTROLS, FormErrors
from widgets.sso.schemas import ConnectionView, CreateForm, IdpForm, SettingsForm

log = logging.getLogger("widgets.sso")

GUIDES_DIR = Path(__file__).parent / "guides"
MAX_CONNECTIONS = 20
WARN_BEFORE = timedelta(days=30)
STATUSES = ("draft", "active", "inactive")
#: Placeholders a guide may use: the connection's own values.
PLACEHOLDERS = frozenset(
    {
        "acs_url",
        "entity_id",
        "metadata_url",
        "redirect_uri",
        "connection_name",
        "organization_name",
        "login_url",
        "portal_url",
    }
)
#: Attribute names each IdP sends by default (the guides tell the admin to send these).
PROVIDER_MAPPING: dict[str, dict[str, str]] = {
    "okta": {"email": "email", "given_name": "firstName", "family_name": "lastName", "groups": "groups"},
    "entra-id": {
        "email": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
        "given_name": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname",
        "family_name": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
        "groups": "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
    },
    "google-workspace": {
        "email": "email",
        "given_name": "firstName",
        "family_name": "lastName",
        "groups": "groups",
    },
    "jumpcloud": {
        "email": "email",
        "given_name": "firstName",
        "family_name": "lastName",
        "groups": "memberOf",
    },
    "onelogin": {
        "email": "email",
        "given_name": "firstName",
        "family_name": "lastName",
        "groups": "memberOf",
    },
    "generic-saml": {"email": "email", "given_name": "givenName", "family_name": "sn", "groups": "groups"},
    "generic-oidc": {
        "email": "email",
        "given_name": "given_name",
        "family_name": "family_name",
        "groups": "groups",
    },
}
MAPPING_FIELDS = ("email", "given_name", "family_name", "groups")
_GROUP_LINE = re.compile(r"^(?P<group>[^=]+)=(?P<roles>.*)$")


def load_guides(settings: Settings) -> list[guide_files.Guide]:
    """The packaged guides with the app owner's overrides from ``PORTAL_GUIDES_DIR/sso/``."""
    return guide_files.load(GUIDES_DIR, "sso", settings.guides_dir)


def guide_protocol(guide: guide_files.Guide) -> str:
    return "oidc" if guide.meta.get("protocol", "saml").lower() == "oidc" else "saml"


# --- reading ---------------------------------------------------------------------------------------------


def _certificate_facts(pem: str, now: datetime) -> tuple[datetime | None, str, str]:
    if not pem:
        return None, "", "none"
    try:
        cert = saml.load_certificate(pem)
    except SsoProblem:
        return None, "", "none"
    expires = cert.not_valid_after_utc
    subject = cert.subject.rfc4514_string()
    if expires <= now:
        return expires, subject, "expired"
    if expires - now <= WARN_BEFORE:
        return expires, subject, "expiring"
    return expires, subject, "ok"


def missing_for(row: dict[str, Any]) -> list[str]:
    """What the connection still needs before it can sign anyone in."""
    missing: list[str] = []
    if row["protocol"] == "saml":
        if not row["idp_sso_url"]:
            missing.append("the IdP's SSO URL")
        if not row["idp_certificate"]:
            missing.append("the IdP's signing certificate")
    else:
        if not row["oidc_issuer"]:
            missing.append("the issuer URL")
        if not row["oidc_client_id"]:
            missing.append("the client id")
        if not row["oidc_client_secret"]:
            missing.append("the client secret")
    return missing


def _view(settings: Settings, row: dict[str, Any]) -> ConnectionView:
    sp = sso.service_provider(settings, row["id"])
    expires, subject, state = _certificate_facts(row["idp_certificate"], clock.utcnow())
    return ConnectionView(
        id=row["id"],
        name=row["name"],
        protocol=row["protocol"],
        provider=row["provider"],
        status=row["status"],
        entity_id=sp.entity_id,
        acs_url=sp.acs_url,
        metadata_url=sp.metadata_url,
        idp_entity_id=row["idp_entity_id"],
        idp_sso_url=row["idp_sso_url"],
        idp_metadata_url=row["idp_metadata_url"],
        idp_certificate=row["idp_certificate"],
        metadata_fetched_at=row["metadata_fetched_at"],
        metadata_error=row["metadata_error"],
        certificate_expires_at=expires,
        certificate_subject=subject,
        certificate_state=state,
        sign_requests=row["sign_requests"],
        allow_idp_initiated=row["allow_idp_initiated"],
        allow_other_domains=row["allow_other_domains"],
        oidc_issuer=row["oidc_issuer"],
        oidc_client_id=row["oidc_client_id"],
        has_client_secret=bool(row["oidc_client_secret"]),
        redirect_uri=oidc.redirect_uri(settings, row["id"]),
        attribute_mapping={k: str(v) for k, v in (row["attribute_mapping"] or {}).items()},
        group_roles={k: list(v) for k, v in (row["group_roles"] or {}).items()},
        default_roles=list(row["default_roles"] or []),
        tested_at=row["tested_at"],
        test_ok=row["test_ok"],
        missing=missing_for(row),
        created_at=row["created_at"],
    )


async def _row(organization_id: str, connection_id: str) -> dict[str, Any]:
    row: dict[str, Any] | None = (
        await SsoConnection.select()
        .where(
            (SsoConnection.id == connection_id) & (SsoConnection.organization == organization_id)
        )  # tenant check
        .output(load_json=True)
        .first()
    )
    if row is None:
        raise LookupError(connection_id)
    return row


async def list_connections(settings: Settings, organization_id: str) -> list[ConnectionView]:
    """The organization's connections, oldest first."""
    rows = (
        await SsoConnection.select()
        .where(SsoConnection.organization == organization_id)  # tenant check
        .order_by(SsoConnection.created_at)
        .output(load_json=True)
    )
    return [_view(settings, row) for row in rows]


async def get_connection(settings: Settings, organization_id: str, connection_id: str) -> ConnectionView:
    """One connection of this organization; LookupError for another organization's id."""
    return _view(settings, await _row(organization_id, connection_id))


async def is_enforced(organization_id: str) -> bool:
    row = (
        await Organization.select(Organization.sso_enforced).where(Organization.id == organization_id).first()
    )
    return bool(row and row["sso_enforced"])


def guide_values(settings: Settings, view: ConnectionView, organization_name: str) -> dict[str, str]:
    """The values a guide's placeholders are filled with."""
    values = {
        "connection_name": view.name,
        "organization_name": organization_name,
        "login_url": f"{settings.origin}/login",
        "portal_url": settings.origin,
        "redirect_uri": view.redirect_uri,
    }
    if view.protocol == "saml":
        values.update(acs_url=view.acs_url, entity_id=view.entity_id, metadata_url=view.metadata_url)
    return values


# --- validation helpers ----------------------------------------------------------------------------------


def _name(value: str, field: str = "name") -> str:
    name = " ".join(value.split())
    if not name:
        raise InvalidInput(field, "Enter a name, such as the IdP's (Okta, Entra ID).")
    if len(name) > 200:
        raise InvalidInput(field, "The name can be at most 200 characters.")
    if any(ch in BIDI_CONTROLS for ch in name):
        raise InvalidInput(field, "The name contains invisible direction-changing characters.")
    return name


def _checked(value: str) -> bool:
    return value.strip().lower() in {"1", "on", "true", "yes"}


def _attribute_name(value: str, field: str) -> str:
    name = value.strip()
    if len(name) > 300:
        raise InvalidInput(field, "An attribute name can be at most 300 characters.")
    if any(ch.isspace() for ch in name) or any(ch in BIDI_CONTROLS for ch in name):
        raise InvalidInput(field, "An attribute name has no spaces or invisible characters.")
    return name


def _roles(text: str, known_roles: Sequence[str], field: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in roles if r not in known_roles]
    if unknown:
        raise InvalidInput(
            field,
            f"{', '.join(unknown)}: not a role of the policy (roles: {', '.join(sorted(known_roles))}).",
        )
    return list(dict.fromkeys(roles))


def parse_group_roles(text: str, known_roles: Sequence[str]) -> dict[str, list[str]]:
    """``Group = role, role`` per line → mapping; InvalidInput naming ``group_roles`` and the line."""
    mapping: dict[str, list[str]] = {}
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if len(lines) > 200:
        raise InvalidInput("group_roles", "At most 200 groups can be mapped.")
    for number, line in enumerate(lines, 1):
        match = _GROUP_LINE.match(line.strip())
        if not match or not match.group("group").strip():
            raise InvalidInput("group_roles", f"Line {number}: write it as Group name = role, role.")
        group = match.group("group").strip()
        if len(group) > 300:
            raise InvalidInput("group_roles", f"Line {number}: the group name is longer than 300 characters.")
        try:
            roles = _roles(match.group("roles"), known_roles, "group_roles")
        except InvalidInput as exc:
            raise InvalidInput("group_roles", f"Line {number}: {exc.message}") from None
        if not roles:
            raise InvalidInput("group_roles", f"Line {number}: name at least one role.")
        mapping[group] = roles
    return mapping


def format_group_roles(mapping: dict[str, list[str]]) -> str:
    return "\n".join(f"{group} = {', '.join(roles)}" for group, roles in mapping.items())


# --- changes ---------------------------------------------------------------------------------------------


async def create_connection(
    settings: Settings, organization_id: str, form: CreateForm, *, actor_id: str, ip: str
) -> str:
    """A new draft connection following a guide; SAML connections get their own SP signing key."""
    errors: dict[str, str] = {}
    guide = guide_files.find(load_guides(settings), form.guide.strip())
    if guide is None:
        errors["guide"] = "Choose your identity provider."
    try:
        name = _name(form.name or (guide.title if guide else ""))
    except InvalidInput as exc:
        errors[exc.field] = exc.message
    if errors:
        raise FormErrors(errors)
    assert guide is not None
    if await SsoConnection.count().where(SsoConnection.organization == organization_id) >= MAX_CONNECTIONS:
        raise FormErrors({"guide": f"An organization can have at most {MAX_CONNECTIONS} connections."})
    protocol = guide_protocol(guide)
    connection = SsoConnection(
        organization=organization_id,
        protocol=protocol,
        provider=guide.key,
        name=name,
        status="draft",
        attribute_mapping=dict(PROVIDER_MAPPING.get(guide.key, {})),
        group_roles={},
        default_roles=["member"],
    )
    if protocol == "saml":
        key_pem, cert_pem = saml.new_sp_keypair(f"{settings.brand_name} SSO {connection.id}")
        connection.sp_private_key = crypto.seal(settings, sso.SP_KEY_PURPOSE, key_pem.encode())
        connection.sp_certificate = cert_pem
    await connection.save()
    await accounts.audit(
        "sso.connection.created",
        organization_id=organization_id,
        actor_id=actor_id,
        target=connection.id,
        details={"name": name, "protocol": protocol, "provider": guide.key},
        ip=ip,
    )
    return str(connection.id)


def _certificate_expiry(pem: str) -> datetime:
    cert: x509.Certificate = saml.load_certificate(pem)
    return cert.not_valid_after_utc


async def configure_idp(
    settings: Settings,
    organization_id: str,
    connection_id: str,
    form: IdpForm,
    upload: bytes | None,
    *,
    actor_id: str,
    ip: str,
) -> str:
    """Set a SAML connection's IdP from a metadata URL (fetched now), an uploaded or pasted metadata file, or
    fields. Bad input raises FormErrors and saves nothing. Returns what was done, for the flash message."""
    row = await _row(organization_id, connection_id)
    if row["protocol"] != "saml":
        raise FormErrors({"source": "This is an OIDC connection: set its issuer and client below."})
    values: dict[Any, Any] = {}
    source = form.source.strip()
    if source == "url":
        url = form.idp_metadata_url.strip()
        if not url:
            raise FormErrors({"idp_metadata_url": "Enter the IdP's metadata URL."})
        if len(url) > 2000:
            raise FormErrors({"idp_metadata_url": "The URL is longer than 2000 characters."})
        try:
            metadata = await sso.fetch_idp_metadata(settings, url)
        except SsoProblem as exc:
            raise FormErrors({"idp_metadata_url": exc.message}) from None
        values = {
            SsoConnection.idp_metadata_url: url,
            SsoConnection.metadata_fetched_at: clock.utcnow(),
            SsoConnection.metadata_error: None,
        }
        done = "Metadata fetched from the URL; it is fetched again on a schedule."
    elif source == "upload":
        data = upload or form.metadata_xml.encode()
        if not data.strip():
            raise FormErrors({"metadata_file": "Choose the IdP's metadata file (XML), or paste it."})
        try:
            metadata = saml.parse_idp_metadata(data)
        except SsoProblem as exc:
            raise FormErrors({"metadata_file": exc.message}) from None
        values = {SsoConnection.idp_metadata_url: "", SsoConnection.metadata_error: None}
        done = "Metadata uploaded."
    elif source == "fields":
        errors: dict[str, str] = {}
        sso_url = form.idp_sso_url.strip()
        try:
            outbound_url(sso_url, "idp_sso_url")
        except InvalidInput as exc:
            errors[exc.field] = exc.message
        entity_id = form.idp_entity_id.strip()
        if not entity_id:
            errors["idp_entity_id"] = "Enter the IdP's entity id (Issuer)."
        elif len(entity_id) > 1000:
            errors["idp_entity_id"] = "The entity id can be at most 1000 characters."
        pem = form.idp_certificate.strip()
        if not pem:
            errors["idp_certificate"] = "Paste the IdP's signing certificate (PEM)."
        elif len(pem) > 20000:
            errors["idp_certificate"] = "This is too long for a certificate."
        else:
            try:
                saml.load_certificate(pem)
            except SsoProblem as exc:
                errors["idp_certificate"] = exc.message
        if errors:
            raise FormErrors(errors)
        metadata = saml.IdpMetadata(entity_id=entity_id, sso_url=sso_url, certificate_pem=saml.to_pem(pem))
        values = {SsoConnection.idp_metadata_url: "", SsoConnection.metadata_error: None}
        done = "IdP settings saved."
    else:
        raise FormErrors({"source": "Choose how to give the IdP's settings."})
    if len(metadata.sso_url) > 2000 or len(metadata.entity_id) > 1000:
        raise FormErrors(
            {
                "metadata_file"
                if source == "upload"
                else "idp_metadata_url": "The metadata values are too long."
            }
        )
    await _save_idp(connection_id, metadata, values)
    await accounts.audit(
        "sso.connection.updated",
        organization_id=organization_id,
        actor_id=actor_id,
        target=connection_id,
        details={"idp": source, "idp_entity_id": metadata.entity_id, "idp_sso_url": metadata.sso_url},
        ip=ip,
    )
    return done


def outbound_url(url: str, field: str) -> None:
    """An https URL (http only where private addresses are allowed is not needed: browsers go there)."""
    if not url:
        raise InvalidInput(field, "Enter the IdP's SSO URL.")
    if len(url) > 2000:
        raise InvalidInput(field, "The URL is longer than 2000 characters.")
    from portal.core import outbound

    outbound.parse_url(url, field=field, allow_http=True)


async def _save_idp(connection_id: str, metadata: saml.IdpMetadata, extra: dict[Any, Any]) -> None:
    expires = _certificate_expiry(metadata.certificate_pem)
    before = (
        await SsoConnection.select(SsoConnection.certificate_expires_at)
        .where(SsoConnection.id == connection_id)
        .first()
    )
    values = {
        SsoConnection.idp_entity_id: metadata.entity_id,
        SsoConnection.idp_sso_url: metadata.sso_url,
        SsoConnection.idp_certificate: metadata.certificate_pem,
        SsoConnection.certificate_expires_at: expires,
        SsoConnection.updated_at: clock.utcnow(),
        **extra,
    }
    if before is None or before["certificate_expires_at"] != expires:
        values[SsoConnection.certificate_warned_at] = None  # a new certificate is warned about afresh
    await SsoConnection.update(values).where(SsoConnection.id == connection_id)


async def update_settings(
    settings: Settings,
    organization_id: str,
    connection_id: str,
    form: SettingsForm,
    *,
    known_roles: Sequence[str],
    actor_id: str,
    ip: str,
) -> None:
    """Name, toggles, OIDC client, attribute and group → role mapping; FormErrors saves nothing."""
    row = await _row(organization_id, connection_id)
    errors: dict[str, str] = {}
    values: dict[Any, Any] = {}
    changed: list[str] = []

    def attempt(field: str, fn: Any) -> Any:
        try:
            return fn()
        except InvalidInput as exc:
            errors[exc.field or field] = exc.message
            return None

    name = attempt("name", lambda: _name(form.name))
    mapping: dict[str, str] = {}
    for key in MAPPING_FIELDS:
        value = attempt(
            f"map_{key}", lambda key=key: _attribute_name(getattr(form, f"map_{key}"), f"map_{key}")
        )
        if value:
            mapping[key] = value
    group_roles = attempt("group_roles", lambda: parse_group_roles(form.group_roles, known_roles))
    default_roles = attempt("default_roles", lambda: _roles(form.default_roles, known_roles, "default_roles"))
    if default_roles == [] and "default_roles" not in errors:
        errors["default_roles"] = "Name at least one role for members no group maps (usually member)."
    if row["protocol"] == "saml":
        values[SsoConnection.sign_requests] = _checked(form.sign_requests)
        values[SsoConnection.allow_idp_initiated] = _checked(form.allow_idp_initiated)
    else:
        issuer = attempt("oidc_issuer", lambda: oidc.normalize_issuer(settings, form.oidc_issuer))
        client_id = form.oidc_client_id.strip()
        if not client_id:
            errors["oidc_client_id"] = "Enter the client id the IdP gave the application."
        elif len(client_id) > 500 or any(ch.isspace() for ch in client_id):
            errors["oidc_client_id"] = "A client id has no spaces and at most 500 characters."
        secret = form.oidc_client_secret.strip()
        if len(secret) > 2000:
            errors["oidc_client_secret"] = "The client secret is longer than 2000 characters."  # noqa: S105
        elif not secret and not row["oidc_client_secret"]:
            errors["oidc_client_secret"] = "Enter the client secret the IdP gave the application."  # noqa: S105
        if issuer and not errors:
            values[SsoConnection.oidc_issuer] = issuer
            values[SsoConnection.oidc_client_id] = client_id
        if secret and not errors:
            values[SsoConnection.oidc_client_secret] = crypto.seal(
                settings, sso.SECRET_PURPOSE, secret.encode()
            )
            changed.append("client_secret")
    values[SsoConnection.allow_other_domains] = _checked(form.allow_other_domains)
    if errors:
        raise FormErrors(errors)
    values.update(
        {
            SsoConnection.name: name,
            SsoConnection.attribute_mapping: mapping,
            SsoConnection.group_roles: group_roles,
            SsoConnection.default_roles: default_roles,
            SsoConnection.updated_at: clock.utcnow(),
        }
    )
    await SsoConnection.update(values).where(
        (SsoConnection.id == connection_id) & (SsoConnection.organization == organization_id)  # tenant check
    )
    await accounts.audit(
        "sso.connection.updated",
        organization_id=organization_id,
        actor_id=actor_id,
        target=connection_id,
        details={
            "name": name,
            "attribute_mapping": mapping,
            "group_roles": group_roles,
            "default_roles": default_roles,
            "changed": changed,
        },
        ip=ip,
    )


class Refused(Exception):
    """An action that cannot be done to this connection now; the message says why."""


async def set_status(organization_id: str, connection_id: str, status: str, *, actor_id: str, ip: str) -> str:
    """draft/inactive → active (only when configured), active → inactive. Returns the connection's name."""
    row = await _row(organization_id, connection_id)
    if status == "active":
        missing = missing_for(row)
        if missing:
            raise Refused(f"{row['name']} cannot be activated yet: it needs {', '.join(missing)}.")
        if row["status"] == "active":
            raise Refused(f"{row['name']} is already active.")
    elif status == "inactive":
        if row["status"] != "active":
            raise Refused(f"{row['name']} is not active.")
        if await is_enforced(organization_id) and await _other_active(organization_id, connection_id) == 0:
            raise Refused("Turn Enforce SSO off first: it is the organization's last active connection.")
    await SsoConnection.update(
        {SsoConnection.status: status, SsoConnection.updated_at: clock.utcnow()}
    ).where(
        (SsoConnection.id == connection_id) & (SsoConnection.organization == organization_id)  # tenant check
    )
    await accounts.audit(
        "sso.connection.activated" if status == "active" else "sso.connection.deactivated",
        organization_id=organization_id,
        actor_id=actor_id,
        target=connection_id,
        details={"name": row["name"], "from": row["status"]},
        ip=ip,
    )
    return str(row["name"])


async def _other_active(organization_id: str, connection_id: str) -> int:
    count: int = await SsoConnection.count().where(
        (SsoConnection.organization == organization_id)
        & (SsoConnection.status == "active")
        & (SsoConnection.id != connection_id)
    )
    return count


async def delete_connection(organization_id: str, connection_id: str, *, actor_id: str, ip: str) -> str:
    row = await _row(organization_id, connection_id)
    last_active = row["status"] == "active" and await _other_active(organization_id, connection_id) == 0
    if last_active and await is_enforced(organization_id):
        raise Refused("Turn Enforce SSO off first: it is the organization's last active connection.")
    await SsoConnection.delete().where(
        (SsoConnection.id == connection_id) & (SsoConnection.organization == organization_id)  # tenant check
    )
    await accounts.audit(
        "sso.connection.deleted",
        organization_id=organization_id,
        actor_id=actor_id,
        target=connection_id,
        details={"name": row["name"], "protocol": row["protocol"]},
        ip=ip,
    )
    return str(row["name"])


async def set_enforced(organization_id: str, enforced: bool, *, actor_id: str, ip: str) -> None:
    """Turn Enforce SSO on (needs an active connection) or off."""
    if enforced:
        active = await SsoConnection.count().where(
            (SsoConnection.organization == organization_id) & (SsoConnection.status == "active")
        )
        if not active:
            raise Refused("Activate a connection before enforcing SSO.")
    await Organization.update(
        {Organization.sso_enforced: enforced, Organization.updated_at: clock.utcnow()}
    ).where(Organization.id == organization_id)
    await accounts.audit(
        "sso.enforcement.updated",
        organization_id=organization_id,
        actor_id=actor_id,
        target=organization_id,
        details={"enforced": enforced},
        ip=ip,
    )


async def start_test(settings: Settings, organization_id: str, connection_id: str) -> tuple[str, str | None]:
    """Start a test sign-in (creates no session): (IdP URL, OIDC browser cookie or None)."""
    row = await _row(organization_id, connection_id)
    missing = missing_for(row)
    if missing:
        raise Refused(f"{row['name']} cannot be tested yet: it needs {', '.join(missing)}.")
    try:
        if row["protocol"] == "saml":
            return await sso.start_saml(settings, row, purpose="test", return_to="/ui/organization/sso"), None
        url, browser = await sso.start_oidc(settings, row, purpose="test", return_to="/ui/organization/sso")
        return url, browser
    except SsoProblem as exc:
        raise Refused(f"The test could not start: {exc.message} {exc.fix}".strip()) from None


# --- scheduled work --------------------------------------------------------------------------------------


async def refresh_metadata(settings: Settings) -> dict[str, int]:
    """Fetch again the metadata of connections configured by URL and due; a failure keeps the old values
    and is shown on the connection."""
    due = clock.utcnow() - timedelta(seconds=settings.sso_metadata_refresh_interval)
    rows = await SsoConnection.select(SsoConnection.id, SsoConnection.idp_metadata_url).where(
        (SsoConnection.protocol == "saml")
        & (SsoConnection.idp_metadata_url != "")
        & ((SsoConnection.metadata_fetched_at.is_null()) | (SsoConnection.metadata_fetched_at <= due))
    )
    report = {"fetched": 0, "failed": 0}
    for row in rows:
        try:
            metadata = await sso.fetch_idp_metadata(settings, row["idp_metadata_url"])
        except SsoProblem as exc:
            report["failed"] += 1
            await SsoConnection.update(
                {SsoConnection.metadata_error: exc.message, SsoConnection.metadata_fetched_at: clock.utcnow()}
            ).where(SsoConnection.id == row["id"])
            continue
        await _save_idp(
            row["id"],
            metadata,
            {SsoConnection.metadata_fetched_at: clock.utcnow(), SsoConnection.metadata_error: None},
        )
        report["fetched"] += 1
    return report


async def warn_certificates() -> int:
    """Audit ``sso.certificate.expiring`` once per certificate that expires within 30 days."""
    now = clock.utcnow()
    rows = await SsoConnection.select(
        SsoConnection.id, SsoConnection.organization, SsoConnection.name, SsoConnection.certificate_expires_at
    ).where(
        (SsoConnection.certificate_expires_at.is_not_null())
        & (SsoConnection.certificate_expires_at <= now + WARN_BEFORE)
        & (SsoConnection.certificate_warned_at.is_null())
    )
    for row in rows:
        await SsoConnection.update({SsoConnection.certificate_warned_at: now}).where(
            SsoConnection.id == row["id"]
        )
        await accounts.audit(
            "sso.certificate.expiring",
            organization_id=row["organization"],
            target=row["id"],
            details={"name": row["name"], "expires_at": row["certificate_expires_at"].isoformat()},
        )
    return len(rows)

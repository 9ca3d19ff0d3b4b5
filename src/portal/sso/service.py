"""SSO connections and sign-ins (DESIGN §15): the rules the SSO widget and the /sso/ routes share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from portal.auth import accounts
from portal.core import clock, db
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import Domain, Membership, SsoAssertion, SsoConnection, SsoRequest
from portal.sso import saml
from portal.sso.problems import SsoProblem

REQUEST_TTL = timedelta(minutes=10)
#: Attribute names tried for each field when the connection maps none (covers Okta, Entra, Google, JumpCloud,
#: OneLogin and pysaml2's defaults).
DEFAULT_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "email": (
        "email",
        "Email",
        "mail",
        "emailAddress",
        "urn:oid:0.9.2342.19200300.100.1.3",
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    ),
    "given_name": (
        "given_name",
        "firstName",
        "givenName",
        "urn:oid:2.5.4.42",
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname",
    ),
    "family_name": (
        "family_name",
        "lastName",
        "sn",
        "urn:oid:2.5.4.4",
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
    ),
    "groups": ("groups", "memberOf", "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"),
}


async def get_connection(connection_id: str) -> dict[str, Any] | None:
    """A connection by id with its organization's id, or None."""
    row: dict[str, Any] | None = (
        await SsoConnection.select().where(SsoConnection.id == connection_id).output(load_json=True).first()
    )
    return row


def service_provider(settings: Settings, connection_id: str) -> saml.ServiceProvider:
    return saml.ServiceProvider.of(settings.origin, connection_id)


async def start_saml(settings: Settings, connection: dict[str, Any], *, purpose: str, return_to: str) -> str:
    """Record a request and return the IdP URL that carries our AuthnRequest."""
    if connection["status"] != "active" and purpose == "login":
        raise SsoProblem("inactive", "This connection is not active.")
    if not connection["idp_sso_url"]:
        raise SsoProblem("metadata_invalid", "The IdP's SSO URL is not configured yet.")
    now = clock.utcnow()
    request_id = saml.new_request_id()
    await SsoRequest(
        id=request_id,
        connection=connection["id"],
        purpose=purpose,
        return_to=return_to,
        expires_at=now + REQUEST_TTL,
    ).save()
    return saml.authn_request_url(
        service_provider(settings, connection["id"]), connection["idp_sso_url"], request_id, now
    )


def pick(attributes: dict[str, list[str]], mapping: dict[str, str], key: str) -> list[str]:
    """The values of one mapped field: the connection's attribute name, else the per-IdP defaults."""
    names = (mapping[key],) if mapping.get(key) else DEFAULT_ATTRIBUTES[key]
    for name in names:
        values = [v for v in attributes.get(name, []) if v]
        if values:
            return values
    return []


@dataclass(slots=True)
class Outcome:
    """A validated sign-in: who, with what attributes, for which request."""

    connection: dict[str, Any]
    purpose: str
    return_to: str
    email: str
    given_name: str
    family_name: str
    groups: list[str]
    attributes: dict[str, list[str]]


async def _claim_request(connection_id: str, request_id: str, now: datetime) -> dict[str, Any] | None:
    """Consume our request once (a replayed response finds it consumed)."""
    row: dict[str, Any] | None = (
        await SsoRequest.select()
        .where((SsoRequest.id == request_id) & (SsoRequest.connection == connection_id))
        .first()
    )
    if row is None or row["consumed_at"] is not None or row["expires_at"] < now:
        return None
    await SsoRequest.update({SsoRequest.consumed_at: now}).where(
        (SsoRequest.id == request_id) & (SsoRequest.consumed_at.is_null())
    )
    return row


async def verified_domains(organization_id: str) -> set[str]:
    rows = await Domain.select(Domain.domain).where(
        (Domain.organization == organization_id) & (Domain.status == "verified")
    )
    return {row["domain"] for row in rows}


async def accept_saml(settings: Settings, connection_id: str, saml_response: str) -> Outcome:
    """Validate a posted SAMLResponse for this connection; SsoProblem says why it is refused."""
    connection = await get_connection(connection_id)
    if connection is None or connection["protocol"] != "saml":
        raise SsoProblem("other_connection", "No such SAML connection.")
    now = clock.utcnow()
    expected = saml.Expected(
        sp=service_provider(settings, connection_id),
        idp_entity_id=connection["idp_entity_id"],
        certificate_pem=connection["idp_certificate"],
        now=now,
        skew=timedelta(seconds=settings.sso_clock_skew),
        allow_idp_initiated=connection["allow_idp_initiated"],
    )
    assertion = saml.validate_response(saml.decode_post(saml_response), expected)
    purpose, return_to = "login", "/ui/"
    if assertion.in_response_to:
        request = await _claim_request(connection_id, assertion.in_response_to, now)
        if request is None:
            raise SsoProblem("in_response_to", "The response answers no pending sign-in of this connection.")
        purpose, return_to = request["purpose"], request["return_to"]
    if connection["status"] != "active" and purpose == "login":
        raise SsoProblem("inactive", "This connection is not active.")
    # Replay: the assertion id is remembered until it expires; the unique key refuses a second use.
    until = assertion.not_on_or_after or now + REQUEST_TTL
    try:
        async with db.write_transaction():
            await SsoAssertion(key=f"{connection_id} {assertion.assertion_id}", expires_at=until).save()
    except Exception as exc:
        if not db.is_unique_violation(exc):
            raise
        raise SsoProblem("replay", "This assertion was already used.") from None
    mapping = connection["attribute_mapping"] or {}
    emails = pick(assertion.attributes, mapping, "email")
    email_raw = emails[0] if emails else (assertion.name_id if "@" in assertion.name_id else "")
    if not email_raw:
        raise SsoProblem("missing_email", "The IdP sent no email address.")
    try:
        email = accounts.normalize_email(email_raw)
    except InvalidInput:
        raise SsoProblem(
            "missing_email", f"The IdP sent {email_raw!r}, which is not an email address."
        ) from None
    outcome = Outcome(
        connection=connection,
        purpose=purpose,
        return_to=return_to,
        email=email,
        given_name=next(iter(pick(assertion.attributes, mapping, "given_name")), ""),
        family_name=next(iter(pick(assertion.attributes, mapping, "family_name")), ""),
        groups=pick(assertion.attributes, mapping, "groups"),
        attributes=assertion.attributes,
    )
    if not connection["allow_other_domains"]:
        domain = email.rpartition("@")[2]
        if domain not in await verified_domains(connection["organization"]):
            raise SsoProblem("email_domain", f"{email} is outside the organization's verified domains.")
    return outcome


def roles_for(connection: dict[str, Any], groups: list[str], known_roles: tuple[str, ...]) -> list[str]:
    """Group → role mapping, else the connection's default roles; only roles the policy defines."""
    mapped: list[str] = []
    for group in groups:
        for role in (connection["group_roles"] or {}).get(group, []):
            if role not in mapped:
                mapped.append(role)
    roles = mapped or list(connection["default_roles"] or ["member"])
    return [r for r in roles if r in known_roles] or [r for r in ("member",) if r in known_roles]


async def provision(outcome: Outcome, *, known_roles: tuple[str, ...]) -> dict[str, Any]:
    """Find or create the user and make them a member (source ``sso``); group roles apply at each sign-in."""
    user = await accounts.find_user(outcome.email)
    if user is None:
        await accounts.create_user(
            outcome.email, verified=True, given_name=outcome.given_name, family_name=outcome.family_name
        )
        user = await accounts.find_user(outcome.email)
        assert user is not None
    organization_id = outcome.connection["organization"]
    roles = roles_for(outcome.connection, outcome.groups, known_roles)
    member = (
        await Membership.select(Membership.id, Membership.roles, Membership.source)
        .where((Membership.organization == organization_id) & (Membership.user == user["id"]))
        .output(load_json=True)
        .first()
    )
    if member is None:
        await accounts.add_member(
            organization_id, user["id"], roles, known_roles=known_roles, source="sso", actor_id=user["id"]
        )
    elif member["source"] == "sso" and outcome.connection["group_roles"] and member["roles"] != roles:
        await Membership.update({Membership.roles: roles, Membership.updated_at: clock.utcnow()}).where(
            Membership.id == member["id"]
        )
        await accounts.audit(
            "member.roles_changed",
            organization_id=organization_id,
            actor_id=user["id"],
            target=outcome.email,
            details={"old": member["roles"], "new": roles, "by": "sso_group_mapping"},
        )
    return user

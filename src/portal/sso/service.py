"""SSO connections and sign-ins (DESIGN §15): the rules the SSO widget and the /sso/ routes share."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from portal.auth import accounts
from portal.core import clock, crypto, db, outbound
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import Domain, Membership, Organization, SsoAssertion, SsoConnection, SsoRequest
from portal.sso import oidc, saml
from portal.sso.problems import SsoProblem

REQUEST_TTL = timedelta(minutes=10)
SP_KEY_PURPOSE = "sso.sp_signing_key"
SECRET_PURPOSE = "sso.oidc_client_secret"  # noqa: S105 (a purpose label, not a secret)
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


async def require_entitled(connection: dict[str, Any]) -> None:
    """The connection's organization must have the ``sso`` feature (an app owner can turn it off)."""
    row = (
        await Organization.select(Organization.features)
        .where(Organization.id == connection["organization"])
        .output(load_json=True)
        .first()
    )
    if row is None or "sso" not in (row["features"] or []):  # entitlement check
        raise SsoProblem("feature", "Single sign-on is not enabled for this organization.")


def service_provider(settings: Settings, connection_id: str) -> saml.ServiceProvider:
    return saml.ServiceProvider.of(settings.origin, connection_id)


async def start_saml(settings: Settings, connection: dict[str, Any], *, purpose: str, return_to: str) -> str:
    """Record a request and return the IdP URL that carries our AuthnRequest."""
    if connection["status"] != "active" and purpose == "login":
        raise SsoProblem("inactive", "This connection is not active.")
    await require_entitled(connection)
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
    signing_key = None
    if connection["sign_requests"] and connection["sp_private_key"]:
        signing_key = crypto.unseal(settings, SP_KEY_PURPOSE, connection["sp_private_key"])
    return saml.authn_request_url(
        service_provider(settings, connection["id"]),
        connection["idp_sso_url"],
        request_id,
        now,
        signing_key_pem=signing_key,
    )


def sp_metadata(settings: Settings, connection: dict[str, Any]) -> bytes:
    """The connection's SP metadata; it carries the SP certificate when AuthnRequests are signed."""
    certificate = connection["sp_certificate"] if connection["sign_requests"] else None
    return saml.sp_metadata(service_provider(settings, connection["id"]), certificate or None)


async def fetch_idp_metadata(settings: Settings, url: str) -> saml.IdpMetadata:
    """Fetch and parse an IdP's metadata URL under the SSRF rule; SsoProblem says why it failed."""
    try:
        response = await outbound.request(
            "GET",
            url,
            allow_private=settings.sso_allow_private_addresses,
            allow_http=settings.sso_allow_private_addresses,
            max_bytes=saml.MAX_METADATA,
            field="idp_metadata_url",
        )
    except InvalidInput as exc:
        raise SsoProblem("ssrf", exc.message) from None
    except outbound.ResponseTooLarge:
        raise SsoProblem("xml_too_large", "The metadata is larger than 1 MB.") from None
    except httpx.HTTPError as exc:
        raise SsoProblem("fetch", f"The metadata could not be fetched ({exc.__class__.__name__}).") from None
    if response.status_code != 200:
        raise SsoProblem("fetch", f"The metadata URL answered HTTP {response.status_code}.")
    return saml.parse_idp_metadata(response.content)


def pick(attributes: dict[str, list[str]], mapping: dict[str, str], key: str) -> list[str]:
    """The values of one mapped field: the connection's attribute name first, then the common names."""
    names = (mapping[key], *DEFAULT_ATTRIBUTES[key]) if mapping.get(key) else DEFAULT_ATTRIBUTES[key]
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
    await require_entitled(connection)
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
    return await outcome_of(connection, purpose, return_to, assertion.attributes, assertion.name_id)


async def outcome_of(
    connection: dict[str, Any], purpose: str, return_to: str, attributes: dict[str, list[str]], subject: str
) -> Outcome:
    """Map what the IdP sent (attributes, and the subject as a fallback email) to a sign-in; the email must
    be at one of the organization's verified domains unless the connection allows others."""
    mapping = connection["attribute_mapping"] or {}
    emails = pick(attributes, mapping, "email")
    email_raw = emails[0] if emails else (subject if "@" in subject else "")
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
        given_name=next(iter(pick(attributes, mapping, "given_name")), ""),
        family_name=next(iter(pick(attributes, mapping, "family_name")), ""),
        groups=pick(attributes, mapping, "groups"),
        attributes=attributes,
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


# --- OIDC --------------------------------------------------------------------------------------------------


def browser_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def start_oidc(
    settings: Settings, connection: dict[str, Any], *, purpose: str, return_to: str
) -> tuple[str, str]:
    """Record a request (state, nonce, PKCE verifier) and return (IdP authorization URL, browser cookie value):
    the callback is accepted only in the browser holding that cookie."""
    if connection["status"] != "active" and purpose == "login":
        raise SsoProblem("inactive", "This connection is not active.")
    await require_entitled(connection)
    if not connection["oidc_issuer"] or not connection["oidc_client_id"]:
        raise SsoProblem("oidc_discovery", "The issuer and client id are not configured yet.")
    provider = await oidc.discover(settings, connection["oidc_issuer"])
    verifier, challenge = oidc.new_pkce()
    nonce, browser = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    request = SsoRequest(
        connection=connection["id"],
        purpose=purpose,
        return_to=return_to,
        nonce=nonce,
        code_verifier=verifier,
        browser=browser_hash(browser),
        expires_at=clock.utcnow() + REQUEST_TTL,
    )
    await request.save()
    url = oidc.authorization_url(
        provider,
        client_id=connection["oidc_client_id"],
        redirect=oidc.redirect_uri(settings, connection["id"]),
        state=request.id,
        nonce=nonce,
        challenge=challenge,
    )
    return url, browser


async def pending_purpose(connection_id: str, state: str) -> str:
    """``test`` or ``login`` for a state we issued (before it is consumed), else ``login``."""
    row = (
        await SsoRequest.select(SsoRequest.purpose)
        .where((SsoRequest.id == state) & (SsoRequest.connection == connection_id))
        .first()
    )
    return str(row["purpose"]) if row else "login"


async def accept_oidc(
    settings: Settings, connection_id: str, *, state: str, code: str, error: str, browser: str
) -> Outcome:
    """Check the callback (state of this browser, used once), redeem the code and verify the ID token."""
    connection = await get_connection(connection_id)
    if connection is None or connection["protocol"] != "oidc":
        raise SsoProblem("other_connection", "No such OIDC connection.")
    await require_entitled(connection)
    now = clock.utcnow()
    request = await _claim_request(connection_id, state, now) if state else None
    if request is None:
        raise SsoProblem("oidc_state", "The sign-in answers no pending sign-in of this connection.")
    if not browser or not secrets.compare_digest(request["browser"], browser_hash(browser)):
        raise SsoProblem("oidc_state", "The sign-in was started in another browser.")
    if error:
        raise SsoProblem("oidc_error", f"The IdP answered with the error {error[:100]!r}.")
    if not code:
        raise SsoProblem("oidc_error", "The IdP sent no authorization code.")
    if connection["status"] != "active" and request["purpose"] == "login":
        raise SsoProblem("inactive", "This connection is not active.")
    provider = await oidc.discover(settings, connection["oidc_issuer"])
    secret = ""
    if connection["oidc_client_secret"]:
        secret = crypto.unseal(settings, SECRET_PURPOSE, connection["oidc_client_secret"]).decode()
    tokens = await oidc.exchange_code(
        settings,
        provider,
        client_id=connection["oidc_client_id"],
        client_secret=secret,
        code=code,
        redirect=oidc.redirect_uri(settings, connection_id),
        code_verifier=request["code_verifier"],
    )
    claims = oidc.verify_id_token(
        tokens["id_token"],
        await oidc.fetch_jwks(settings, provider),
        issuer=connection["oidc_issuer"],
        client_id=connection["oidc_client_id"],
        nonce=request["nonce"],
        skew=settings.sso_clock_skew,
    )
    access_token = tokens.get("access_token")
    if not claims.get("email") and provider.userinfo_endpoint and isinstance(access_token, str):
        # Some IdPs (Entra ID without the optional claim) put the email only in userinfo. Its ``sub`` must be
        # the ID token's (OIDC Core 5.3.2); the ID token's own claims win.
        userinfo = await oidc.fetch_userinfo(settings, provider, access_token)
        if userinfo.get("sub") != claims.get("sub"):
            raise SsoProblem("oidc_id_token", "The userinfo answer is for another subject than the ID token.")
        claims = {**userinfo, **claims}
    if claims.get("email_verified") is False:
        raise SsoProblem("email_unverified", "The IdP says this email address is not verified.")
    attributes = oidc.claims_as_attributes(claims)
    return await outcome_of(
        connection, request["purpose"], request["return_to"], attributes, str(claims.get("email", ""))
    )


async def record_test(connection_id: str, ok: bool) -> None:
    """Remember the last test's result (shown on the connection page)."""
    await SsoConnection.update({SsoConnection.tested_at: clock.utcnow(), SsoConnection.test_ok: ok}).where(
        SsoConnection.id == connection_id
    )


# --- home realm discovery --------------------------------------------------------------------------------


@dataclass(slots=True)
class Realm:
    """The organization that verified an email's domain, its active connections and whether it enforces SSO."""

    organization: dict[str, Any]
    connections: list[dict[str, Any]]
    enforced: bool


async def realm_of(email: str) -> Realm | None:
    """The realm of ``email``: its domain verified by an organization with the ``sso`` feature and an active
    connection; None otherwise."""
    domain = email.rpartition("@")[2].lower()
    if not domain:
        return None
    row = (
        await Domain.select(Domain.organization)
        .where((Domain.verified_domain == domain) & (Domain.status == "verified"))
        .first()
    )
    if row is None:
        return None
    organization = (
        await Organization.select(
            Organization.id,
            Organization.name,
            Organization.display_name,
            Organization.features,
            Organization.sso_enforced,
        )
        .where(Organization.id == row["organization"])
        .output(load_json=True)
        .first()
    )
    if organization is None or "sso" not in (organization["features"] or []):  # entitlement check
        return None
    connections = (
        await SsoConnection.select(SsoConnection.id, SsoConnection.name, SsoConnection.protocol)
        .where((SsoConnection.organization == organization["id"]) & (SsoConnection.status == "active"))
        .order_by(SsoConnection.created_at)
    )
    if not connections:
        return None
    return Realm(organization, connections, bool(organization["sso_enforced"]))


def login_path(connection: dict[str, Any]) -> str:
    return f"/sso/{connection['protocol']}/{connection['id']}/login"


async def purge_expired(now: datetime | None = None) -> dict[str, int]:
    """Delete sign-in requests a day past their expiry and assertion ids past theirs (replay can no longer
    succeed: the assertion itself has expired)."""
    moment = now or clock.utcnow()
    requests = (
        await SsoRequest.delete()
        .where(SsoRequest.expires_at < moment - timedelta(days=1))
        .returning(SsoRequest.id)
    )
    assertions = (
        await SsoAssertion.delete().where(SsoAssertion.expires_at < moment).returning(SsoAssertion.id)
    )
    return {"requests": len(requests), "assertions": len(assertions)}

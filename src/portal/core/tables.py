"""The portal's tables (DESIGN §3). Grow them with migrations: add and drop only, SQLite cannot ALTER."""

from __future__ import annotations

import secrets

from piccolo.columns import JSON, BigInt, BigSerial, Boolean, ForeignKey, Integer, Text, Timestamptz, Varchar
from piccolo.columns.base import OnDelete
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.table import Table

from portal.core import ids


class Organization(Table, tablename="organization"):
    """A customer organization of the app."""

    #: ``org_…``
    id = Varchar(length=40, primary_key=True, default=ids.organization_id)
    #: Short name, unique, used by the CLI and the app (``acme``).
    name = Varchar(length=100, unique=True)
    #: Name shown to people (``Acme Corporation``).
    display_name = Varchar(length=200)
    #: The app's own id for this organization, if it has one.
    external_id = Varchar(length=200, null=True, default=None, unique=True)
    #: Lowercase domains whose users may join (JSON list of str).
    allowed_email_domains = JSON(default=[])
    #: Enabled feature keys (JSON list of ``policy.Feature`` values).
    features = JSON(default=[])
    #: ``application`` (inherit the app defaults) or ``custom``.
    session_policy_source = Varchar(length=20, default="application")
    #: Custom absolute session timeout in seconds (only with source ``custom``).
    session_absolute_timeout = Integer(null=True, default=None)
    #: Custom idle session timeout in seconds (only with source ``custom``).
    session_idle_timeout = Integer(null=True, default=None)
    #: Free-form JSON object for the app.
    metadata = JSON(default={})
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    # --- issue 12: sso (portal_0010)
    #: Enforce SSO: emails at the organization's verified domains must sign in through its active connection
    #: (break-glass: members holding ``sk_org_sso_manage`` keep email codes).
    sso_enforced = Boolean(default=False)
    # --- end issue 12: sso


class User(Table, tablename="portal_user"):
    """A person; ``user`` is reserved in PostgreSQL, hence the table name."""

    #: ``usr_…``
    id = Varchar(length=40, primary_key=True, default=ids.user_id)
    #: Normalized (trimmed, lowercase) and unique.
    email = Varchar(length=320, unique=True)
    email_verified = Boolean(default=False)
    given_name = Varchar(length=100, default="")
    family_name = Varchar(length=100, default="")
    display_name = Varchar(length=200, default="")
    #: BCP 47 tag such as ``en`` or ``de-CH``.
    locale = Varchar(length=35, default="en")
    #: The organization chosen at the last sign-in.
    last_organization = ForeignKey(
        references=Organization, null=True, default=None, on_delete=OnDelete.set_null
    )
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class Membership(Table, tablename="membership"):
    """A user's place in an organization, with roles from ``policies/``. Unique per (organization, user)."""

    #: ``mem_…``
    id = Varchar(length=40, primary_key=True, default=ids.membership_id)
    organization = ForeignKey(references=Organization, on_delete=OnDelete.cascade, null=False)
    user = ForeignKey(references=User, on_delete=OnDelete.cascade, null=False)
    #: Role keys (JSON list of str). A key the policy does not define grants nothing.
    roles = JSON(default=[])
    #: ``active`` or ``invited``.
    status = Varchar(length=20, default="active")
    #: How the member arrived: ``portal``, ``api``, ``scim`` or ``jit``.
    source = Varchar(length=20, default="portal")
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    # --- members widget (portal_0004): copies of the user's names and email, so that search and keyset
    # pagination over one organization's members use one index. Kept in sync by accounts.sync_member_keys.
    #: The user's email address.
    email = Varchar(length=320, default="")
    #: The user's display name (else email), folded by ``accounts.fold``: the list's order and name search.
    sort_key = Varchar(length=320, default="")
    #: The user's family name, folded the same way (search by family name).
    family_key = Varchar(length=100, default="")
    # --- end members widget


class Invitation(Table, tablename="invitation"):
    """An emailed invitation to join an organization; the token exists in clear only in the email."""

    #: ``inv_…``
    id = Varchar(length=40, primary_key=True, default=ids.invitation_id)
    organization = ForeignKey(references=Organization, on_delete=OnDelete.cascade, null=False)
    email = Varchar(length=320)
    roles = JSON(default=[])
    #: SHA-256 of the link's token.
    token_hash = Varchar(length=64, unique=True)
    invited_by = ForeignKey(references=User, null=True, default=None, on_delete=OnDelete.set_null)
    expires_at = Timestamptz()
    accepted_at = Timestamptz(null=True, default=None)
    revoked_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    # --- members widget (portal_0004)
    #: The invite form's one-time id: the same form submitted twice finds its invitations, sends nothing.
    submission_id = Varchar(length=64, null=True, default=None)
    # --- end members widget


class Domain(Table, tablename="domain"):
    """A domain an organization claims, verified by a DNS TXT record. Unique per (organization, domain)."""

    #: ``dom_…``
    id = Varchar(length=40, primary_key=True, default=ids.domain_id)
    organization = ForeignKey(references=Organization, on_delete=OnDelete.cascade, null=False)
    #: Normalized: lowercase, IDNA, no trailing dot.
    domain = Varchar(length=253)
    #: ``pending``, ``verified`` or ``failed``.
    status = Varchar(length=20, default="pending")
    #: The value published as ``portal-verification=<token>``.
    verification_token = Varchar(length=64)
    #: Equals ``domain`` while verified, else NULL: the unique index makes one owner per domain race-safe.
    verified_domain = Varchar(length=253, null=True, default=None, unique=True)
    failure_reason = Text(null=True, default=None)
    last_checked_at = Timestamptz(null=True, default=None)
    verified_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    # --- domains widget (portal_0005_domains): the verification window and "Verify now".
    #: Start of the current verification window (added, or "Try again" after a failure); the domain fails
    #: when it is still pending ``PORTAL_DOMAIN_VERIFICATION_WINDOW`` later. ``failure_reason`` holds why a
    #: pending domain is not verified yet (the last check's finding) or why a failed one failed.
    pending_since = Timestamptz(null=True, default=None)
    #: When someone last asked for a check ("Verify now"); queued while later than ``last_checked_at``.
    check_requested_at = Timestamptz(null=True, default=None)
    # --- end domains widget


class Session(Table, tablename="portal_session"):
    """A signed-in browser. The cookie holds a random token; only its hash is stored."""

    #: ``ses_…``
    id = Varchar(length=40, primary_key=True, default=ids.session_id)
    #: SHA-256 of the cookie token.
    token_hash = Varchar(length=64, unique=True)
    user = ForeignKey(references=User, on_delete=OnDelete.cascade, null=False)
    active_organization = ForeignKey(
        references=Organization, null=True, default=None, on_delete=OnDelete.set_null
    )
    #: ``email_code``, ``passkey``, ``invitation``, ``sso``…
    auth_method = Varchar(length=30)
    ip = Varchar(length=45, default="")
    user_agent = Varchar(length=500, default="")
    created_at = Timestamptz(default=TimestamptzNow())
    #: Last time the user proved who they are (for step-up).
    authenticated_at = Timestamptz(default=TimestamptzNow())
    #: Written at most once a minute.
    last_seen_at = Timestamptz(default=TimestamptzNow())
    revoked_at = Timestamptz(null=True, default=None)
    #: ``logout``, ``idle``, ``absolute``, ``user``, ``removed``…
    revoke_reason = Varchar(length=30, null=True, default=None)


class AuditEvent(Table, tablename="audit_event"):
    """Who did what, where. Ids are kept as plain text so events outlive what they name."""

    #: ``aud_…``
    id = Varchar(length=40, primary_key=True, default=ids.audit_event_id)
    organization_id = Varchar(length=40, null=True, default=None, index=True)
    actor_id = Varchar(length=40, null=True, default=None)
    #: Dotted verb such as ``member.invited`` or ``login.failed``.
    action = Varchar(length=60)
    target = Varchar(length=320, default="")
    details = JSON(default={})
    ip = Varchar(length=45, default="")
    at = Timestamptz(default=TimestamptzNow(), index=True)


class LoginChallenge(Table, tablename="login_challenge"):
    """A one-time code sent by email (sign-in or email change); only the code's hash is stored."""

    #: ``chl_…``
    id = Varchar(length=40, primary_key=True, default=ids.challenge_id)
    #: The normalized address the code was (or, for unknown addresses, was not) sent to.
    email = Varchar(length=320)
    #: ``login``, ``email_change``, ``step_up``; WebAuthn challenges: ``webauthn_login``, ``webauthn_register``,
    #: ``webauthn_step_up`` (``code_hash`` then holds the SHA-256 of the challenge bytes).
    purpose = Varchar(length=20)
    #: The user it is for, when known (always set for ``email_change``).
    user = ForeignKey(references=User, null=True, default=None, on_delete=OnDelete.cascade)
    #: SHA-256 of ``<challenge id>:<code>``.
    code_hash = Varchar(length=64)
    #: Verification attempts so far (wrong ones lock the challenge at the maximum).
    attempts = Integer(default=0)
    #: Indexed for the sweep that deletes old challenges.
    expires_at = Timestamptz(index=True)
    #: Set once, atomically, by the one verification that succeeds.
    consumed_at = Timestamptz(null=True, default=None)
    ip = Varchar(length=45, default="")
    #: Purpose-specific data (e.g. the new address of an email change).
    details = JSON(default={})
    created_at = Timestamptz(default=TimestamptzNow())


class RateEvent(Table, tablename="rate_event"):
    """One counted request for a rate-limit key (sliding window); a key's old rows are pruned as it is hit."""

    id = BigSerial(primary_key=True)
    #: ``login.code.email:<email>``, ``login.code.ip:<ip>``…
    key = Varchar(length=400, index=True)
    at = Timestamptz()


class RateCounter(Table, tablename="rate_counter"):
    """The hits of a rate-limit key in one fixed window (portal_0019): the SCIM and management API limits,
    one statement per request. Unlogged on PostgreSQL (portal_0020): emptied by a crash, never waits for a
    WAL flush."""

    #: ``<key>@<window start, epoch seconds>``.
    slot = Varchar(length=440, primary_key=True)
    expires_at = Timestamptz(index=True)
    hits = Integer(default=0)


# --- security widget (portal_0007): passkeys ----------------------------------------------------------------
class Passkey(Table, tablename="passkey"):
    """A WebAuthn credential (discoverable) a user registered in the Security widget."""

    #: ``pk_…``
    id = Varchar(length=40, primary_key=True, default=ids.passkey_id)
    user = ForeignKey(references=User, on_delete=OnDelete.cascade, null=False, index=True)
    #: The credential id, base64url without padding (at most 1023 bytes, so at most 1364 characters).
    credential_id = Varchar(length=1400, unique=True)
    #: The COSE public key, base64url without padding.
    public_key = Text()
    #: The authenticator's signature counter (an unsigned 32-bit number; 0 for most synced passkeys).
    sign_count = BigInt(default=0)
    #: How the browser can reach the authenticator: ``internal``, ``hybrid``, ``usb``… (JSON list of str).
    transports = JSON(default=[])
    #: BE flag: the passkey may be synced between devices (a "multi-device" credential).
    backup_eligible = Boolean(default=False)
    #: BS flag at the last ceremony: the passkey is backed up (synced) now.
    backed_up = Boolean(default=False)
    #: The authenticator model (names the password manager), ``00000000-…`` when it declines to say.
    aaguid = Varchar(length=36, default="")
    #: Chosen by the user (defaults to the password manager or browser and system).
    name = Varchar(length=64)
    created_at = Timestamptz(default=TimestamptzNow())
    last_used_at = Timestamptz(null=True, default=None)


# --- end security widget


# --- issue 10: oidc ---------------------------------------------------------------------------------------
def oidc_client_id() -> str:
    return f"client_{secrets.token_urlsafe(12)}"


def oidc_grant_id() -> str:
    return f"grt_{secrets.token_urlsafe(16)}"


def oidc_token_id() -> str:
    return f"rtk_{secrets.token_urlsafe(16)}"


def oidc_delivery_id() -> str:
    return f"bcl_{secrets.token_urlsafe(16)}"


class SessionEnd(Table, tablename="session_end"):
    """A portal session that ended (sign-out, expiry, revoked in Security, member removed): written by
    ``portal.auth.sessions.ended`` in the same transaction, read by jobs that tell others (back-channel logout).
    """

    id = BigSerial(primary_key=True)
    session_id = Varchar(length=40, index=True)
    user_id = Varchar(length=40)
    #: Set when only this organization's side of the session ended (the member was removed from it).
    organization_id = Varchar(length=40, null=True, default=None)
    #: ``logout``, ``idle``, ``absolute``, ``user``, ``replaced``, ``removed``…
    reason = Varchar(length=30)
    at = Timestamptz(default=TimestamptzNow())
    #: When the OpenID Provider's job turned it into back-channel logout deliveries.
    oidc_processed_at = Timestamptz(null=True, default=None, index=True)


class OidcClient(Table, tablename="oidc_client"):
    """An app (relying party) registered with ``portal client create``."""

    #: The public ``client_id``: ``client_…``.
    id = Varchar(length=60, primary_key=True, default=oidc_client_id)
    name = Varchar(length=200)
    #: SHA-256 of the client secret (confidential clients); NULL for public clients (PKCE required).
    secret_hash = Varchar(length=64, null=True, default=None)
    public = Boolean(default=False)
    #: Exact-match redirect URIs (JSON list of str).
    redirect_uris = JSON(default=[])
    #: Where ``/oauth/logout`` may send the browser afterwards (JSON list of str).
    post_logout_redirect_uris = JSON(default=[])
    #: Receives OIDC Back-Channel Logout tokens.
    backchannel_logout_uri = Varchar(length=2000, null=True, default=None)
    #: ``ES256`` or ``RS256``: how its ID and access tokens are signed.
    signing_alg = Varchar(length=10, default="ES256")
    created_at = Timestamptz(default=TimestamptzNow())


class OidcKey(Table, tablename="oidc_key"):
    """A signing key of the provider's key set; the private JWK is sealed (purpose ``oidc-signing-key``)."""

    #: The JWK ``kid``.
    id = Varchar(length=60, primary_key=True)
    #: ``ES256`` or ``RS256``.
    alg = Varchar(length=10)
    #: The public JWK (JSON text).
    public_jwk = Text()
    #: The private JWK sealed by ``portal.core.crypto``.
    private_jwk = Text()
    created_at = Timestamptz(default=TimestamptzNow())
    #: When a newer key of the same alg took over signing; published until its last token expired.
    retired_at = Timestamptz(null=True, default=None)


class OidcGrant(Table, tablename="oidc_grant"):
    """One authorization: the code handed to a client and, once exchanged, the refresh-token family."""

    #: ``grt_…``
    id = Varchar(length=40, primary_key=True, default=oidc_grant_id)
    client = ForeignKey(references=OidcClient, on_delete=OnDelete.cascade, null=False)
    user = ForeignKey(references=User, on_delete=OnDelete.cascade, null=False)
    #: The portal session the tokens belong to (``sid``); they die with it.
    session_id = Varchar(length=40, index=True)
    organization_id = Varchar(length=40, null=True, default=None)
    scope = Varchar(length=500, default="openid")
    nonce = Varchar(length=500, null=True, default=None)
    redirect_uri = Varchar(length=2000)
    code_challenge = Varchar(length=128, null=True, default=None)
    #: SHA-256 of the authorization code (single use, 60 s).
    code_hash = Varchar(length=64, unique=True)
    code_expires_at = Timestamptz()
    code_used_at = Timestamptz(null=True, default=None)
    auth_time = Timestamptz()
    #: Authentication methods (JSON list, e.g. ``["otp"]``).
    amr = JSON(default=[])
    created_at = Timestamptz(default=TimestamptzNow())
    #: Set on logout, code replay or refresh-token reuse: nothing issued under it works any more.
    revoked_at = Timestamptz(null=True, default=None)


class OidcRefreshToken(Table, tablename="oidc_refresh_token"):
    """A refresh token (hash only); using it rotates it, reusing a rotated one revokes the grant."""

    id = Varchar(length=40, primary_key=True, default=oidc_token_id)
    grant = ForeignKey(references=OidcGrant, on_delete=OnDelete.cascade, null=False, index=True)
    token_hash = Varchar(length=64, unique=True)
    created_at = Timestamptz(default=TimestamptzNow())
    expires_at = Timestamptz()
    #: Set when it was exchanged for a new one (or revoked).
    used_at = Timestamptz(null=True, default=None)


class OidcLogoutDelivery(Table, tablename="oidc_logout_delivery"):
    """A back-channel logout token owed to one client for one ended session, retried until delivered."""

    id = Varchar(length=40, primary_key=True, default=oidc_delivery_id)
    client = ForeignKey(references=OidcClient, on_delete=OnDelete.cascade, null=False)
    session_id = Varchar(length=40)
    user_id = Varchar(length=40)
    attempts = Integer(default=0)
    next_attempt_at = Timestamptz(default=TimestamptzNow(), index=True)
    delivered_at = Timestamptz(null=True, default=None)
    #: Set when it was given up after the last retry.
    failed_at = Timestamptz(null=True, default=None)
    last_error = Text(default="")
    created_at = Timestamptz(default=TimestamptzNow())


# --- end issue 10: oidc
# --- issue 12: sso ---------------------------------------------------------------------------------------
class SsoConnection(Table, tablename="sso_connection"):
    """An organization's SAML 2.0 or OIDC identity provider (DESIGN §15)."""

    #: ``sso_…``
    id = Varchar(length=40, primary_key=True, default=ids.sso_connection_id)
    organization = ForeignKey(references=Organization, on_delete=OnDelete.cascade, null=False, index=True)
    #: ``saml`` or ``oidc``.
    protocol = Varchar(length=10)
    #: The guide it was set up with (a guide key: ``okta``, ``entra-id``, ``google-workspace``, ``jumpcloud``,
    #: ``onelogin``, ``generic-saml``, ``generic-oidc``, or an app owner's own guide).
    provider = Varchar(length=40, default="saml")
    name = Varchar(length=200)
    #: ``draft``, ``active`` or ``inactive``.
    status = Varchar(length=20, default="draft")
    # SAML: the IdP.
    idp_entity_id = Varchar(length=1000, default="")
    #: HTTP-Redirect SSO service URL.
    idp_sso_url = Varchar(length=2000, default="")
    #: PEM certificate the IdP signs with.
    idp_certificate = Text(default="")
    #: Metadata URL (fetched now and re-fetched on a schedule), or empty.
    idp_metadata_url = Varchar(length=2000, default="")
    metadata_fetched_at = Timestamptz(null=True, default=None)
    #: Last metadata fetch problem, or NULL.
    metadata_error = Text(null=True, default=None)
    #: Expiry of ``idp_certificate``.
    certificate_expires_at = Timestamptz(null=True, default=None)
    #: When the 30-day expiry warning was audited (once per certificate).
    certificate_warned_at = Timestamptz(null=True, default=None)
    #: Sign AuthnRequests (HTTP-Redirect binding signature) with the SP key.
    sign_requests = Boolean(default=False)
    #: Accept IdP-initiated responses (no InResponseTo); off by default.
    allow_idp_initiated = Boolean(default=False)
    #: Accept emails outside the organization's verified domains.
    allow_other_domains = Boolean(default=False)
    # OIDC: the IdP.
    oidc_issuer = Varchar(length=2000, default="")
    oidc_client_id = Varchar(length=500, default="")
    #: Sealed with ``portal.core.crypto`` (purpose ``sso.oidc_client_secret``).
    oidc_client_secret = Text(default="")
    #: Attribute names: ``{"email": ..., "given_name": ..., "family_name": ..., "groups": ...}``.
    attribute_mapping = JSON(default={})
    #: Group → role keys: ``{"Engineering": ["admin"]}``.
    group_roles = JSON(default={})
    #: Roles of a JIT member no group maps.
    default_roles = JSON(default=["member"])
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())
    # issue 12: sso widget (portal_0014)
    #: The SP's RSA key for signed AuthnRequests, sealed (purpose ``sso.sp_signing_key``).
    sp_private_key = Text(default="")
    #: The SP's self-signed certificate (PEM) published in its metadata when requests are signed.
    sp_certificate = Text(default="")
    #: Last "Test connection" that reached the ACS or callback, and whether it passed.
    tested_at = Timestamptz(null=True, default=None)
    test_ok = Boolean(default=False)


class SsoRequest(Table, tablename="sso_request"):
    """A sign-in we sent to an IdP: the AuthnRequest ID (SAML) or ``state`` (OIDC), used once."""

    #: ``ssr_…``: the AuthnRequest ID or the OIDC ``state``.
    id = Varchar(length=40, primary_key=True, default=ids.sso_request_id)
    connection = ForeignKey(references=SsoConnection, on_delete=OnDelete.cascade, null=False)
    #: ``login`` or ``test`` (a test creates no session).
    purpose = Varchar(length=10, default="login")
    return_to = Varchar(length=2000, default="/ui/")
    #: OIDC nonce and PKCE verifier.
    nonce = Varchar(length=100, default="")
    code_verifier = Varchar(length=200, default="")
    #: The browser that started it (SHA-256 of its CSRF cookie), so a response lands in the same browser.
    browser = Varchar(length=64, default="")
    expires_at = Timestamptz(index=True)
    consumed_at = Timestamptz(null=True, default=None)
    #: A test's outcome, shown on the test page: attributes received and problems found.
    result = JSON(default={})
    created_at = Timestamptz(default=TimestamptzNow())


class SsoAssertion(Table, tablename="sso_assertion"):
    """An assertion id already accepted: the unique key refuses its replay until it expires."""

    id = BigSerial(primary_key=True)
    #: ``<connection id> <assertion id>``.
    key = Varchar(length=600, unique=True)
    expires_at = Timestamptz(index=True)


# --- end issue 12: sso


# --- issue 15: serving (portal_0015)
class JobOutbox(Table, tablename="job_outbox"):
    """A job that could not be handed to Redis (it was down): ``portal worker`` queues it when Redis is back,
    so that nothing enqueued during an outage is lost."""

    id = BigSerial(primary_key=True)
    #: The registered job name.
    name = Varchar(length=100)
    #: The job's positional arguments (JSON list; jobs take ids).
    args = JSON(default=[])
    #: The deduplicating job id it was enqueued with, if any ("" for none).
    job_id = Varchar(length=200, default="")
    created_at = Timestamptz(default=TimestamptzNow())


# --- end issue 15: serving


# --- issue 16: newuser


class InvitationReplacedToken(Table, tablename="invitation_replaced_token"):
    """The link of an invitation that a resend replaced, so that opening it says a newer one was sent
    (instead of "this link does not work"). Only the SHA-256 of the old token is kept."""

    #: SHA-256 of the replaced token.
    token_hash = Varchar(length=64, primary_key=True)
    invitation = ForeignKey(references=Invitation, on_delete=OnDelete.cascade, null=False, index=True)
    replaced_at = Timestamptz(default=TimestamptzNow())


# --- issue 11: api ---------------------------------------------------------------------------------------
def api_key_id() -> str:
    return f"apk_{secrets.token_urlsafe(16)}"


class ApiKey(Table, tablename="api_key"):
    """A management API key (``portal api-key create``): the clear ``portal_sk_…`` value exists only once."""

    #: ``apk_…``: the actor of everything done with the key.
    id = Varchar(length=40, primary_key=True, default=api_key_id)
    name = Varchar(length=200)
    #: The first characters of the key (``portal_sk_AbC1``), shown to tell keys apart.
    prefix = Varchar(length=24)
    #: SHA-256 of the key.
    token_hash = Varchar(length=64, unique=True)
    #: ``organizations:read``, ``members:write``… (JSON list of str).
    scopes = JSON(default=[])
    #: When set, the key sees and changes this organization only. Plain text, no foreign key: a deleted
    #: organization must not turn a bound key into an unbound one.
    organization_id = Varchar(length=40, null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    #: Written at most once a minute.
    last_used_at = Timestamptz(null=True, default=None)
    revoked_at = Timestamptz(null=True, default=None)


class ApiIdempotency(Table, tablename="api_idempotency"):
    """The first answer to a POST with an ``Idempotency-Key``, replayed for the same key and body."""

    id = BigSerial(primary_key=True)
    #: ``<api key id>:<Idempotency-Key>``: keys are per API key.
    scope_key = Varchar(length=300, unique=True)
    #: SHA-256 of method, path, query and body: the same key with another request is refused.
    request_hash = Varchar(length=64)
    #: NULL while the first request is still running.
    status = Integer(null=True, default=None)
    #: The first answer's body, sealed with ``portal.core.crypto`` (it may hold a secret shown once).
    response_body = Text(default="")
    #: The response's headers worth replaying (JSON object).
    response_headers = JSON(default={})
    created_at = Timestamptz(default=TimestamptzNow())
    expires_at = Timestamptz(index=True)


# --- end issue 11: api


# --- issue 11: webhooks -----------------------------------------------------------------------------------
def webhook_endpoint_id() -> str:
    return f"whe_{secrets.token_urlsafe(16)}"


def webhook_event_id() -> str:
    # The Standard Webhooks message id (``webhook-id``): the same on every attempt and on a replay.
    return f"msg_{secrets.token_urlsafe(16)}"


def webhook_delivery_id() -> str:
    return f"whd_{secrets.token_urlsafe(16)}"


class WebhookEndpoint(Table, tablename="webhook_endpoint"):
    """A URL of the app that receives signed events (DESIGN §14)."""

    #: ``whe_…``
    id = Varchar(length=40, primary_key=True, default=webhook_endpoint_id)
    #: Checked against the SSRF rule when saved and again on every delivery.
    url = Varchar(length=2000)
    description = Varchar(length=200, default="")
    #: Event types it receives (JSON list of str); empty: every type.
    event_types = JSON(default=[])
    #: Only events of this organization (NULL: events of every organization and app-wide ones).
    organization_id = Varchar(length=40, null=True, default=None)
    #: ``whsec_<base64>`` sealed with ``portal.core.crypto`` (purpose ``webhook.secret``).
    secret = Text()
    enabled = Boolean(default=True)
    #: Why it was disabled (``failing``: every delivery failed for 5 days), NULL while enabled.
    disabled_reason = Varchar(length=40, null=True, default=None)
    disabled_at = Timestamptz(null=True, default=None)
    #: Start of the current run of failed attempts; cleared by a success.
    failing_since = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class WebhookEvent(Table, tablename="webhook_event"):
    """The outbox: one row per change, written in the change's own transaction."""

    #: ``msg_…``: the ``webhook-id`` header.
    id = Varchar(length=40, primary_key=True, default=webhook_event_id)
    #: ``membership.created``, ``user.logout``… (``portal.webhooks.events.EVENT_TYPES``).
    type = Varchar(length=60)
    organization_id = Varchar(length=40, null=True, default=None, index=True)
    #: The event's ``data`` object (JSON).
    data = JSON(default={})
    created_at = Timestamptz(default=TimestamptzNow(), index=True)


class WebhookDelivery(Table, tablename="webhook_delivery"):
    """An event owed to one endpoint; unique per (event, endpoint). Claimed by a lease while being sent."""

    #: ``whd_…``
    id = Varchar(length=40, primary_key=True, default=webhook_delivery_id)
    event = ForeignKey(references=WebhookEvent, on_delete=OnDelete.cascade, null=False)
    endpoint = ForeignKey(references=WebhookEndpoint, on_delete=OnDelete.cascade, null=False, index=True)
    #: ``pending``, ``delivered`` or ``failed`` (given up, or the endpoint was disabled or deleted).
    status = Varchar(length=20, default="pending")
    attempts = Integer(default=0)
    #: ``<event id> <endpoint id>``: the unique key that makes it one delivery per (event, endpoint).
    key = Varchar(length=100, unique=True)
    #: When it is due (first try, or the next retry); NULL once delivered or failed, so the index holds only
    #: what is still owed.
    next_attempt_at = Timestamptz(null=True, default=None, index=True)
    #: Held by the process sending it until then; an expired lease is claimed again (a killed process).
    lease_until = Timestamptz(null=True, default=None)
    delivered_at = Timestamptz(null=True, default=None)
    #: The last attempt's HTTP status (NULL: no answer), duration and error.
    last_status_code = Integer(null=True, default=None)
    last_duration_ms = Integer(null=True, default=None)
    last_error = Text(default="")
    created_at = Timestamptz(default=TimestamptzNow())


class WebhookAttempt(Table, tablename="webhook_attempt"):
    """The delivery log: one row per attempt to send a delivery."""

    id = BigSerial(primary_key=True)
    delivery = ForeignKey(references=WebhookDelivery, on_delete=OnDelete.cascade, null=False, index=True)
    at = Timestamptz(default=TimestamptzNow())
    #: ``delivered`` or ``failed``.
    status = Varchar(length=20)
    #: The HTTP status answered, NULL when there was no answer (refused URL, network error, timeout).
    status_code = Integer(null=True, default=None)
    duration_ms = Integer(default=0)
    error = Text(default="")


# --- end issue 11: webhooks


# --- issue 13: scim ---------------------------------------------------------------------------------------
class ScimDirectory(Table, tablename="scim_directory"):
    """An organization's SCIM 2.0 directory: its IdP pushes users and groups to ``/scim/v2/<id>/`` (DESIGN §16)."""

    #: ``scd_…``
    id = Varchar(length=40, primary_key=True, default=ids.scim_directory_id)
    organization = ForeignKey(references=Organization, on_delete=OnDelete.cascade, null=False, index=True)
    name = Varchar(length=200)
    #: The guide it was set up with: ``okta``, ``entra``, ``jumpcloud``, ``onelogin`` or ``generic``.
    provider = Varchar(length=40, default="generic")
    #: SCIM group id → role keys: ``{"scg_…": ["admin"]}``; members get the union of their groups' roles.
    group_roles = JSON(default={})
    #: Roles of a member the directory creates (before any group maps more).
    default_roles = JSON(default=["member"])
    #: Last self-test: ``{"ok": bool, "at": iso, "steps": [{"name", "ok", "detail"}]}``.
    self_test = JSON(default={})
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class ScimToken(Table, tablename="scim_token"):
    """A directory's bearer token (``portal_scim_…``); only its SHA-256 is stored."""

    #: ``sct_…``
    id = Varchar(length=40, primary_key=True, default=ids.scim_token_id)
    directory = ForeignKey(references=ScimDirectory, on_delete=OnDelete.cascade, null=False, index=True)
    #: SHA-256 of the token.
    token_hash = Varchar(length=64, unique=True)
    #: The first characters of the token, to tell tokens apart in the widget.
    hint = Varchar(length=24, default="")
    created_at = Timestamptz(default=TimestamptzNow())
    #: Set when it was rotated (it works until then) or revoked (now).
    expires_at = Timestamptz(null=True, default=None)
    last_used_at = Timestamptz(null=True, default=None)


class ScimUser(Table, tablename="scim_user"):
    """A SCIM User of a directory: the resource as the IdP sent it, and the membership it is linked to."""

    #: ``scu_…``: the SCIM ``id``.
    id = Varchar(length=40, primary_key=True, default=ids.scim_user_id)
    directory = ForeignKey(references=ScimDirectory, on_delete=OnDelete.cascade, null=False)
    organization_id = Varchar(length=40)
    #: ``userName`` as sent.
    user_name = Varchar(length=320)
    #: ``userName`` lowercased (caseExact false): unique per directory, and what ``userName eq`` searches.
    user_name_key = Varchar(length=320)
    external_id = Varchar(length=320, null=True, default=None)
    active = Boolean(default=True)
    #: The primary email, normalized (empty when the resource has none usable).
    email = Varchar(length=320, default="")
    #: The attributes as stored and returned (JSON object, without ``id``, ``meta`` and ``groups``).
    resource = JSON(default={})
    #: The portal user its email links to, and that user's membership in the organization.
    user_id = Varchar(length=40, null=True, default=None, index=True)
    membership_id = Varchar(length=40, null=True, default=None)
    #: Roles of the membership apart from what groups map (set when created or linked).
    base_roles = JSON(default=[])
    #: ``meta.version``: bumped by every change.
    version = Integer(default=1)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class ScimGroup(Table, tablename="scim_group"):
    """A SCIM Group of a directory; its members are rows of :class:`ScimGroupMember`."""

    #: ``scg_…``
    id = Varchar(length=40, primary_key=True, default=ids.scim_group_id)
    directory = ForeignKey(references=ScimDirectory, on_delete=OnDelete.cascade, null=False)
    organization_id = Varchar(length=40)
    display_name = Varchar(length=320)
    #: ``displayName`` lowercased: unique per directory.
    display_name_key = Varchar(length=320)
    external_id = Varchar(length=320, null=True, default=None)
    #: Other attributes as stored (JSON object, without ``members``).
    resource = JSON(default={})
    version = Integer(default=1)
    created_at = Timestamptz(default=TimestamptzNow())
    updated_at = Timestamptz(default=TimestamptzNow())


class ScimGroupMember(Table, tablename="scim_group_member"):
    """One member of a SCIM group: a row each, so concurrent PATCHes add and remove without losing any."""

    id = BigSerial(primary_key=True)
    group = ForeignKey(references=ScimGroup, on_delete=OnDelete.cascade, null=False)
    member = ForeignKey(references=ScimUser, on_delete=OnDelete.cascade, null=False, index=True)
    #: ``display`` as the IdP sent it with the member (returned as sent; empty if none).
    display = Varchar(length=320, default="")
    created_at = Timestamptz(default=TimestamptzNow())


class ScimRequest(Table, tablename="scim_request"):
    """A request a directory received (no bodies): the widget lists a directory's last 100."""

    id = BigSerial(primary_key=True)
    directory_id = Varchar(length=40)
    method = Varchar(length=10)
    #: The path below the directory's base URL, with the query.
    path = Varchar(length=1000)
    status = Integer()
    #: ``scimType`` or a short reason for an error response.
    detail = Varchar(length=200, default="")
    duration_ms = Integer(default=0)
    at = Timestamptz(default=TimestamptzNow())


# --- end issue 13: scim


# --- issue 14: links (portal_0018) ---------------------------------------------------------------------
class SetupLink(Table, tablename="setup_link"):
    """A one-time link for an IT admin outside the app (DESIGN §18): opening it starts a session limited to one
    organization and one intent. Only the hashes of the link's token and of the session cookie are stored."""

    #: ``lnk_…``
    id = Varchar(length=40, primary_key=True, default=ids.setup_link_id)
    organization = ForeignKey(references=Organization, on_delete=OnDelete.cascade, null=False, index=True)
    #: ``sso``, ``scim`` or ``domain_verification`` (``portal.links.service.INTENTS``).
    intent = Varchar(length=30)
    #: SHA-256 of the link's token (``portal_lnk_…``).
    token_hash = Varchar(length=64, unique=True)
    #: Who made it: ``cli`` or ``api:<credential id>``.
    created_by = Varchar(length=200, default="")
    created_at = Timestamptz(default=TimestamptzNow())
    #: The link must be opened before this.
    expires_at = Timestamptz(index=True)
    #: Set once, atomically, by the one request that opens it.
    opened_at = Timestamptz(null=True, default=None)
    #: Revoking ends the link and the session it opened.
    revoked_at = Timestamptz(null=True, default=None)
    #: SHA-256 of the session cookie the opening started (NULL until opened).
    session_token_hash = Varchar(length=64, null=True, default=None, unique=True)
    #: The session's hard end: opening time + ``PORTAL_ADMIN_PORTAL_SESSION_TTL``.
    session_expires_at = Timestamptz(null=True, default=None)
    #: Set when the IT admin signs out.
    session_ended_at = Timestamptz(null=True, default=None)
    ip = Varchar(length=45, default="")
    user_agent = Varchar(length=500, default="")


class OrganizationBrand(Table, tablename="organization_brand"):
    """An organization's logo and primary colour (feature ``org_branding``); one row per organization, kept
    out of ``organization`` so that the per-request session query does not carry the logo."""

    id = BigSerial(primary_key=True)
    organization = ForeignKey(references=Organization, on_delete=OnDelete.cascade, null=False, unique=True)
    #: ``#rrggbb``, checked for WCAG AA contrast against white text; NULL: the app's colour.
    primary_color = Varchar(length=7, null=True, default=None)
    #: The logo's bytes, base64 (checked PNG or JPEG, or sanitized SVG); NULL: none.
    logo = Text(null=True, default=None)
    #: ``image/png``, ``image/jpeg`` or ``image/svg+xml``.
    logo_type = Varchar(length=40, null=True, default=None)
    #: SHA-256 of the logo's bytes (ETag and cache-busting query).
    logo_sha256 = Varchar(length=64, null=True, default=None)
    updated_at = Timestamptz(default=TimestamptzNow())


# --- end issue 14: links


TABLES: tuple[type[Table], ...] = (
    Organization,
    User,
    Membership,
    Invitation,
    Domain,
    Session,
    AuditEvent,
    LoginChallenge,
    RateEvent,
    RateCounter,  # issues 13, 15 (portal_0019)
    Passkey,  # security widget (portal_0007)
    SessionEnd,  # issue 10: oidc (portal_0008)
    OidcClient,
    OidcKey,
    OidcGrant,
    OidcRefreshToken,
    OidcLogoutDelivery,
    SsoConnection,  # issue 12: sso
    SsoRequest,
    SsoAssertion,
    JobOutbox,  # issue 15: serving
    InvitationReplacedToken,  # issue 16: newuser
    ApiKey,  # issue 11: api
    ApiIdempotency,
    WebhookEndpoint,  # issue 11: webhooks
    WebhookEvent,
    WebhookDelivery,
    WebhookAttempt,
    ScimDirectory,  # issue 13: scim
    ScimToken,
    ScimUser,
    ScimGroup,
    ScimGroupMember,
    ScimRequest,
    SetupLink,  # issue 14: links
    OrganizationBrand,
)

#: Columns holding values sealed by :mod:`portal.core.crypto`, as (table, column, purpose): what
#: ``portal secrets rotate`` re-seals under a new ``PORTAL_SECRET_KEY``. A table with a sealed column adds
#: itself here.
SEALED_COLUMNS: list[tuple[type[Table], str, str]] = [
    (OidcKey, "private_jwk", "oidc-signing-key"),  # issue 10: oidc
    (SsoConnection, "oidc_client_secret", "sso.oidc_client_secret"),  # issue 12: sso
    (WebhookEndpoint, "secret", "webhook.secret"),  # issue 11: webhooks
    (SsoConnection, "sp_private_key", "sso.sp_signing_key"),  # issue 12: sso widget
    (
        ApiIdempotency,
        "response_body",
        "api.idempotency_response",
    ),  # issue 11: api (may hold a shown-once secret)
]

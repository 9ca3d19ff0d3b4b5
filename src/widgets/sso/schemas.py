"""Forms and output of the SSO widget.

Form fields are plain strings with defaults: the service validates them, so bad input comes back as a
message next to its field. Unknown fields (a forged ``organization_id``) are ignored by msgspec.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class CreateForm(msgspec.Struct):
    """New connection: the guide it follows (which fixes the protocol) and a name."""

    guide: str = ""
    name: str = ""


class IdpForm(msgspec.Struct):
    """SAML: where the IdP's values come from (``url``, ``upload`` or ``fields``) and those values."""

    source: str = ""
    idp_metadata_url: str = ""
    metadata_xml: str = ""
    idp_sso_url: str = ""
    idp_entity_id: str = ""
    idp_certificate: str = ""


class SettingsForm(msgspec.Struct):
    """Everything else on a connection: name, toggles, OIDC client, attribute and group → role mapping."""

    name: str = ""
    sign_requests: str = ""
    allow_idp_initiated: str = ""
    allow_other_domains: str = ""
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    #: Empty keeps the stored secret (it is never shown back).
    oidc_client_secret: str = ""
    map_email: str = ""
    map_given_name: str = ""
    map_family_name: str = ""
    map_groups: str = ""
    #: One ``Group name = role, role`` per line.
    group_roles: str = ""
    default_roles: str = ""


class EnforceForm(msgspec.Struct):
    enforced: str = ""


class ConnectionView(msgspec.Struct, frozen=True, kw_only=True):
    """One connection as the pages show it (never the client secret or SP key)."""

    id: str
    name: str
    protocol: str
    provider: str
    status: str
    # SAML: ours
    entity_id: str
    acs_url: str
    metadata_url: str
    # SAML: theirs
    idp_entity_id: str
    idp_sso_url: str
    idp_metadata_url: str
    idp_certificate: str
    metadata_fetched_at: datetime | None
    metadata_error: str | None
    certificate_expires_at: datetime | None
    certificate_subject: str
    #: ``ok``, ``expiring`` (within 30 days), ``expired`` or ``none``.
    certificate_state: str
    sign_requests: bool
    allow_idp_initiated: bool
    allow_other_domains: bool
    # OIDC
    oidc_issuer: str
    oidc_client_id: str
    has_client_secret: bool
    redirect_uri: str
    attribute_mapping: dict[str, str]
    group_roles: dict[str, list[str]]
    default_roles: list[str]
    tested_at: datetime | None
    test_ok: bool
    #: What is still missing before the connection can be activated or tested (empty: ready).
    missing: list[str]
    created_at: datetime

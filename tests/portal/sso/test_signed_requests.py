"""Signed AuthnRequests (HTTP-Redirect binding): pysaml2 verifies our signature with the certificate our SP
metadata publishes, and refuses a tampered request."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from saml2.sigver import verify_redirect_signature

from portal.core import crypto
from portal.core.settings import Settings
from portal.core.tables import SsoConnection
from portal.sso import saml
from tests.portal.sso.test_flow import setup

pytestmark = pytest.mark.db


async def test_pysaml2_verifies_our_signed_authn_request(
    tmp_path: Path, settings: Settings, client: httpx.AsyncClient
) -> None:
    key_pem, cert_pem = saml.new_sp_keypair("test sp")
    _, connection_id, idp, _ = await setup(
        tmp_path,
        settings,
        sign_requests=True,
        sp_private_key=crypto.seal(settings, "sso.sp_signing_key", key_pem.encode()),
        sp_certificate=cert_pem,
    )
    metadata = await client.get(f"/sso/saml/{connection_id}/metadata")
    published = saml.parse_xml(metadata.content, "metadata").find(".//ds:X509Certificate", saml.NS).text
    response = await client.get(f"/sso/saml/{connection_id}/login")
    assert response.status_code == 303
    query = dict(parse_qsl(urlsplit(response.headers["location"]).query))
    assert query["SigAlg"] == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    backend = idp.server.sec.sec_backend  # what pysaml2 itself uses for HTTP-Redirect signatures
    assert verify_redirect_signature(query, backend, cert=published) is True
    # The IdP still parses the request itself.
    assert idp.parse_request(response.headers["location"]).message.id
    tampered = {**query, "RelayState": "/elsewhere"}
    assert verify_redirect_signature(tampered, backend, cert=published) is False
    # Unsigned connections send no signature.
    await SsoConnection.update({SsoConnection.sign_requests: False}).where(SsoConnection.id == connection_id)
    plain = dict(
        parse_qsl(urlsplit((await client.get(f"/sso/saml/{connection_id}/login")).headers["location"]).query)
    )
    assert "Signature" not in plain and "SigAlg" not in plain

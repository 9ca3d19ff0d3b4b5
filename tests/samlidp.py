"""An independent SAML IdP for tests: pysaml2's ``saml2.server.Server`` (signs with Debian's xmlsec1).

It reads our SP metadata and our AuthnRequest with its own parser, and issues real signed responses.
"""

from __future__ import annotations

import base64
import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS
from saml2.server import Server

IDP_ENTITY_ID = "https://idp.example.test/saml/metadata"
IDP_SSO_URL = "https://idp.example.test/saml/sso"


def make_certificate(
    directory: Path, name: str, *, days: int = 365, not_before_days: int = -1
) -> tuple[Path, Path, str]:
    """A self-signed RSA certificate: (key file, certificate file, certificate PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=not_before_days))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = directory / f"{name}.key", directory / f"{name}.crt"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_file.write_text(pem)
    return key_file, cert_file, pem


@dataclass
class SamlIdp:
    server: Server
    certificate_pem: str
    directory: Path

    def parse_request(self, redirect_url: str) -> Any:
        """Parse our HTTP-Redirect AuthnRequest as the IdP does."""
        query = parse_qs(urlsplit(redirect_url).query)
        return self.server.parse_authn_request(query["SAMLRequest"][0], BINDING_HTTP_REDIRECT)

    def respond(
        self,
        *,
        sp_entity_id: str,
        acs_url: str,
        in_response_to: str | None,
        email: str,
        attributes: dict[str, list[str]] | None = None,
        sign_response: bool = False,
        sign_assertion: bool = True,
        audience: str | None = None,
    ) -> str:
        """A signed Response as the base64 ``SAMLResponse`` form value."""
        identity = (
            attributes
            if attributes is not None
            else {"email": [email], "givenName": ["Ada"], "sn": ["Lovelace"]}
        )
        response = self.server.create_authn_response(
            identity=identity,
            in_response_to=in_response_to,
            destination=acs_url,
            sp_entity_id=audience or sp_entity_id,
            name_id=_nameid(email),
            sign_response=sign_response,
            sign_assertion=sign_assertion,
            sign_alg="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            digest_alg="http://www.w3.org/2001/04/xmlenc#sha256",
            authn={"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:Password"},
        )
        return base64.b64encode(str(response).encode()).decode()

    def metadata(self) -> bytes:
        from saml2.metadata import entity_descriptor

        return str(entity_descriptor(self.server.config)).encode()


def _nameid(email: str) -> Any:
    from saml2.saml import NameID

    return NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=email)


def make_idp(directory: Path, sp_metadata_files: list[Path]) -> SamlIdp:
    """A pysaml2 IdP that knows the SPs in the given metadata files."""
    key_file, cert_file, pem = make_certificate(directory, "idp")
    config = IdPConfig()
    config.load(
        {
            "entityid": IDP_ENTITY_ID,
            "xmlsec_binary": shutil.which("xmlsec1"),
            "key_file": str(key_file),
            "cert_file": str(cert_file),
            "metadata": {"local": [str(p) for p in sp_metadata_files]},
            "service": {
                "idp": {
                    "endpoints": {
                        "single_sign_on_service": [
                            (IDP_SSO_URL, BINDING_HTTP_REDIRECT),
                            (IDP_SSO_URL, BINDING_HTTP_POST),
                        ]
                    },
                    "policy": {
                        "default": {
                            "lifetime": {"minutes": 15},
                            "name_form": "urn:oasis:names:tc:SAML:2.0:attrname-format:uri",
                        }
                    },
                    "name_id_format": [NAMEID_FORMAT_EMAILADDRESS],
                    "sign_response": False,
                    "sign_assertion": True,
                    "want_authn_requests_signed": False,
                }
            },
            "signing_algorithm": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            "digest_algorithm": "http://www.w3.org/2001/04/xmlenc#sha256",
        }
    )
    return SamlIdp(Server(config=config), pem, directory)

"""SAML 2.0 service provider (DESIGN §15): SP metadata, the AuthnRequest (HTTP-Redirect binding) and the
validation of a Response posted to the ACS (HTTP-POST binding).

Signatures are verified with signxml (lxml + cryptography, no system binary at run time). The XML is parsed
with entities, DTDs and network access off; a document with a DOCTYPE is refused outright. Only the element
the signature covers (``signed_xml`` from signxml) is read afterwards, so an assertion wrapped beside the
signed one is never looked at.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree  # type: ignore[import-untyped]
from signxml.exceptions import InvalidInput as SignxmlInvalidInput
from signxml.exceptions import InvalidSignature
from signxml.verifier import SignatureConfiguration, XMLVerifier

from portal.sso.problems import SsoProblem

NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
}
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
#: A posted SAMLResponse larger than this (base64) is refused before decoding.
MAX_RESPONSE = 512 * 1024
MAX_METADATA = 1024 * 1024


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml(data: bytes, what: str = "response") -> etree._Element:
    """Parse untrusted XML safely: no DOCTYPE (hence no entities), no network, no huge trees."""
    if b"<!DOCTYPE" in data.upper().replace(b"<!doctype", b"<!DOCTYPE") or b"<!ENTITY" in data.upper():
        raise SsoProblem("xml_dtd", f"The {what} contains a DTD or entity declarations, which are refused.")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise SsoProblem("xml_malformed", f"The {what} is not well-formed XML ({exc.msg}).") from None
    if root.getroottree().docinfo.doctype:
        raise SsoProblem("xml_dtd", f"The {what} contains a DTD, which is refused.")
    return root


# --- the SP side: our values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceProvider:
    """A connection's SP values: entity id, ACS URL and metadata URL under ``/sso/saml/<connection id>/``."""

    entity_id: str
    acs_url: str
    metadata_url: str

    @classmethod
    def of(cls, origin: str, connection_id: str) -> ServiceProvider:
        base = f"{origin}/sso/saml/{connection_id}"
        return cls(entity_id=f"{base}/metadata", acs_url=f"{base}/acs", metadata_url=f"{base}/metadata")


def sp_metadata(sp: ServiceProvider, certificate_pem: str | None = None) -> bytes:
    """The SP's EntityDescriptor (with its signing certificate when AuthnRequests are signed)."""
    md = NS["md"]
    root = etree.Element(f"{{{md}}}EntityDescriptor", nsmap={"md": md, "ds": NS["ds"]}, entityID=sp.entity_id)
    desc = etree.SubElement(
        root,
        f"{{{md}}}SPSSODescriptor",
        AuthnRequestsSigned="true" if certificate_pem else "false",
        WantAssertionsSigned="true",
        protocolSupportEnumeration=NS["samlp"],
    )
    if certificate_pem:
        key = etree.SubElement(desc, f"{{{md}}}KeyDescriptor", use="signing")
        info = etree.SubElement(key, f"{{{NS['ds']}}}KeyInfo")
        data = etree.SubElement(info, f"{{{NS['ds']}}}X509Data")
        etree.SubElement(data, f"{{{NS['ds']}}}X509Certificate").text = _pem_body(certificate_pem)
    etree.SubElement(
        desc, f"{{{md}}}NameIDFormat"
    ).text = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    etree.SubElement(
        desc,
        f"{{{md}}}AssertionConsumerService",
        Binding=POST,
        Location=sp.acs_url,
        index="0",
        isDefault="true",
    )
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


def _pem_body(pem: str) -> str:
    return "".join(line for line in pem.strip().splitlines() if "-----" not in line)


def authn_request_url(
    sp: ServiceProvider,
    idp_sso_url: str,
    request_id: str,
    now: datetime,
    *,
    relay_state: str = "",
    signing_key_pem: bytes | None = None,
) -> str:
    """The IdP URL carrying our AuthnRequest (HTTP-Redirect binding), signed when a key is given."""
    issue_instant = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    xml = (
        f'<samlp:AuthnRequest xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}" '
        f'ID="{request_id}" Version="2.0" IssueInstant="{issue_instant}" '
        f'Destination="{_attr(idp_sso_url)}" AssertionConsumerServiceURL="{_attr(sp.acs_url)}" '
        f'ProtocolBinding="{POST}">'
        f"<saml:Issuer>{_attr(sp.entity_id)}</saml:Issuer>"
        '<samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress" AllowCreate="true"/>'
        "</samlp:AuthnRequest>"
    )
    deflated = zlib.compress(xml.encode())[2:-4]  # raw DEFLATE, as the binding requires
    params = [("SAMLRequest", base64.b64encode(deflated).decode())]
    if relay_state:
        params.append(("RelayState", relay_state))
    if signing_key_pem is not None:
        params.append(("SigAlg", RSA_SHA256))
        key = serialization.load_pem_private_key(signing_key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):  # pragma: no cover - we only make RSA keys
            raise TypeError("the SP signing key must be RSA")
        signature = key.sign(urlencode(params).encode(), padding.PKCS1v15(), hashes.SHA256())
        params.append(("Signature", base64.b64encode(signature).decode()))
    separator = "&" if "?" in idp_sso_url else "?"
    return idp_sso_url + separator + urlencode(params)


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


# --- IdP metadata -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdpMetadata:
    entity_id: str
    sso_url: str
    certificate_pem: str


def parse_idp_metadata(data: bytes) -> IdpMetadata:
    """The entity id, HTTP-Redirect SSO URL and signing certificate from an IdP's metadata."""
    if len(data) > MAX_METADATA:
        raise SsoProblem("xml_too_large", "The metadata is larger than 1 MB.")
    root = parse_xml(data, "metadata")
    if root.tag == f"{{{NS['md']}}}EntitiesDescriptor":
        found = root.find("md:EntityDescriptor", NS)
        if found is None:
            raise SsoProblem("metadata_invalid", "The metadata names no IdP (no EntityDescriptor).")
        root = found
    if root.tag != f"{{{NS['md']}}}EntityDescriptor":
        raise SsoProblem("metadata_invalid", "This is not SAML metadata (no EntityDescriptor).")
    idp = root.find("md:IDPSSODescriptor", NS)
    if idp is None:
        raise SsoProblem("metadata_invalid", "The metadata describes no IdP (no IDPSSODescriptor).")
    sso_url = ""
    for service in idp.findall("md:SingleSignOnService", NS):
        if service.get("Binding") == REDIRECT:
            sso_url = service.get("Location", "")
            break
    if not sso_url:
        raise SsoProblem("metadata_invalid", "The metadata has no SingleSignOnService for HTTP-Redirect.")
    certificate = ""
    for key in idp.findall("md:KeyDescriptor", NS):
        if key.get("use", "signing") != "signing":
            continue
        cert = key.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
        if cert is not None and cert.text:
            certificate = to_pem(cert.text)
            break
    if not certificate:
        raise SsoProblem("metadata_invalid", "The metadata has no signing certificate.")
    return IdpMetadata(entity_id=root.get("entityID", ""), sso_url=sso_url, certificate_pem=certificate)


def to_pem(value: str) -> str:
    """A certificate as PEM, from PEM or bare base64 (as metadata holds it)."""
    body = "".join(value.split())
    if "-----BEGIN" in value:
        body = _pem_body(value).replace(" ", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def load_certificate(pem: str) -> x509.Certificate:
    """Parse a PEM (or bare base64) certificate; SsoProblem when it is not one."""
    try:
        return x509.load_pem_x509_certificate(to_pem(pem).encode())
    except (ValueError, binascii.Error):
        raise SsoProblem("certificate_invalid", "This is not a PEM X.509 certificate.") from None


# --- the Response -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """What a Response must match: ours and the connection's values, the requests we issued."""

    sp: ServiceProvider
    idp_entity_id: str
    certificate_pem: str
    now: datetime
    skew: timedelta
    #: Returns True when the id names a live request of ours for this connection.
    allow_idp_initiated: bool = False


@dataclass(slots=True)
class Assertion:
    assertion_id: str
    in_response_to: str
    name_id: str
    attributes: dict[str, list[str]] = field(default_factory=dict)
    #: Until when the assertion is valid (its id stays in the replay cache until then).
    not_on_or_after: datetime | None = None
    session_index: str = ""


def decode_post(saml_response: str) -> bytes:
    """The posted ``SAMLResponse`` (base64) as XML bytes."""
    if len(saml_response) > MAX_RESPONSE:
        raise SsoProblem("xml_too_large", "The SAML response is larger than 512 KB and was refused.")
    try:
        return base64.b64decode("".join(saml_response.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SsoProblem("xml_malformed", "The SAML response is not base64.") from None


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SsoProblem(
            "xml_malformed", f"The time {value!r} in the response is not a valid xs:dateTime."
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _verify(element: etree._Element, certificate_pem: str) -> etree._Element:
    """Verify the enveloped signature that is a direct child of ``element``; return the signed element."""
    document = etree.fromstring(etree.tostring(element), parser=_parser())
    config = SignatureConfiguration(location="./", expect_references=1)
    try:
        result = XMLVerifier().verify(
            document, x509_cert=certificate_pem, expect_config=config, parser=_parser()
        )
    except InvalidSignature as exc:
        raise SsoProblem(
            "signature_invalid", f"The signature does not verify with the configured certificate ({exc})."
        ) from None
    except SignxmlInvalidInput as exc:
        raise SsoProblem("signature_invalid", f"The signature is unusable ({exc}).") from None
    if isinstance(result, list):  # pragma: no cover - expect_references=1 returns one
        raise SsoProblem("signature_invalid", "The response carries more than one signed reference.")
    signed: etree._Element = result.signed_xml
    # The reference must cover the very element we read (its own ID), not some other element.
    if signed.tag != element.tag or signed.get("ID") != element.get("ID"):
        raise SsoProblem("signature_wrapping", "The signature covers another element than the one read.")
    return signed


def validate_response(xml: bytes, expected: Expected) -> Assertion:
    """Validate a Response fully (DESIGN §15) and return its one assertion; SsoProblem says what failed."""
    root = parse_xml(xml)
    if root.tag != f"{{{NS['samlp']}}}Response":
        raise SsoProblem("xml_malformed", "This is not a SAML Response.")
    status = root.find("samlp:Status/samlp:StatusCode", NS)
    if status is None or status.get("Value") != SUCCESS:
        value = status.get("Value", "") if status is not None else "none"
        message = root.findtext("samlp:Status/samlp:StatusMessage", default="", namespaces=NS)
        raise SsoProblem(
            "idp_status", f"The IdP answered with status {value.rsplit(':', 1)[-1]}. {message}".strip()
        )
    if root.find("saml:EncryptedAssertion", NS) is not None:
        raise SsoProblem("encrypted_assertion", "The assertion is encrypted; turn assertion encryption off.")
    destination = root.get("Destination")
    if destination is not None and destination != expected.sp.acs_url:
        raise SsoProblem("destination", f"The response was sent to {destination}, not to this ACS URL.")

    cert = load_certificate(expected.certificate_pem)
    if cert.not_valid_after_utc < expected.now:
        raise SsoProblem("certificate_expired", "The configured IdP certificate has expired.")

    if root.find("ds:Signature", NS) is not None:
        signed_response = _verify(root, expected.certificate_pem)
        assertions = signed_response.findall("saml:Assertion", NS)
        response_in_reply = signed_response.get("InResponseTo", "")
    else:
        signed_response = None
        assertions = root.findall("saml:Assertion", NS)
        response_in_reply = root.get("InResponseTo", "")
    if len(assertions) != 1:
        raise SsoProblem(
            "assertion_count", f"The response holds {len(assertions)} assertions; exactly one is expected."
        )
    assertion = assertions[0]
    if assertion.find("ds:Signature", NS) is not None:
        assertion = _verify(assertion, expected.certificate_pem)
    elif signed_response is None:
        raise SsoProblem("unsigned", "Neither the response nor the assertion is signed.")

    issuer = assertion.findtext("saml:Issuer", default="", namespaces=NS).strip()
    if expected.idp_entity_id and issuer != expected.idp_entity_id:
        raise SsoProblem(
            "issuer", f"The assertion was issued by {issuer!r}, not by {expected.idp_entity_id!r}."
        )

    now, skew = expected.now, expected.skew
    conditions = assertion.find("saml:Conditions", NS)
    not_on_or_after: datetime | None = None
    if conditions is not None:
        not_before = _time(conditions.get("NotBefore"))
        not_on_or_after = _time(conditions.get("NotOnOrAfter"))
        if not_before is not None and now + skew < not_before:
            raise SsoProblem("not_yet_valid", f"The assertion is valid only from {not_before.isoformat()}.")
        if not_on_or_after is not None and now - skew >= not_on_or_after:
            raise SsoProblem("expired", f"The assertion expired at {not_on_or_after.isoformat()}.")
        audiences = [
            (a.text or "").strip() for a in conditions.findall("saml:AudienceRestriction/saml:Audience", NS)
        ]
        if (
            conditions.find("saml:AudienceRestriction", NS) is not None
            and expected.sp.entity_id not in audiences
        ):
            raise SsoProblem(
                "audience", f"The assertion is for {', '.join(audiences) or 'no audience'}, not for this SP."
            )
    else:
        raise SsoProblem("audience", "The assertion has no Conditions (no audience restriction).")

    confirmation = None
    for candidate in assertion.findall("saml:Subject/saml:SubjectConfirmation", NS):
        if candidate.get("Method") == BEARER:
            confirmation = candidate.find("saml:SubjectConfirmationData", NS)
            break
    if confirmation is None:
        raise SsoProblem("subject", "The assertion has no bearer SubjectConfirmation.")
    recipient = confirmation.get("Recipient")
    if recipient != expected.sp.acs_url:
        raise SsoProblem("destination", f"The assertion's recipient is {recipient}, not this ACS URL.")
    confirmation_end = _time(confirmation.get("NotOnOrAfter"))
    if confirmation_end is None or now - skew >= confirmation_end:
        raise SsoProblem("expired", "The assertion's subject confirmation has expired.")
    in_reply = confirmation.get("InResponseTo", "")
    if response_in_reply and in_reply and response_in_reply != in_reply:
        raise SsoProblem("in_response_to", "The response and its assertion answer different requests.")
    in_reply = in_reply or response_in_reply
    if not in_reply and not expected.allow_idp_initiated:
        raise SsoProblem(
            "idp_initiated",
            "IdP-initiated sign-in is off for this connection: start the sign-in from the portal.",
        )

    ends = [t for t in (not_on_or_after, confirmation_end) if t is not None]
    name_id = assertion.findtext("saml:Subject/saml:NameID", default="", namespaces=NS).strip()
    attributes: dict[str, list[str]] = {}
    for attribute in assertion.findall("saml:AttributeStatement/saml:Attribute", NS):
        name = attribute.get("Name", "")
        values = [(v.text or "").strip() for v in attribute.findall("saml:AttributeValue", NS)]
        attributes.setdefault(name, []).extend(values)
        friendly = attribute.get("FriendlyName")
        if friendly and friendly != name:
            attributes.setdefault(friendly, []).extend(values)
    statement = assertion.find("saml:AuthnStatement", NS)
    return Assertion(
        assertion_id=assertion.get("ID", ""),
        in_response_to=in_reply,
        name_id=name_id,
        attributes=attributes,
        not_on_or_after=min(ends) if ends else None,
        session_index=statement.get("SessionIndex", "") if statement is not None else "",
    )


def new_request_id() -> str:
    """An AuthnRequest ID (an xs:ID: starts with a letter)."""
    return "ssr_" + secrets.token_hex(16)


def new_sp_keypair(common_name: str, *, days: int = 3650) -> tuple[str, str]:
    """A fresh RSA key and self-signed certificate for signing AuthnRequests: (key PEM, certificate PEM)."""
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()

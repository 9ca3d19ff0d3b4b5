"""SAML SP validation against responses from an independent IdP (pysaml2, signing with xmlsec1)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree

from portal.sso import saml
from portal.sso.problems import SsoProblem
from tests.samlidp import IDP_ENTITY_ID, IDP_SSO_URL, SamlIdp, make_certificate, make_idp

SP = saml.ServiceProvider.of("http://localhost:8000", "sso_test")
OTHER_SP = saml.ServiceProvider.of("http://localhost:8000", "sso_other")
REQUEST_ID = "ssr_0123456789abcdef"
SKEW = dt.timedelta(seconds=120)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> SamlIdp:
    directory = tmp_path_factory.mktemp("idp")
    for name, sp in (("sp", SP), ("other", OTHER_SP)):
        (directory / f"{name}.xml").write_bytes(saml.sp_metadata(sp))
    return make_idp(directory, [directory / "sp.xml", directory / "other.xml"])


def expected(idp: SamlIdp, **overrides: object) -> saml.Expected:
    values: dict[str, object] = {
        "sp": SP,
        "idp_entity_id": IDP_ENTITY_ID,
        "certificate_pem": idp.certificate_pem,
        "now": dt.datetime.now(dt.UTC),
        "skew": SKEW,
    }
    values.update(overrides)
    return saml.Expected(**values)  # type: ignore[arg-type]


def response(idp: SamlIdp, **kwargs: object) -> bytes:
    values: dict[str, object] = {
        "sp_entity_id": SP.entity_id,
        "acs_url": SP.acs_url,
        "in_response_to": REQUEST_ID,
        "email": "ada@acme.test",
    }
    values.update(kwargs)
    return saml.decode_post(idp.respond(**values))  # type: ignore[arg-type]


def problem(xml: bytes, exp: saml.Expected) -> str:
    with pytest.raises(SsoProblem) as caught:
        saml.validate_response(xml, exp)
    assert caught.value.fix, caught.value.code  # every refusal says what to change
    return caught.value.code


def test_the_idp_reads_our_metadata_and_authn_request(idp: SamlIdp) -> None:
    url = saml.authn_request_url(SP, IDP_SSO_URL, REQUEST_ID, dt.datetime.now(dt.UTC), relay_state="r1")
    parsed = idp.parse_request(url)
    assert parsed.message.id == REQUEST_ID
    assert parsed.message.issuer.text == SP.entity_id
    assert parsed.message.assertion_consumer_service_url == SP.acs_url
    assert parse_qs(urlsplit(url).query)["RelayState"] == ["r1"]


def test_a_signed_request_verifies_with_the_sp_certificate(idp: SamlIdp, tmp_path: Path) -> None:
    key_file, _, pem = make_certificate(tmp_path, "sp")
    url = saml.authn_request_url(
        SP, IDP_SSO_URL, REQUEST_ID, dt.datetime.now(dt.UTC), signing_key_pem=key_file.read_bytes()
    )
    query = urlsplit(url).query
    signed_part, _, signature = query.rpartition("&Signature=")
    from urllib.parse import unquote

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    public = x509.load_pem_x509_certificate(pem.encode()).public_key()
    public.verify(  # type: ignore[union-attr, call-arg]
        base64.b64decode(unquote(signature)), signed_part.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    metadata = etree.fromstring(saml.sp_metadata(SP, pem))
    assert metadata.find(".//{*}SPSSODescriptor").get("AuthnRequestsSigned") == "true"


@pytest.mark.parametrize(("sign_response", "sign_assertion"), [(False, True), (True, False), (True, True)])
def test_signed_responses_are_accepted(idp: SamlIdp, sign_response: bool, sign_assertion: bool) -> None:
    xml = response(idp, sign_response=sign_response, sign_assertion=sign_assertion)
    assertion = saml.validate_response(xml, expected(idp))
    assert assertion.name_id == "ada@acme.test"
    assert assertion.in_response_to == REQUEST_ID
    assert any("ada@acme.test" in values for values in assertion.attributes.values())
    assert assertion.assertion_id


def test_unsigned_response_is_refused(idp: SamlIdp) -> None:
    assert problem(response(idp, sign_assertion=False, sign_response=False), expected(idp)) == "unsigned"


def test_wrong_certificate_is_refused(idp: SamlIdp, tmp_path: Path) -> None:
    _, _, other = make_certificate(tmp_path, "other")
    assert problem(response(idp), expected(idp, certificate_pem=other)) == "signature_invalid"


def test_expired_configured_certificate_is_refused(idp: SamlIdp, tmp_path: Path) -> None:
    _, _, old = make_certificate(tmp_path, "old", days=-1, not_before_days=-30)
    assert problem(response(idp), expected(idp, certificate_pem=old)) == "certificate_expired"


def test_tampered_attribute_breaks_the_signature(idp: SamlIdp) -> None:
    xml = response(idp).replace(b"ada@acme.test", b"eve@acme.test")
    assert problem(xml, expected(idp)) == "signature_invalid"


def test_signature_wrapping_is_refused(idp: SamlIdp) -> None:
    """An evil assertion beside the signed one, or the signed one moved into an Extensions wrapper."""
    root = etree.fromstring(response(idp))
    signed = root.find("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion")
    evil = copy.deepcopy(signed)
    evil.set("ID", "_evil")
    for sig in evil.findall("{http://www.w3.org/2000/09/xmldsig#}Signature"):
        evil.remove(sig)
    for node in evil.iter("{urn:oasis:names:tc:SAML:2.0:assertion}NameID"):
        node.text = "eve@evil.test"
    root.insert(list(root).index(signed), evil)
    assert problem(etree.tostring(root), expected(idp)) == "assertion_count"
    # The evil assertion alone, carrying the original's signature: the signature covers another ID.
    root2 = etree.fromstring(response(idp))
    signed2 = root2.find("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion")
    evil2 = copy.deepcopy(signed2)
    evil2.set("ID", "_evil")
    for node in evil2.iter("{urn:oasis:names:tc:SAML:2.0:assertion}NameID"):
        node.text = "eve@evil.test"
    root2.replace(signed2, evil2)
    extensions = etree.SubElement(evil2, "{urn:oasis:names:tc:SAML:2.0:assertion}Advice")
    extensions.append(signed2)
    assert problem(etree.tostring(root2), expected(idp)) in {"signature_invalid", "signature_wrapping"}


def test_wrong_audience_is_refused(idp: SamlIdp) -> None:
    xml = response(idp, audience=OTHER_SP.entity_id)
    assert problem(xml, expected(idp)) == "audience"


def test_a_response_for_another_connection_is_refused(idp: SamlIdp) -> None:
    xml = response(idp, sp_entity_id=OTHER_SP.entity_id, acs_url=OTHER_SP.acs_url)
    assert problem(xml, expected(idp)) in {"destination", "audience"}


def test_expired_and_future_assertions_are_refused(idp: SamlIdp) -> None:
    xml = response(idp)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    assert problem(xml, expected(idp, now=later)) == "expired"
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    assert problem(xml, expected(idp, now=earlier)) == "not_yet_valid"
    # Within the skew it passes.
    saml.validate_response(xml, expected(idp, now=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)))


def test_idp_initiated_is_refused_unless_allowed(idp: SamlIdp) -> None:
    xml = response(idp, in_response_to=None)
    assert problem(xml, expected(idp)) == "idp_initiated"
    assert saml.validate_response(xml, expected(idp, allow_idp_initiated=True)).in_response_to == ""


def test_wrong_issuer_is_refused(idp: SamlIdp) -> None:
    assert problem(response(idp), expected(idp, idp_entity_id="https://other.example/")) == "issuer"


@pytest.mark.parametrize(
    ("xml", "code"),
    [
        (b"<not-closed", "xml_malformed"),
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&x;</samlp:Response>',
            "xml_dtd",
        ),
        (
            b'<!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><r>&b;</r>',
            "xml_dtd",
        ),
        (b"<r/>", "xml_malformed"),
    ],
)
def test_hostile_xml_is_refused(idp: SamlIdp, xml: bytes, code: str) -> None:
    assert problem(xml, expected(idp)) == code


def test_oversize_and_non_base64_posts_are_refused() -> None:
    with pytest.raises(SsoProblem) as caught:
        saml.decode_post("A" * (saml.MAX_RESPONSE + 4))
    assert caught.value.code == "xml_too_large"
    with pytest.raises(SsoProblem) as caught:
        saml.decode_post("not base64 !!!")
    assert caught.value.code == "xml_malformed"


def test_idp_metadata_is_read(idp: SamlIdp) -> None:
    meta = saml.parse_idp_metadata(idp.metadata())
    assert meta.entity_id == IDP_ENTITY_ID
    assert meta.sso_url == IDP_SSO_URL
    assert saml.load_certificate(meta.certificate_pem) == saml.load_certificate(idp.certificate_pem)

"""Recorded responses from the pysaml2 IdP (tests/portal/sso/fixtures, see record.py), validated at the time
they were issued: the good ones pass, each tampering case is refused for its reason, and the good one is
refused the second time it reaches the ACS."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import Domain, SsoConnection, SsoRequest
from portal.sso import saml, service
from portal.sso.problems import SsoProblem
from tests.factories import make_org
from tests.samlidp import IDP_ENTITY_ID

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED = json.loads((FIXTURES / "recorded.json").read_text())
ISSUED = dt.datetime.fromisoformat(RECORDED["issued_at"])
SP = saml.ServiceProvider.of("http://localhost:8000", RECORDED["connection_id"])


def expected(now: dt.datetime) -> saml.Expected:
    return saml.Expected(
        sp=SP,
        idp_entity_id=IDP_ENTITY_ID,
        certificate_pem=(FIXTURES / "idp.crt").read_text(),
        now=now,
        skew=dt.timedelta(seconds=120),
    )


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.mark.parametrize("name", ["good.xml", "response-signed.xml"])
def test_recorded_good_responses_pass(name: str) -> None:
    assertion = saml.validate_response(fixture(name), expected(ISSUED + dt.timedelta(seconds=30)))
    assert assertion.in_response_to == RECORDED["request_id"]
    assert assertion.attributes["email"] == ["ada@acme.test"]


@pytest.mark.parametrize(
    ("name", "offset", "code"),
    [
        ("wrapped.xml", 30, "assertion_count"),
        ("moved.xml", 30, {"signature_invalid", "signature_wrapping"}),
        ("wrong-audience.xml", 30, "audience"),
        ("good.xml", 3600, "expired"),
        ("good.xml", -3600, "not_yet_valid"),
    ],
)
def test_recorded_tampering_is_refused(name: str, offset: int, code: str | set[str]) -> None:
    with pytest.raises(SsoProblem) as caught:
        saml.validate_response(fixture(name), expected(ISSUED + dt.timedelta(seconds=offset)))
    assert caught.value.code in ({code} if isinstance(code, str) else code)
    assert caught.value.fix


@pytest.mark.db
async def test_a_recorded_response_is_accepted_once(
    settings: Settings, db: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = await make_org(features=["sso"])
    await Domain(
        organization=org["id"],
        domain="acme.test",
        status="verified",
        verified_domain="acme.test",
        verification_token="t",
    ).save()
    await SsoConnection(
        id=RECORDED["connection_id"],
        organization=org["id"],
        protocol="saml",
        name="Recorded",
        status="active",
        idp_entity_id=IDP_ENTITY_ID,
        idp_sso_url="https://idp.example.test/saml/sso",
        idp_certificate=(FIXTURES / "idp.crt").read_text(),
    ).save()
    await SsoRequest(
        id=RECORDED["request_id"],
        connection=RECORDED["connection_id"],
        expires_at=ISSUED + dt.timedelta(minutes=10),
    ).save()
    monkeypatch.setattr(clock, "utcnow", lambda: ISSUED + dt.timedelta(seconds=30))
    import base64

    posted = base64.b64encode(fixture("good.xml")).decode()
    outcome = await service.accept_saml(settings, RECORDED["connection_id"], posted)
    assert outcome.email == "ada@acme.test" and outcome.groups == ["Engineering"]
    with pytest.raises(SsoProblem) as caught:
        await service.accept_saml(settings, RECORDED["connection_id"], posted)
    assert caught.value.code in {"replay", "in_response_to"}

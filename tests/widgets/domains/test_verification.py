"""DNS lookups of the verification record against a real DNS server on loopback (dnslib)."""

from __future__ import annotations

import re

import pytest

from portal.core.settings import Settings
from tests.dnsserver import LoopbackDNS, Mode, Zone, free_port
from widgets.domains import verification
from widgets.domains.verification import Finding, lookup, make_resolver, record_name, record_value

DOMAIN = "example.com"
NAME = "_portal-verification.example.com"


@pytest.fixture
def token() -> str:
    return verification.new_token()


async def check(settings: Settings, token: str, domain: str = DOMAIN) -> verification.Lookup:
    return await lookup(make_resolver(settings), domain, token)


def test_tokens_are_long_random_lowercase_and_url_safe() -> None:
    tokens = {verification.new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert re.fullmatch(r"[a-z2-7]{32}", token)  # 160 bits of base32
    assert record_name("example.com") == "_portal-verification.example.com"
    assert record_value("abc") == "portal-verification=abc"


async def test_found(settings: Settings, zone: Zone, token: str) -> None:
    zone.publish(NAME, record_value(token))
    result = await check(settings, token)
    assert result.finding is Finding.FOUND
    assert result.verified and result.reason is None


async def test_found_among_several_txt_records(settings: Settings, zone: Zone, token: str) -> None:
    zone.publish(
        NAME,
        "v=spf1 -all",
        record_value(verification.new_token()),  # an old token, or another organization's
        record_value(token),
        "google-site-verification=abc",
    )
    assert (await check(settings, token)).finding is Finding.FOUND


async def test_value_split_into_several_strings_is_joined(settings: Settings, zone: Zone, token: str) -> None:
    value = record_value(token)
    zone.publish(NAME, [value[:7], value[7:30], value[30:]])
    assert (await check(settings, token)).finding is Finding.FOUND


async def test_long_records_over_tcp(settings: Settings, zone: Zone, token: str) -> None:
    # Answers over 512 bytes are truncated on UDP: the resolver retries over TCP. The 700-byte record
    # travels as three strings of at most 255 bytes.
    zone.publish(NAME, "k=" + "x" * 700, "y" * 300, record_value(token))
    assert (await check(settings, token)).finding is Finding.FOUND


async def test_letter_case_of_the_name_and_the_value_does_not_matter(
    settings: Settings, zone: Zone, token: str
) -> None:
    zone.publish("_PORTAL-Verification.Example.COM.", f"Portal-Verification={token.upper()}")
    assert (await check(settings, token)).finding is Finding.FOUND


async def test_stray_quotes_and_spaces_are_tolerated(settings: Settings, zone: Zone, token: str) -> None:
    zone.publish(NAME, f' "{record_value(token)}" ')
    assert (await check(settings, token)).finding is Finding.FOUND


async def test_a_prefix_or_a_longer_value_is_not_a_match(settings: Settings, zone: Zone, token: str) -> None:
    zone.publish(NAME, record_value(token)[:-1], record_value(token) + "x", token, f"x{record_value(token)}")
    result = await check(settings, token)
    assert result.finding is Finding.MISMATCH
    assert not result.verified and not result.retry
    assert result.reason is not None and "does not match" in result.reason


async def test_nxdomain(settings: Settings, zone: Zone, token: str) -> None:
    result = await check(settings, token)
    assert result.finding is Finding.NO_NAME
    assert not result.retry
    assert result.reason == "No TXT record found: the record name does not exist in DNS yet."


async def test_name_without_txt_records(settings: Settings, zone: Zone, token: str) -> None:
    zone.set_mode(NAME, Mode.NO_ANSWER)
    result = await check(settings, token)
    assert result.finding is Finding.NO_TXT
    assert result.reason == "No TXT record found at the record name yet."


async def test_record_at_the_apex_does_not_count(settings: Settings, zone: Zone, token: str) -> None:
    zone.publish(DOMAIN, record_value(token))
    assert (await check(settings, token)).finding is Finding.NO_NAME


async def test_servfail_is_a_retry(settings: Settings, zone: Zone, token: str) -> None:
    zone.set_mode(NAME, Mode.SERVFAIL)
    result = await check(settings, token)
    assert result.finding is Finding.DNS_ERROR
    assert result.retry
    assert result.reason == "DNS answered with an error (SERVFAIL); we will retry."


async def test_no_reply_is_a_timeout_and_a_retry(
    settings: Settings, dns_server: LoopbackDNS, zone: Zone, token: str
) -> None:
    zone.set_mode(NAME, Mode.SILENT)
    result = await lookup(make_resolver(dns_server.settings(settings, timeout=0.4)), DOMAIN, token)
    assert result.finding is Finding.TIMEOUT
    assert result.retry
    assert result.reason == "DNS did not answer in time; we will retry."


async def test_nobody_listening_is_a_retry(settings: Settings, token: str) -> None:
    import msgspec

    closed = msgspec.structs.replace(settings, dns_port=free_port(), dns_timeout=0.5)
    result = await check(closed, token)
    assert result.retry
    assert result.finding in {Finding.DNS_ERROR, Finding.TIMEOUT}


async def test_internationalized_domain_is_looked_up_in_its_ascii_form(
    settings: Settings, zone: Zone, token: str
) -> None:
    zone.publish("_portal-verification.xn--bcher-kva.example", record_value(token))
    assert (await check(settings, token, "xn--bcher-kva.example")).finding is Finding.FOUND


def test_resolver_uses_the_settings(settings: Settings) -> None:
    import msgspec

    configured = msgspec.structs.replace(
        settings, dns_nameservers=["127.0.0.1", "::1"], dns_port=5353, dns_timeout=3.0
    )
    resolver = make_resolver(configured)
    assert [(ns.address, ns.port) for ns in resolver.nameservers] == [("127.0.0.1", 5353), ("::1", 5353)]
    assert resolver.lifetime == 3.0
    assert resolver.cache is None

from __future__ import annotations

import pytest

from portal.core.domains import normalize_domain, normalize_domains
from portal.core.errors import InvalidInput


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("  acme.co.uk. ", "acme.co.uk"),
        ("sub.Example.com", "sub.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("acme.test", "acme.test"),
    ],
)
def test_normalizes(raw: str, expected: str) -> None:
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "Enter a domain name"),
        ("com", "public suffix"),
        ("co.uk", "public suffix"),
        ("github.io", "public suffix"),
        ("gmail.com", "free email provider"),
        ("Outlook.com.", "free email provider"),
        ("192.168.1.10", "not an IP address"),
        ("[::1]", "not an IP address"),
        ("https://example.com", "domain name only"),
        ("example.com/path", "domain name only"),
        ("bob@example.com", "domain name only"),
        ("exa mple.com", "not a valid domain name"),
        ("-bad.example.com", "not a valid domain name"),
        ("a..b.com", "not a valid domain name"),
        ("localhost", "public suffix"),
        ("x" * 64 + ".com", "not a valid domain name"),
    ],
)
def test_refuses_with_a_message_naming_the_field(raw: str, message: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        normalize_domain(raw, "allowed_email_domains")
    assert excinfo.value.field == "allowed_email_domains"
    assert message in excinfo.value.message


def test_list_is_deduplicated_and_sorted() -> None:
    assert normalize_domains(["B.example.com", "a.example.com", "b.example.com.", " "]) == [
        "a.example.com",
        "b.example.com",
    ]

"""DNS TXT verification: the record an organization publishes, and what a lookup of it finds.

The record is ``_portal-verification.<domain> TXT "portal-verification=<token>"``. Tokens are 160 random
bits in lowercase base32, so the whole value can be compared without regard to letter case (DNS names are
case-insensitive anyway, and some DNS hosting UIs change the case of what is pasted into them) at no cost in
strength. Several TXT records at the name are fine (any one may match); a value longer than 255 bytes
arrives as several strings, which are joined.
"""

from __future__ import annotations

import base64
import enum
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from portal.core.settings import Settings

RECORD_LABEL = "_portal-verification"
VALUE_PREFIX = "portal-verification="


def new_token() -> str:
    """A fresh verification token: 160 random bits, lowercase base32 (32 characters, URL-safe)."""
    return base64.b32encode(secrets.token_bytes(20)).decode("ascii").rstrip("=").lower()


def record_name(domain: str) -> str:
    """Where the TXT record goes: ``_portal-verification.<domain>``."""
    return f"{RECORD_LABEL}.{domain}"


def record_value(token: str) -> str:
    """The TXT record's value: ``portal-verification=<token>``."""
    return f"{VALUE_PREFIX}{token}"


class Finding(enum.StrEnum):
    """What one lookup found."""

    FOUND = "found"
    #: The record name does not exist (NXDOMAIN).
    NO_NAME = "no_name"
    #: The name exists but has no TXT record (NOERROR, empty answer).
    NO_TXT = "no_txt"
    #: TXT records exist at the name, none with the expected value.
    MISMATCH = "mismatch"
    #: No answer in time: try again later.
    TIMEOUT = "timeout"
    #: The servers answered with an error (SERVFAIL, REFUSED...) or could not be reached: try again later.
    DNS_ERROR = "dns_error"


@dataclass(frozen=True, slots=True)
class Lookup:
    """A lookup's finding and the sentence shown to people (stored as the domain's reason while pending)."""

    finding: Finding
    detail: str = ""

    @property
    def verified(self) -> bool:
        return self.finding is Finding.FOUND

    @property
    def retry(self) -> bool:
        """True when DNS itself failed: the check says nothing about the record and is simply repeated."""
        return self.finding in {Finding.TIMEOUT, Finding.DNS_ERROR}

    @property
    def reason(self) -> str | None:
        if self.finding is Finding.FOUND:
            return None
        if self.finding is Finding.DNS_ERROR and self.detail:
            return f"DNS answered with an error ({self.detail}); we will retry."
        return REASONS[self.finding]


REASONS = {
    Finding.NO_NAME: "No TXT record found: the record name does not exist in DNS yet.",
    Finding.NO_TXT: "No TXT record found at the record name yet.",
    Finding.MISMATCH: "A TXT record was found at the record name, but its value does not match. Check it "
    "for typos and extra characters.",
    Finding.TIMEOUT: "DNS did not answer in time; we will retry.",
    Finding.DNS_ERROR: "DNS did not answer; we will retry.",
}


def make_resolver(settings: Settings) -> dns.asyncresolver.Resolver:
    """dnspython's async resolver: ``PORTAL_DNS_NAMESERVERS`` on ``PORTAL_DNS_PORT``, else the system's.

    No cache: every check asks again, so a record published a minute ago is seen.
    """
    if settings.dns_nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(address, settings.dns_port) for address in settings.dns_nameservers
        ]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.port = settings.dns_port
    resolver.lifetime = settings.dns_timeout
    # Two tries per lookup: a single lost UDP packet should not cost a whole check interval.
    resolver.timeout = settings.dns_timeout / 2
    return resolver


def matches(values: Iterable[str], token: str) -> bool:
    """True if one of the TXT values is ``portal-verification=<token>`` (any letter case; surrounding
    spaces and stray quotes, as some DNS UIs keep them, are ignored)."""
    expected = record_value(token).lower()
    return any(value.strip().strip('"').strip().lower() == expected for value in values)


async def lookup(resolver: dns.asyncresolver.Resolver, domain: str, token: str) -> Lookup:
    """Look up ``_portal-verification.<domain>`` TXT and say whether it carries ``token``."""
    name = dns.name.from_text(record_name(domain))
    try:
        answer = await resolver.resolve(name, dns.rdatatype.TXT, search=False)
    except dns.resolver.NXDOMAIN:
        return Lookup(Finding.NO_NAME)
    except dns.resolver.NoAnswer:
        return Lookup(Finding.NO_TXT)
    except dns.exception.Timeout:
        return Lookup(Finding.TIMEOUT)
    except dns.resolver.NoNameservers as exc:
        return Lookup(Finding.DNS_ERROR, _rcodes(exc))
    except dns.exception.DNSException as exc:
        return Lookup(Finding.DNS_ERROR, type(exc).__name__)
    values = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
    return Lookup(Finding.FOUND) if matches(values, token) else Lookup(Finding.MISMATCH)


def _rcodes(exc: dns.resolver.NoNameservers) -> str:
    # dnspython lists each server's failure: an rcode's text (SERVFAIL, REFUSED) or an exception.
    errors = exc.kwargs.get("errors") or []
    codes = sorted({str(error[3]) for error in errors if len(error) > 3 and isinstance(error[3], str)})
    return ", ".join(codes)

"""Domains tests talk to a DNS server on loopback (tests/dnsserver.py): the app's settings point at it."""

from __future__ import annotations

import pytest

from portal.core.settings import Settings
from tests.dnsserver import LoopbackDNS, dns_server, zone

__all__ = ["dns_server", "zone"]


@pytest.fixture
def settings(settings: Settings, dns_server: LoopbackDNS) -> Settings:
    """The usual test settings, resolving through the loopback server (1 s timeout)."""
    return dns_server.settings(settings, timeout=1.0)

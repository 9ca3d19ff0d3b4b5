"""A DNS server on loopback for tests and the benchmark: dnslib, in-process threads, UDP and TCP on one port.

A test publishes records while the portal runs (``zone.publish(name, value)``) and can make a name answer
NXDOMAIN (the default for unknown names), NOERROR without an answer, SERVFAIL, or nothing at all (the
client times out). TXT values longer than 255 bytes are split into several strings, as DNS requires.
UDP answers over 512 bytes are truncated, so that clients retry over TCP as they would on the internet.
"""

from __future__ import annotations

import enum
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, TXT, DNSError, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from portal.core.settings import Settings


class Mode(enum.Enum):
    RECORDS = "records"
    #: The name exists, without TXT records (NOERROR, empty answer).
    NO_ANSWER = "no_answer"
    SERVFAIL = "servfail"
    #: No reply at all.
    SILENT = "silent"


def split_txt(value: str) -> list[bytes]:
    """A TXT value as DNS carries it: strings of at most 255 bytes."""
    data = value.encode()
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


class Zone(BaseResolver):
    """Names (case-insensitive, as in DNS) with TXT records or a failure mode; unknown names are NXDOMAIN."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, tuple[Mode, list[str | list[str]]]] = {}
        self.queries = 0

    @staticmethod
    def _key(name: str) -> str:
        return name.rstrip(".").lower()

    def publish(self, name: str, *values: str | list[str]) -> None:
        """Make ``name`` answer exactly these TXT records, one per value. A value given as a list of strings
        is sent split exactly so; a plain string is split every 255 bytes."""
        with self._lock:
            self._names[self._key(name)] = (Mode.RECORDS, list(values))

    def add(self, name: str, value: str | list[str]) -> None:
        """Add one more TXT record at ``name``."""
        with self._lock:
            _mode, values = self._names.get(self._key(name), (Mode.RECORDS, []))
            self._names[self._key(name)] = (Mode.RECORDS, [*values, value])

    def set_mode(self, name: str, mode: Mode) -> None:
        """Make ``name`` answer with no record, SERVFAIL, or not at all."""
        with self._lock:
            self._names[self._key(name)] = (mode, [])

    def remove(self, name: str) -> None:
        """Forget ``name`` (NXDOMAIN again)."""
        with self._lock:
            self._names.pop(self._key(name), None)

    def clear(self) -> None:
        with self._lock:
            self._names.clear()
            self.queries = 0

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        qname = request.q.qname
        with self._lock:
            self.queries += 1
            entry = self._names.get(self._key(str(qname)))
        reply = request.reply()
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        mode, values = entry
        if mode is Mode.SILENT:
            raise DNSError("silent on purpose")  # the handler sends nothing back
        if mode is Mode.SERVFAIL:
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if request.q.qtype in (QTYPE.TXT, QTYPE.ANY):
            for value in values:
                strings = [part.encode() for part in value] if isinstance(value, list) else split_txt(value)
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(strings), ttl=60))
        return reply


class _Handler(DNSHandler):
    """Truncates UDP answers over 512 bytes (TC flag, question kept), so the client retries over TCP.

    dnslib's own truncation drops the question section too, which resolvers rightly refuse.
    """

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        packed: bytes = reply.pack()
        if self.protocol == "udp" and len(packed) > 512:
            truncated = request.reply()
            truncated.header.tc = 1
            packed = truncated.pack()
        return packed


class _QuietLogger(DNSLogger):
    def __init__(self) -> None:
        super().__init__(logf=lambda message: None)


class _SerialUDPServer(socketserver.UDPServer):
    """One thread for all queries (dnslib's default starts a thread per query): for the benchmark."""

    allow_reuse_address = True


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class LoopbackDNS:
    """``zone`` served on 127.0.0.1:``port`` over UDP and TCP until :meth:`stop`."""

    def __init__(self, *, threaded: bool = True) -> None:
        self.zone = Zone()
        self.port = free_port()
        logger = _QuietLogger()
        udp_server = None if threaded else _SerialUDPServer
        self._servers = [
            DNSServer(
                self.zone,
                address="127.0.0.1",
                port=self.port,
                logger=logger,
                handler=_Handler,
                server=udp_server,
            ),
            DNSServer(
                self.zone, address="127.0.0.1", port=self.port, tcp=True, logger=logger, handler=_Handler
            ),
        ]

    def start(self) -> LoopbackDNS:
        for server in self._servers:
            server.start_thread()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()

    def settings(self, settings: Settings, *, timeout: float = 1.0) -> Settings:
        """``settings`` pointed at this server (with a short timeout, for the silent mode)."""
        import msgspec

        return msgspec.structs.replace(
            settings, dns_nameservers=["127.0.0.1"], dns_port=self.port, dns_timeout=timeout
        )


@pytest.fixture(scope="session")
def dns_server() -> Iterator[LoopbackDNS]:
    """One loopback DNS server for the run."""
    server = LoopbackDNS().start()
    yield server
    server.stop()


@pytest.fixture
def zone(dns_server: LoopbackDNS) -> Zone:
    """The loopback server's zone, emptied for this test."""
    dns_server.zone.clear()
    return dns_server.zone

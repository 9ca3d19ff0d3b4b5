"""Requests the portal makes to URLs that customers or app owners typed: webhook endpoints, IdP metadata,
OIDC issuers (DESIGN §14 SSRF rule).

A URL is refused unless it is ``https`` (or ``http`` where the caller allows it) and every address its host
resolves to is a public one: no loopback, private, link-local, carrier-grade NAT, multicast or reserved
addresses, unless the caller's setting allows them (tests, labs). The request then goes to the address that
was checked (the host name stays in ``Host`` and in TLS SNI/certificate checks), so a DNS answer that changes
between the check and the connection (DNS rebinding) cannot redirect it. Redirects are never followed and
response bodies are capped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from portal.core.errors import InvalidInput

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 1_000_000

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: what to connect to and what to call it."""

    url: str
    host: str
    port: int
    address: str


class ResponseTooLarge(Exception):
    """The response body was longer than the caller's limit."""


def _is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def parse_url(url: str, *, field: str = "url", allow_http: bool = False) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an absolute http(s) URL, or :class:`InvalidInput` naming ``field``."""
    value = url.strip()
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(field, "Enter a valid URL.") from exc
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        wanted = "http:// or https://" if allow_http else "https://"
        raise InvalidInput(field, f"The URL must start with {wanted}.")
    if not parts.hostname:
        raise InvalidInput(field, "The URL has no host name.")
    if parts.username or parts.password:
        raise InvalidInput(field, "The URL must not contain a user name or password.")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (a literal address resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


async def check(url: str, *, allow_private: bool, field: str = "url", allow_http: bool = False) -> Target:
    """The :class:`Target` for ``url``, or :class:`InvalidInput` naming ``field`` with the reason it is refused."""
    _, host, port = parse_url(url, field=field, allow_http=allow_http)
    try:
        addresses = await resolve(host, port)
    except OSError as exc:
        raise InvalidInput(field, f"The host name {host} could not be resolved.") from exc
    if not addresses:
        raise InvalidInput(field, f"The host name {host} could not be resolved.")
    if not allow_private:
        for address in addresses:
            if not _is_public(address):
                raise InvalidInput(
                    field, f"{host} resolves to {address}, a private or local address; use a public address."
                )
    return Target(url=url.strip(), host=host, port=port, address=str(addresses[0]))


def _pinned(target: Target) -> str:
    parts = urlsplit(target.url)
    address = f"[{target.address}]" if ":" in target.address else target.address
    netloc = f"{address}:{parts.port}" if parts.port else address
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


async def request(
    method: str,
    url: str,
    *,
    allow_private: bool,
    allow_http: bool = False,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (httpx's own per-request timeout, not a task deadline)
    max_bytes: int = DEFAULT_MAX_BYTES,
    client: httpx.AsyncClient | None = None,
    field: str = "url",
) -> httpx.Response:
    """Send one request to a checked URL. Raises :class:`InvalidInput` (refused URL), ``httpx.HTTPError``
    (network failure, timeout) or :class:`ResponseTooLarge`. The response's body is read (at most
    ``max_bytes``)."""
    target = await check(url, allow_private=allow_private, field=field, allow_http=allow_http)
    default_port = 443 if target.url.lower().startswith("https") else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    if ":" in target.host and not target.host.startswith("["):
        host_header = f"[{target.host}]" if target.port == default_port else f"[{target.host}]:{target.port}"
    sent_headers = {**(headers or {}), "Host": host_header}
    owned = client is None
    http = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
    try:
        outgoing = http.build_request(
            method,
            _pinned(target),
            headers=sent_headers,
            content=content,
            timeout=timeout,
            extensions={"sni_hostname": target.host},
        )
        response = await http.send(outgoing, stream=True, follow_redirects=False)
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise ResponseTooLarge(
                        f"the response from {target.host} is larger than {max_bytes} bytes"
                    )
        finally:
            await response.aclose()
        return httpx.Response(
            response.status_code, headers=response.headers, content=bytes(body), request=outgoing
        )
    finally:
        if owned:
            await http.aclose()

"""Outbound requests to typed URLs: the SSRF rule of DESIGN §14."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar import Litestar, Request, get

from portal.core import outbound
from portal.core.errors import InvalidInput
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "must start with https://"),
        ("http://example.com/x", "must start with https://"),
        ("https:///nohost", "no host name"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https://example.com:99999/", "valid URL"),
    ],
)
async def test_malformed_urls_are_refused_naming_the_field(url: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await outbound.check(url, allow_private=False, field="metadata_url")
    assert caught.value.field == "metadata_url"
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.5.5",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "[::1]",
        "[fe80::1]",
        "[::ffff:127.0.0.1]",
        "localhost",
        "224.0.0.1",
    ],
)
async def test_private_and_local_addresses_are_refused(host: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await outbound.check(f"https://{host}/hook", allow_private=False)
    assert "private or local address" in str(caught.value)


async def test_a_public_address_passes_and_private_ones_pass_when_allowed() -> None:
    target = await outbound.check("https://93.184.215.14/x", allow_private=False)
    assert target.address == "93.184.215.14"
    assert (await outbound.check("https://127.0.0.1:8443/x", allow_private=True)).port == 8443


async def test_an_unresolvable_host_is_refused() -> None:
    with pytest.raises(InvalidInput, match="could not be resolved"):
        await outbound.check("https://no-such-host.invalid/", allow_private=True)


@pytest.fixture
async def receiver() -> AsyncIterator[str]:
    import uvicorn

    @get("/echo", sync_to_thread=False)
    def echo(request: Request) -> dict[str, str]:
        return {"host": request.headers.get("host", "")}

    @get("/big", sync_to_thread=False)
    def big() -> str:
        return "x" * 5000

    @get("/redirect", status_code=302, sync_to_thread=False)
    def redirect() -> None:
        return None

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Litestar([echo, big, redirect]), port=port, log_level="warning"))
    import asyncio

    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.01)
    yield f"http://localhost:{port}"
    server.should_exit = True
    await task


async def test_requests_go_to_the_checked_address_with_the_host_name_kept(receiver: str) -> None:
    response = await outbound.request("GET", f"{receiver}/echo", allow_private=True, allow_http=True)
    assert response.status_code == 200
    assert response.json()["host"] == receiver.removeprefix("http://")


async def test_loopback_receivers_are_refused_without_the_setting(receiver: str) -> None:
    with pytest.raises(InvalidInput):
        await outbound.request("GET", f"{receiver}/echo", allow_private=False, allow_http=True)


async def test_bodies_are_capped_and_redirects_not_followed(receiver: str) -> None:
    with pytest.raises(outbound.ResponseTooLarge):
        await outbound.request("GET", f"{receiver}/big", allow_private=True, allow_http=True, max_bytes=1000)
    response = await outbound.request("GET", f"{receiver}/redirect", allow_private=True, allow_http=True)
    assert response.status_code == 302

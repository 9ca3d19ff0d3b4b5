"""Host awareness (issue 14): requests for a host the portal is not are refused (host-header injection); every
absolute URL the portal emits uses the canonical PORTAL_PUBLIC_URL, whichever allowed host was asked."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import msgspec
import pytest
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core.settings import Settings, SettingsError, load_settings
from portal.core.tables import SsoConnection
from portal.links import service as links
from portal.web.app import create_app
from tests.conftest import serve
from tests.factories import make_member, make_org, make_user
from tests.mailserver import Mailbox

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
CANONICAL = "https://portal.example.com"


@pytest.fixture
def hosted(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, public_url=CANONICAL, allowed_hosts=["portal.internal"])


async def get(
    client: httpx.AsyncClient, path: str, host: str | None, headers: dict[str, str] = HTML
) -> httpx.Response:
    extra = {} if host is None else {"host": host}
    return await client.get(path, headers={**headers, **extra})


async def test_unlisted_hosts_get_a_400_page(hosted: Settings, db: Engine, policy: PolicyEngine) -> None:
    async with serve(create_app(hosted, engine=db, policy=policy), CANONICAL) as client:
        assert (await get(client, "/login", None)).status_code == 200
        assert (await get(client, "/login", "portal.example.com:443")).status_code == 200
        assert (await get(client, "/login", "PORTAL.INTERNAL")).status_code == 200
        for host in (
            "evil.test",
            "portal.example.com.evil.test",
            "127.0.0.1",
            "localhost:8000",
            "[::1]:8000",
            "",
        ):
            page = await get(client, "/login", host)
            assert page.status_code == 400, host
            assert "This portal does not answer for that host name." in page.text
            assert page.headers["content-type"].startswith("text/html")
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert "set-cookie" not in page.headers
        api = await get(client, "/.well-known/openid-configuration", "evil.test", JSON)
        assert api.status_code == 400 and api.json()["error"]["status"] == 400
        # Load balancers probe health by address.
        assert (await get(client, "/healthz", "10.0.0.7:8000")).status_code == 200


async def test_loopback_names_are_allowed_when_the_public_url_is_loopback(client: httpx.AsyncClient) -> None:
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost"):
        assert (await get(client, "/login", host)).status_code == 200, host
    assert (await get(client, "/login", "evil.test")).status_code == 400


async def test_oidc_metadata_uses_the_canonical_url(
    hosted: Settings, db: Engine, policy: PolicyEngine
) -> None:
    async with serve(create_app(hosted, engine=db, policy=policy), "https://portal.internal") as client:
        metadata = (await client.get("/.well-known/openid-configuration")).json()
    urls = [v for v in metadata.values() if isinstance(v, str) and "://" in v]
    assert len(urls) >= 5
    assert metadata["issuer"] == CANONICAL
    assert all(url.startswith(CANONICAL + "/") or url == CANONICAL for url in urls), urls
    assert "portal.internal" not in str(metadata)


async def test_saml_metadata_uses_the_canonical_url(
    hosted: Settings, db: Engine, policy: PolicyEngine
) -> None:
    org = await make_org(features=["sso"])
    connection = SsoConnection(organization=org["id"], protocol="saml", name="Okta", status="active")
    await connection.save()
    async with serve(create_app(hosted, engine=db, policy=policy), "https://portal.internal") as client:
        metadata = await client.get(f"/sso/saml/{connection.id}/metadata")
    assert metadata.status_code == 200
    locations = re.findall(r'(?:entityID|Location)="([^"]+)"', metadata.text)
    assert locations
    assert all(url.startswith(f"{CANONICAL}/sso/saml/{connection.id}/") for url in locations), locations
    assert "portal.internal" not in metadata.text


async def test_mail_and_setup_links_use_the_canonical_url(
    hosted: Settings, db: Engine, policy: PolicyEngine, mail: Mailbox
) -> None:
    mailing = msgspec.structs.replace(hosted, smtp_url=mail.url)
    org = await make_org("acme", features=["domain_verification"])
    await make_member(org, await make_user("alice@acme.test"), ["admin"])
    async with serve(create_app(mailing, engine=db, policy=policy), "https://portal.internal") as client:
        page = await client.get("/login", headers=HTML)
        token = re.search(r'name="_csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        asked = await client.post(
            "/login", data={"_csrf_token": token, "email": "alice@acme.test"}, headers=HTML
        )
        assert asked.status_code == 303
        assert not asked.headers["location"].startswith("http")  # relative: never built from the Host header
        for _ in range(50):
            if mail.to("alice@acme.test"):
                break
            await asyncio.sleep(0.05)
    body = mail.to("alice@acme.test")[-1].get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert CANONICAL in body and "portal.internal" not in body
    created = await links.create_link(mailing, org["id"], "domain_verification")
    assert created.url.startswith(CANONICAL + "/setup/")


@pytest.mark.parametrize(
    "value", ["evil test", "-bad.example.com", "a..b", "https://portal.example.com", "host:8000"]
)
def test_allowed_hosts_setting_takes_host_names_only(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"PORTAL_ALLOWED_HOSTS": value})
    assert caught.value.variable == "PORTAL_ALLOWED_HOSTS"


def test_allowed_host_names(settings: Settings) -> None:
    secure: Any = msgspec.structs.replace(settings, public_url=CANONICAL, allowed_hosts=["Portal.Internal"])
    assert secure.allowed_host_names == frozenset({"portal.example.com", "portal.internal"})
    assert {"localhost", "127.0.0.1", "::1"} <= settings.allowed_host_names

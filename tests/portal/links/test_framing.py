"""Embedding (issue 14): only setup-link pages may be framed, only by PORTAL_ADMIN_PORTAL_FRAME_ANCESTORS, with
cookies that work in a third-party frame; every other page keeps ``frame-ancestors 'none'``."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core.settings import Settings
from portal.links import service
from portal.web.app import create_app
from tests.conftest import serve
from tests.factories import csrf_token, sign_in, sign_in_link

HTML = {"accept": "text/html"}
DOMAINS = "/ui/organization/domains"
APP = "https://app.example.com"
OTHER = "https://partner.example.net"


def frame_ancestors(response: httpx.Response) -> str:
    csp = response.headers["content-security-policy"]
    return next(p.strip() for p in csp.split(";") if p.strip().startswith("frame-ancestors"))


@pytest.fixture
def framed(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings,
        public_url="https://portal.example.com",
        admin_portal_frame_ancestors=[APP, OTHER],
    )


async def test_setup_link_pages_may_be_framed_by_the_configured_origins_only(
    framed: Settings, db: Engine, policy: PolicyEngine, world: dict[str, Any]
) -> None:
    async with serve(create_app(framed, engine=db, policy=policy), "https://portal.example.com") as client:
        created = await service.create_link(framed, world["acme"]["id"], "domain_verification")
        opened = await client.get(created.url.removeprefix(framed.origin), headers=HTML)
        assert opened.status_code == 303
        assert frame_ancestors(opened) == f"frame-ancestors {APP} {OTHER}"
        assert "x-frame-options" not in opened.headers
        cookie = next(
            c for c in opened.headers.get_list("set-cookie") if c.startswith("__Host-portal_setup=")
        )
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"samesite=none", "secure", "partitioned", "httponly", "path=/"} <= attributes
        assert not any(a.startswith("domain=") for a in attributes)

        page = await client.get(DOMAINS, headers=HTML)
        assert page.status_code == 200
        assert frame_ancestors(page) == f"frame-ancestors {APP} {OTHER}"
        assert "x-frame-options" not in page.headers
        # The CSRF cookie must reach the framed forms too.
        cookies = opened.headers.get_list("set-cookie") + page.headers.get_list("set-cookie")
        csrf = next(c for c in cookies if "csrf" in c.split("=")[0])
        assert "samesite=none" in csrf.lower() and "secure" in csrf.lower()
        # Even a refusal inside the frame can be shown there.
        refused = await client.get("/ui/organization/members", headers=HTML)
        assert refused.status_code == 403 and frame_ancestors(refused) == f"frame-ancestors {APP} {OTHER}"
        # A problem page (no session) is a setup-link page too.
        client.cookies.clear()
        used = await client.get(created.url.removeprefix(framed.origin), headers=HTML)
        assert used.status_code == 410 and frame_ancestors(used) == f"frame-ancestors {APP} {OTHER}"


async def test_everything_else_keeps_frame_ancestors_none(
    framed: Settings, db: Engine, policy: PolicyEngine, world: dict[str, Any]
) -> None:
    async with serve(create_app(framed, engine=db, policy=policy), "https://portal.example.com") as client:
        for path in ("/login", "/healthz", "/static/portal.css", "/nope"):
            response = await client.get(path, headers=HTML)
            assert frame_ancestors(response) == "frame-ancestors 'none'", path
            assert response.headers["x-frame-options"] == "DENY", path
        await sign_in(client, world["alice"], world["acme"])
        for path in ("/ui/", DOMAINS, "/ui/organization/settings", "/ui/account/profile"):
            response = await client.get(path, headers=HTML)
            assert response.status_code == 200, path
            assert frame_ancestors(response) == "frame-ancestors 'none'", path
            assert response.headers["x-frame-options"] == "DENY", path


async def test_without_configured_origins_nothing_may_be_framed(
    client: httpx.AsyncClient, settings: Settings, world: dict[str, Any]
) -> None:
    created = await service.create_link(settings, world["acme"]["id"], "domain_verification")
    opened = await client.get("/setup/" + created.url.rsplit("/", 1)[1], headers=HTML)
    assert frame_ancestors(opened) == "frame-ancestors 'none'"
    assert opened.headers["x-frame-options"] == "DENY"
    cookie = next(c for c in opened.headers.get_list("set-cookie") if c.startswith("portal_setup="))
    assert "samesite=lax" in cookie.lower() and "partitioned" not in cookie.lower()
    page = await client.get(DOMAINS, headers=HTML)
    assert frame_ancestors(page) == "frame-ancestors 'none'"


async def test_a_framed_form_posts_with_the_frame_cookies(
    framed: Settings, db: Engine, policy: PolicyEngine, world: dict[str, Any]
) -> None:
    async with serve(create_app(framed, engine=db, policy=policy), "https://portal.example.com") as client:
        await sign_in_link(client, world["acme"])
        token = await csrf_token(client, DOMAINS)
        added = await client.post(
            DOMAINS, data={"_csrf_token": token, "domain": "framed.example.com"}, headers=HTML
        )
        assert added.status_code == 303
        # A stale form (bad CSRF token) is refused, and the refusal can still be shown inside the frame.
        stale = await client.post(
            DOMAINS, data={"_csrf_token": "stale", "domain": "x.example.com"}, headers=HTML
        )
        assert stale.status_code == 403
        assert frame_ancestors(stale) == f"frame-ancestors {APP} {OTHER}"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("https://app.example.com", True),
        ("https://app.example.com:8443", True),
        ("http://localhost:3000", True),
        ("http://127.0.0.1:3000", True),
        ("http://app.example.com", False),
        ("https://app.example.com/embed", False),
        ("https://*.example.com", False),
        ("'self'", False),
        ("app.example.com", False),
    ],
)
def test_frame_ancestors_setting_accepts_origins_only(value: str, ok: bool) -> None:
    from portal.core.settings import SettingsError, load_settings

    if ok:
        assert load_settings({"PORTAL_ADMIN_PORTAL_FRAME_ANCESTORS": value}).admin_portal_frame_ancestors == [
            value
        ]
    else:
        with pytest.raises(SettingsError) as caught:
            load_settings({"PORTAL_ADMIN_PORTAL_FRAME_ANCESTORS": value})
        assert caught.value.variable == "PORTAL_ADMIN_PORTAL_FRAME_ANCESTORS"


def test_frame_ancestors_need_an_https_public_url() -> None:
    from portal.core.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as caught:
        load_settings(
            {"PORTAL_PUBLIC_URL": "http://portal.example.com", "PORTAL_ADMIN_PORTAL_FRAME_ANCESTORS": APP}
        )
    assert caught.value.variable == "PORTAL_ADMIN_PORTAL_FRAME_ANCESTORS"
    assert "https" in caught.value.problem
    for public in ("https://portal.example.com", "http://127.0.0.1:8000", "http://localhost:8000"):
        env = {
            "PORTAL_PUBLIC_URL": public,
            "PORTAL_ADMIN_PORTAL_FRAME_ANCESTORS": APP,
            "PORTAL_SECRET_KEY": "k" * 40,
        }
        assert load_settings(env).admin_portal_frame_ancestors == [APP]

"""A setup link opened inside an iframe (issue 14): the app's page on one loopback origin embeds the portal on
another; the IT admin adds a domain inside the frame under the organization's branding. The same link page
framed from an origin that is not allowed is refused by the browser."""

from __future__ import annotations

import base64
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from portal.core.settings import Settings
from portal.core.tables import OrganizationBrand
from portal.links import service
from tests.browser.conftest import SCREENSHOTS
from tests.conftest import free_port, portal_serve
from tests.factories import make_org


def png(rgb: tuple[int, int, int]) -> bytes:
    width, height = 96, 32

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = []
    for y in range(height):
        row = b"".join(bytes(rgb if (x // 8 + y // 8) % 2 else (255, 255, 255)) for x in range(width))
        rows.append(b"\x00" + row)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


class Pages:
    """A tiny web server standing in for the app that embeds the portal: path -> HTML."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.port = free_port()
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path, "not found").encode()
                self.send_response(200 if self.path in pages else 404)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    def __enter__(self) -> Pages:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def embed(title: str, src: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
        f'<body style="font-family:sans-serif;margin:16px;background:#eef1f5"><h1 style="font-size:20px">{title}</h1>'
        f'<iframe id="portal" src="{src}" title="Set up your organization" '
        'style="width:1180px;height:720px;border:1px solid #999;background:#fff"></iframe></body></html>'
    )


@pytest.fixture
def allowed_pages() -> Iterator[Pages]:
    with Pages() as pages:
        yield pages


@pytest.fixture
def other_pages() -> Iterator[Pages]:
    with Pages() as pages:
        yield pages


async def test_setup_link_in_an_iframe_from_an_allowed_origin_and_refused_from_another(
    browser: Browser,
    live_server_env: dict[str, str],
    allowed_pages: Pages,
    other_pages: Pages,
    db: Any,
    tmp_path: Path,
) -> None:
    port = free_port()
    portal = f"http://127.0.0.1:{port}"
    app_origin = f"http://localhost:{allowed_pages.port}"
    env = {
        **live_server_env,
        "PORTAL_PUBLIC_URL": portal,
        "PORTAL_ADMIN_PORTAL_FRAME_ANCESTORS": app_origin,
    }
    acme = await make_org("acme", "Acme Corporation", features=["domain_verification", "org_branding"])
    logo = png((15, 118, 110))
    await OrganizationBrand(
        organization=acme["id"],
        primary_color="#0f766e",
        logo=base64.b64encode(logo).decode(),
        logo_type="image/png",
        logo_sha256="a" * 64,
    ).save()
    settings = Settings(database_url=live_server_env["PORTAL_DATABASE_URL"], public_url=portal)
    first = await service.create_link(settings, acme["id"], "domain_verification")
    second = await service.create_link(settings, acme["id"], "domain_verification")
    assert first.url.startswith(portal + "/setup/")
    allowed_pages.pages["/settings"] = embed("ExampleApp · Settings", first.url)
    other_pages.pages["/settings"] = embed("Somewhere else", second.url)

    with portal_serve(env, port, tmp_path / "server.log"):
        context = await browser.new_context(viewport={"width": 1240, "height": 820})
        page = await context.new_page()
        console: list[str] = []
        page.on("console", lambda msg: console.append(msg.text))

        await page.goto(f"{app_origin}/settings")
        frame = page.frame_locator("#portal")
        await expect(frame.get_by_role("heading", name="Domains", exact=True)).to_be_visible()
        await expect(frame.get_by_text("IT admin via setup link")).to_be_visible()
        await expect(frame.locator("img.brand-logo")).to_have_attribute("alt", "Acme Corporation")
        # The organization's colour comes from its stylesheet: the primary button wears it.
        button = frame.get_by_role("button", name="Add domain")
        assert await button.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(15, 118, 110)"
        # No account: no profile or security link, no other widget.
        await expect(frame.get_by_role("link", name="Profile")).to_have_count(0)
        await expect(frame.get_by_role("link", name="Members")).to_have_count(0)

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "setup-link-embedded.png"))

        # A form inside the third-party frame works: its session and CSRF cookies reach the portal.
        await frame.get_by_label("Domain", exact=True).fill("acme-corp.example")
        await button.click()
        await expect(frame.locator(".flash")).to_contain_text("acme-corp.example added")
        await page.screenshot(path=str(SCREENSHOTS / "setup-link-embedded-added.png"))

        # The app reloads its page: the frame asks for the (used) link again and goes on in the same session.
        await page.reload()
        await expect(frame.get_by_role("heading", name="Domains", exact=True)).to_be_visible()
        await expect(frame.get_by_text("acme-corp.example").first).to_be_visible()

        # Anything outside the intent is refused inside the frame too, naming it.
        portal_frame = page.frame(url=lambda u: u.startswith(portal))
        assert portal_frame is not None
        await portal_frame.goto(f"{portal}/ui/organization/members")
        await expect(frame.get_by_text("(intent domain_verification)")).to_be_visible()
        await page.screenshot(path=str(SCREENSHOTS / "setup-link-outside-intent.png"))

        # The same kind of page framed by an origin that is not allowed: the browser refuses to show it.
        other = await context.new_page()
        other_console: list[str] = []
        other.on("console", lambda msg: other_console.append(msg.text))
        await other.goto(f"http://localhost:{other_pages.port}/settings")
        await other.wait_for_timeout(1500)
        framed = [f for f in other.frames if f != other.main_frame]
        assert framed, "no iframe"
        heading = await framed[0].locator("h1").count()
        assert heading == 0 or "Domains" not in (await framed[0].content())
        assert any("frame-ancestors" in line for line in other_console), other_console
        await other.screenshot(path=str(SCREENSHOTS / "setup-link-refused.png"))

        # Opened directly (the frame's cookies are partitioned under the app's site, so no session here), the
        # used link says so, under the organization's branding.
        direct = await context.new_page()
        await direct.goto(first.url)
        await expect(direct.get_by_role("heading", name="This setup link was already used")).to_be_visible()
        await expect(direct.locator("img.brand-logo")).to_have_attribute("alt", "Acme Corporation")
        await direct.screenshot(path=str(SCREENSHOTS / "setup-link-used.png"))
        await context.close()

"""Organization branding (issue 14): logo and primary colour in Organization settings, feature org_branding,
managed with sk_org_settings_manage; served by the portal; shown in /ui/ and on setup-link pages."""

from __future__ import annotations

import html
import re
import struct
import zlib
from typing import Any

import httpx
import pytest
from piccolo.engine.base import Engine

from policy import Feature, PolicyEngine
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, OrganizationBrand
from portal.links import service as links
from portal.web import branding
from tests.factories import csrf_token, make_member, make_org, make_user, sign_in, sign_in_link

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
URL = "/ui/organization/settings"
COLOR = f"{URL}/branding/color"
LOGO = f"{URL}/branding/logo"
REMOVE = f"{URL}/branding/logo/remove"


def png(width: int = 4, height: int = 2, rgb: tuple[int, int, int] = (29, 78, 216)) -> bytes:
    """A real PNG image, solid colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 20" width="80" height="40">'
    b'<defs><linearGradient id="g"><stop offset="0" stop-color="#1d4ed8"/></linearGradient></defs>'
    b'<rect width="40" height="20" rx="4" fill="url(#g)"/><text x="4" y="14" fill="#fff">Acme</text></svg>'
)


@pytest.fixture
async def world(db: Engine, policy: PolicyEngine) -> dict[str, Any]:
    acme = await make_org("acme", "Acme", features=[Feature.ORG_BRANDING, Feature.DOMAIN_VERIFICATION])
    plain = await make_org("plain", "Plain", features=[Feature.DOMAIN_VERIFICATION])
    globex = await make_org("globex", "Globex", features=[Feature.ORG_BRANDING])
    alice = await make_user("alice@acme.test")
    bob = await make_user("bob@acme.test")
    olga = await make_user("olga@globex.test")
    await make_member(acme, alice, ["admin"])
    await make_member(plain, alice, ["admin"])
    await make_member(acme, bob, ["member"])
    await make_member(globex, olga, ["admin"])
    return {"acme": acme, "plain": plain, "globex": globex, "alice": alice, "bob": bob, "olga": olga}


async def brand_row(org_id: str) -> dict[str, Any] | None:
    row: dict[str, Any] | None = (
        await OrganizationBrand.select().where(OrganizationBrand.organization == org_id).first()
    )
    return row


def field_error(page: str, field: str) -> str:
    match = re.search(
        rf'<span class="field-error" id="{field}-error"><span class="visually-hidden">Error: </span>(.*?)</span>',
        page,
        re.S,
    )
    assert match, f"no error shown for {field}"
    control = re.search(rf'<input id="{field}"[^>]*>', page)
    assert control and 'aria-invalid="true"' in control.group(0)
    return html.unescape(match.group(1)).strip()


async def upload(
    client: httpx.AsyncClient,
    content: bytes,
    filename: str = "logo.png",
    mime: str = "image/png",
    headers: dict[str, str] = HTML,
    token_page: str = "/ui/",
) -> httpx.Response:
    token = await csrf_token(client, token_page)
    return await client.post(
        LOGO, data={"_csrf_token": token}, files={"logo": (filename, content, mime)}, headers=headers
    )


async def set_color(
    client: httpx.AsyncClient, value: str, headers: dict[str, str] = HTML, token_page: str = "/ui/"
) -> httpx.Response:
    token = await csrf_token(client, token_page)
    return await client.post(COLOR, data={"_csrf_token": token, "primary_color": value}, headers=headers)


# --- colour ------------------------------------------------------------------------------------------------


def test_contrast_ratios_follow_wcag() -> None:
    assert round(branding.contrast_with_white("#000000"), 2) == 21.0
    assert round(branding.contrast_with_white("#ffffff"), 2) == 1.0
    assert round(branding.contrast_with_white("#767676"), 2) == 4.54  # the classic AA boundary grey
    assert round(branding.contrast_with_white("#777777"), 2) == 4.48


async def test_a_dark_enough_colour_is_saved_served_and_shown(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    saved = await set_color(client, "#1D4ED8")
    assert saved.status_code == 303
    row = await brand_row(world["acme"]["id"])
    assert row is not None and row["primary_color"] == "#1d4ed8"
    home = await client.get("/ui/", headers=HTML)
    match = re.search(
        r'<link rel="stylesheet" href="(/brand/' + world["acme"]["id"] + r'\.css\?v=\d+)">', home.text
    )
    assert match, "no organization stylesheet in the layout"
    css = await client.get(match.group(1))
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.text == ":root { --brand: #1d4ed8; }\n"
    audit = (
        await AuditEvent.select().where(AuditEvent.action == "branding.color_changed").output(load_json=True)
    )
    assert (
        audit[0]["details"] == {"primary_color": "#1d4ed8"} and audit[0]["actor_id"] == world["alice"]["id"]
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "#ffcc00",
            "White text on #ffcc00 has a contrast ratio of 1.51:1; WCAG AA needs at least 4.5:1. Choose a darker colour.",
        ),
        (
            "#777",
            "White text on #777777 has a contrast ratio of 4.48:1; WCAG AA needs at least 4.5:1. Choose a darker colour.",
        ),
        ("blue", "Enter a hex colour such as #3b4cca."),
        ("#12345g", "Enter a hex colour such as #3b4cca."),
        ("#1d4ed8; } body { display:none", "Enter a hex colour such as #3b4cca."),
    ],
)
async def test_bad_colours_are_refused_next_to_the_field(
    client: httpx.AsyncClient, world: dict[str, Any], value: str, message: str
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await set_color(client, value)
    assert page.status_code == 400
    assert field_error(page.text, "primary_color") == message
    assert await brand_row(world["acme"]["id"]) is None
    api = await set_color(client, value, headers=JSON)
    assert api.status_code == 400
    assert api.json()["error"]["fields"] == [{"key": "primary_color", "message": message}]


# --- logo --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "filename", "sent_type", "served_type"),
    [
        (png(), "logo.png", "image/png", "image/png"),
        (JPEG, "logo.jpg", "image/jpeg", "image/jpeg"),
        (SVG, "logo.svg", "image/svg+xml", "image/svg+xml"),
        # The bytes decide, never the name or the browser's word.
        (png(), "logo.svg", "image/svg+xml", "image/png"),
    ],
)
async def test_logos_are_served_with_the_type_their_bytes_show(
    client: httpx.AsyncClient,
    world: dict[str, Any],
    content: bytes,
    filename: str,
    sent_type: str,
    served_type: str,
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    response = await upload(client, content, filename, sent_type)
    assert response.status_code == 303, response.text
    home = await client.get("/ui/", headers=HTML)
    match = re.search(
        r'<img src="(/brand/'
        + world["acme"]["id"]
        + r'/logo\?v=[0-9a-f]{16})" alt="Acme" class="brand-logo">',
        home.text,
    )
    assert match, "no organization logo in the header"
    logo = await client.get(match.group(1))
    assert logo.status_code == 200
    assert logo.content == content
    assert logo.headers["content-type"] == served_type
    assert logo.headers["x-content-type-options"] == "nosniff"
    assert logo.headers["content-security-policy"] == "default-src 'none'; style-src 'unsafe-inline'; sandbox"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "Choose an image file to upload."),
        (b"GIF89a\x01\x00\x01\x00", "Upload a PNG, JPEG or SVG image (this file is none of them)."),
        (
            b"<html><script>alert(1)</script></html>",
            "Upload a PNG, JPEG or SVG image (this file is none of them).",
        ),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            "SVG logos may not contain <script> elements (script, embedded or external content).",
        ),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="1" height="1"/></svg>',
            "SVG logos may not have event handlers (attribute onload).",
        ),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><a href="javascript:alert(1)"><rect width="1" height="1"/></a></svg>',
            "SVG logos may not refer to other files or URLs.",
        ),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"><image xlink:href="https://evil.test/x.png"/></svg>',
            "SVG logos may not contain <image> elements (script, embedded or external content).",
        ),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><rect style="fill:url(https://evil.test/p)" width="1" height="1"/></svg>',
            "SVG logos may not refer to other files or URLs.",
        ),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><style>@import url(https://evil.test/a.css);</style></svg>',
            "SVG logos may not load external resources from their styles.",
        ),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><foreignObject><div xmlns="http://www.w3.org/1999/xhtml">x</div></foreignObject></svg>',
            "SVG logos may not contain <foreignObject> elements (script, embedded or external content).",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]><svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>',
            "SVG files with a DOCTYPE or entities are refused.",
        ),
        (b"<svg xmlns='http://www.w3.org/2000/svg'><rect", "This SVG file is not well-formed XML."),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><a href="#x"><set attributeName="href" to="javascript:alert(1)"/></a></svg>',
            "SVG logos may not contain <set> elements (script, embedded or external content).",
        ),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><rect data-x="java&#x09;script:alert(1)" width="1" height="1"/></svg>',
            "SVG logos may not refer to other files or URLs.",
        ),
    ],
    ids=[
        "empty",
        "gif",
        "html",
        "script",
        "onload",
        "javascript-href",
        "external-image",
        "style-url",
        "style-import",
        "foreign-object",
        "xxe",
        "broken",
        "animation",
        "javascript-with-tab",
    ],
)
async def test_bad_uploads_are_refused_next_to_the_field(
    client: httpx.AsyncClient, world: dict[str, Any], content: bytes, message: str
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await upload(client, content, "logo.svg", "image/svg+xml")
    assert page.status_code == 400
    assert field_error(page.text, "logo") == message
    assert await brand_row(world["acme"]["id"]) is None
    api = await upload(client, content, "logo.svg", "image/svg+xml", headers=JSON)
    assert api.status_code == 400 and api.json()["error"]["fields"][0]["key"] == "logo"


async def test_oversize_upload_is_refused(
    client: httpx.AsyncClient, world: dict[str, Any], settings: Settings
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    big = png() + b"\x00" * settings.brand_logo_max_bytes
    page = await upload(client, big)
    assert page.status_code == 413
    assert field_error(page.text, "logo") == "The image is larger than 256 KB; choose a smaller file."
    assert await brand_row(world["acme"]["id"]) is None


async def test_no_file_at_all_is_refused(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    token = await csrf_token(client, "/ui/")
    page = await client.post(
        LOGO, data={"_csrf_token": token}, files={"other": ("x", b"x", "text/plain")}, headers=HTML
    )
    assert page.status_code == 400 and field_error(page.text, "logo") == "Choose an image file to upload."


async def test_remove_logo(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    await sign_in(client, world["alice"], world["acme"])
    assert (await upload(client, png())).status_code == 303
    token = await csrf_token(client, URL)
    assert (await client.post(REMOVE, data={"_csrf_token": token}, headers=HTML)).status_code == 303
    row = await brand_row(world["acme"]["id"])
    assert row is not None and row["logo"] is None
    assert (await client.get(f"/brand/{world['acme']['id']}/logo")).status_code == 404


# --- the hostile matrix for the three branding routes -------------------------------------------------------

ROUTES = ["color", "logo", "remove"]


async def attempt(client: httpx.AsyncClient, name: str, token_page: str) -> httpx.Response:
    if name == "color":
        return await set_color(client, "#1d4ed8", headers=JSON, token_page=token_page)
    if name == "logo":
        return await upload(client, png(), headers=JSON, token_page=token_page)
    token = await csrf_token(client, token_page)
    return await client.post(REMOVE, data={"_csrf_token": token}, headers=JSON)


@pytest.mark.parametrize("name", ROUTES)
async def test_matrix(client: httpx.AsyncClient, world: dict[str, Any], name: str) -> None:
    # anonymous
    assert (await attempt(client, name, "/login")).status_code == 401
    # member without the permission
    await sign_in(client, world["bob"], world["acme"])
    denied = await attempt(client, name, "/ui/")
    assert denied.status_code == 403 and denied.json()["error"]["missing"] == "sk_org_settings_manage"
    # organization without the feature
    client.cookies.clear()
    await sign_in(client, world["alice"], world["plain"])
    off = await attempt(client, name, "/ui/")
    assert off.status_code == 403 and off.json()["error"]["missing"] == "org_branding"
    # an admin of another organization acts on their own organization only: acme stays untouched
    client.cookies.clear()
    await sign_in(client, world["olga"], world["globex"])
    assert (await attempt(client, name, "/ui/")).status_code == 303
    # a setup-link session (even for this organization) is refused, naming its intent
    client.cookies.clear()
    await sign_in_link(client, world["acme"], "domain_verification")
    refused = await attempt(client, name, "/ui/organization/domains")
    assert refused.status_code == 403 and refused.json()["error"]["intent"] == "domain_verification"
    assert await brand_row(world["acme"]["id"]) is None
    # success
    client.cookies.clear()
    await sign_in(client, world["alice"], world["acme"])
    assert (await attempt(client, name, "/ui/")).status_code == 303
    assert await brand_row(world["acme"]["id"]) is not None


async def test_anonymous_uploads_go_to_sign_in(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    token = await csrf_token(client, "/login")
    for path, data in ((COLOR, {"primary_color": "#1d4ed8"}), (LOGO, {}), (REMOVE, {})):
        response = await client.post(path, data={"_csrf_token": token, **data}, headers=JSON)
        assert response.status_code == 401, path
    assert await OrganizationBrand.count() == 0


async def test_brand_routes_of_an_organization_without_the_feature_are_not_found(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await OrganizationBrand(
        organization=world["plain"]["id"],
        primary_color="#1d4ed8",
        logo="AA==",
        logo_type="image/png",
        logo_sha256="0" * 64,
    ).save()
    assert (await client.get(f"/brand/{world['plain']['id']}.css")).status_code == 404
    assert (await client.get(f"/brand/{world['plain']['id']}/logo")).status_code == 404
    assert (await client.get("/brand/org_nope.css")).status_code == 404
    await sign_in(client, world["alice"], world["plain"])
    home = await client.get("/ui/", headers=HTML)
    assert "/brand/" + world["plain"]["id"] not in home.text


# --- setup-link pages carry the organization's branding -----------------------------------------------------


async def test_setup_link_pages_show_the_organization_branding(
    client: httpx.AsyncClient, world: dict[str, Any], settings: Settings
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    assert (await set_color(client, "#1d4ed8")).status_code == 303
    assert (await upload(client, png())).status_code == 303
    client.cookies.clear()
    created = await links.create_link(settings, world["acme"]["id"], "domain_verification")
    path = "/setup/" + created.url.rsplit("/", 1)[1]
    assert (await client.get(path, headers=HTML)).status_code == 303
    page = await client.get("/ui/organization/domains", headers=HTML)
    assert page.status_code == 200
    assert f'href="/brand/{world["acme"]["id"]}.css?v=' in page.text
    assert f'src="/brand/{world["acme"]["id"]}/logo?v=' in page.text
    # The "already used" page of that link is branded too.
    client.cookies.clear()
    used = await client.get(path, headers=HTML)
    assert used.status_code == 410
    assert f'href="/brand/{world["acme"]["id"]}.css?v=' in used.text
    assert f'src="/brand/{world["acme"]["id"]}/logo?v=' in used.text and 'alt="Acme"' in used.text


async def test_members_see_the_branding_without_the_forms(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await OrganizationBrand(organization=world["acme"]["id"], primary_color="#1d4ed8").save()
    await sign_in(client, world["bob"], world["acme"])
    page = await client.get(URL, headers=HTML)
    assert page.status_code == 200
    assert 'id="branding-heading">Branding</h2>' in page.text
    assert "<code>#1d4ed8</code>" in page.text
    assert COLOR not in page.text and LOGO not in page.text
    client.cookies.clear()
    await sign_in(client, world["alice"], world["plain"])
    assert "Branding</h2>" not in (await client.get(URL, headers=HTML)).text

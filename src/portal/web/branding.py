"""Organization branding (issue 14, feature ``org_branding``): logo and primary colour, checked on the way in,
served by the portal from its own routes (``/brand/<org id>.css``, ``/brand/<org id>/logo``).

The Organization settings widget calls :func:`save_color`, :func:`save_logo` and :func:`remove_logo`; the page
layout and the setup-link pages call :func:`page_brand`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from lxml import etree  # type: ignore[import-untyped]

from policy import Feature
from portal.auth import accounts
from portal.core import clock
from portal.core.settings import Settings
from portal.core.tables import Organization, OrganizationBrand
from portal.web.forms import FormErrors

#: WCAG 2.x AA for normal text: white text on the brand colour needs at least this contrast ratio.
AA_RATIO = 4.5
PNG, JPEG, SVG = "image/png", "image/jpeg", "image/svg+xml"
_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")
SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
#: SVG elements that run script, embed other documents or pull in other resources.
_SVG_FORBIDDEN = {
    "script", "foreignObject", "iframe", "embed", "object", "image", "feImage", "use", "audio", "video",
    "handler", "listener",
    # Animation can rewrite attributes (an href to a javascript: URL) after the checks below ran.
    "set", "animate", "animateMotion", "animateTransform", "discard",
}  # fmt: skip


def normalize_color(value: str) -> str:
    """``#abc`` / ``abc`` / ``#AABBCC`` → ``#aabbcc``; FormErrors naming ``primary_color`` otherwise."""
    match = _HEX.match(value.strip())
    if not match:
        raise FormErrors({"primary_color": "Enter a hex colour such as #3b4cca."})
    digits = match.group(1).lower()
    if len(digits) == 3:
        digits = "".join(ch * 2 for ch in digits)
    return f"#{digits}"


def _luminance(hex_color: str) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast_with_white(hex_color: str) -> float:
    """The WCAG contrast ratio of white text on ``hex_color`` (1 to 21)."""
    return 1.05 / (_luminance(hex_color) + 0.05)


def check_color(value: str) -> str:
    """The normalized colour, if white text on it meets WCAG AA (4.5:1); else a message naming the ratio."""
    color = normalize_color(value)
    ratio = contrast_with_white(color)
    if ratio < AA_RATIO:
        raise FormErrors(
            {
                "primary_color": (
                    f"White text on {color} has a contrast ratio of {ratio:.2f}:1; WCAG AA needs at least"
                    f" {AA_RATIO}:1. Choose a darker colour."
                )
            }
        )
    return color


def _svg_problem(data: bytes) -> str | None:
    """Why an SVG cannot be a logo (script, event handlers, external references, entities), or None."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        return "This SVG file is not well-formed XML."
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        return "SVG files with a DOCTYPE or entities are refused."
    if etree.QName(root).localname != "svg" or etree.QName(root).namespace not in {SVG_NS, None}:
        return "This file is not an SVG image."
    for element in root.iter():
        if not isinstance(element.tag, str):
            if isinstance(element, etree._ProcessingInstruction):
                return "SVG files with processing instructions are refused."
            continue
        name = etree.QName(element).localname
        if name in _SVG_FORBIDDEN:
            return f"SVG logos may not contain <{name}> elements (script, embedded or external content)."
        if name == "style" and re.search(r"url\s*\(|@import", element.text or "", re.I):
            return "SVG logos may not load external resources from their styles."
        for attribute, value in element.attrib.items():
            local = etree.QName(attribute).localname.lower()
            if local.startswith("on"):
                return f"SVG logos may not have event handlers (attribute {local})."
            if local == "href" and not value.strip().startswith("#"):
                return "SVG logos may not refer to other files or URLs."
            squeezed = re.sub(r"[\s\x00-\x1f]+", "", value).lower()  # browsers drop these inside URLs
            if re.search(r"url\s*\(\s*['\"]?\s*(?!#)", value, re.I) or "javascript:" in squeezed:
                return "SVG logos may not refer to other files or URLs."
    return None


def sniff_logo(data: bytes) -> str:
    """The content type of an acceptable logo, decided by its bytes (never by its name or the browser's word).

    FormErrors naming ``logo`` for anything else.
    """
    if not data:
        raise FormErrors({"logo": "Choose an image file to upload."})
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<?xml", b"<svg", b"<!--", b"<!doctype svg")):
        problem = _svg_problem(data)
        if problem:
            raise FormErrors({"logo": problem})
        return SVG
    raise FormErrors({"logo": "Upload a PNG, JPEG or SVG image (this file is none of them)."})


async def get_brand(organization_id: str) -> dict[str, Any] | None:
    """The organization's brand row (without the logo's bytes), or None."""
    row: dict[str, Any] | None = await (
        OrganizationBrand.select(
            OrganizationBrand.primary_color,
            OrganizationBrand.logo_type,
            OrganizationBrand.logo_sha256,
            OrganizationBrand.updated_at,
        )
        .where(OrganizationBrand.organization == organization_id)  # tenant check
        .first()
    )
    return row


async def _upsert(organization_id: str, values: dict[Any, Any]) -> None:
    values[OrganizationBrand.updated_at] = clock.utcnow()
    updated = await (
        OrganizationBrand.update(values)
        .where(OrganizationBrand.organization == organization_id)  # tenant check
        .returning(OrganizationBrand.id)
    )
    if not updated:
        row = OrganizationBrand(organization=organization_id)
        for column, value in values.items():
            setattr(row, column._meta.name, value)
        await row.save()


async def save_color(organization_id: str, value: str, *, actor_id: str, ip: str) -> str:
    """Check (WCAG AA against white text) and store the primary colour; empty ``value`` goes back to the app's."""
    color = None if not value.strip() else check_color(value)
    await _upsert(organization_id, {OrganizationBrand.primary_color: color})
    await accounts.audit(
        "branding.color_changed",
        organization_id=organization_id,
        actor_id=actor_id,
        target=organization_id,
        details={"primary_color": color},
        ip=ip,
    )
    return color or ""


async def save_logo(settings: Settings, organization_id: str, data: bytes, *, actor_id: str, ip: str) -> str:
    """Check the size and the bytes, then store the logo; returns its content type."""
    if len(data) > settings.brand_logo_max_bytes:
        raise FormErrors(
            {
                "logo": f"The image is larger than {settings.brand_logo_max_bytes // 1024} KB; choose a smaller file."
            },
            status_code=413,
        )
    content_type = sniff_logo(data)
    digest = hashlib.sha256(data).hexdigest()
    await _upsert(
        organization_id,
        {
            OrganizationBrand.logo: base64.b64encode(data).decode("ascii"),
            OrganizationBrand.logo_type: content_type,
            OrganizationBrand.logo_sha256: digest,
        },
    )
    await accounts.audit(
        "branding.logo_changed",
        organization_id=organization_id,
        actor_id=actor_id,
        target=organization_id,
        details={"type": content_type, "bytes": len(data), "sha256": digest},
        ip=ip,
    )
    return content_type


async def remove_logo(organization_id: str, *, actor_id: str, ip: str) -> None:
    await _upsert(
        organization_id,
        {
            OrganizationBrand.logo: None,
            OrganizationBrand.logo_type: None,
            OrganizationBrand.logo_sha256: None,
        },
    )
    await accounts.audit(
        "branding.logo_removed",
        organization_id=organization_id,
        actor_id=actor_id,
        target=organization_id,
        ip=ip,
    )


def app_brand(settings: Settings) -> dict[str, Any]:
    """The app's own branding (``PORTAL_BRAND_*``)."""
    return {
        "name": settings.brand_name,
        "logo_url": settings.brand_logo_url,
        "logo_alt": "",
        "favicon_url": settings.brand_favicon_url,
        "stylesheet": None,
        "organization_name": None,
    }


async def brand_for(settings: Settings, organization: dict[str, Any] | None) -> dict[str, Any]:
    """The branding a page shows for ``organization``: its own logo and colour where ``org_branding`` is on."""
    brand = app_brand(settings)
    if organization is None or Feature.ORG_BRANDING.value not in (organization.get("features") or ()):
        return brand
    row = await get_brand(str(organization["id"]))
    if row is None:
        return brand
    org_id = organization["id"]
    brand["organization_name"] = organization.get("display_name")
    if row["primary_color"]:
        brand["stylesheet"] = f"/brand/{org_id}.css?v={int(row['updated_at'].timestamp())}"
    if row["logo_sha256"]:
        brand["logo_url"] = f"/brand/{org_id}/logo?v={row['logo_sha256'][:16]}"
        brand["logo_alt"] = organization.get("display_name") or ""
    return brand


async def page_brand(request: Request[Any, Any, Any], organization_id: str | None) -> dict[str, Any]:
    """:func:`brand_for` by organization id (pages without a session, such as a setup link's problem page)."""
    settings: Settings = request.app.state.settings
    if organization_id is None:
        return app_brand(settings)
    organization = (
        await Organization.select(Organization.id, Organization.display_name, Organization.features)
        .where(Organization.id == organization_id)
        .first()
        .output(load_json=True)
    )
    return await brand_for(settings, organization)


NO_SESSION = {"public": True, "exclude_from_csrf": True}


async def _branded(organization_id: str) -> dict[str, Any]:
    """The brand row with the logo, for an organization whose ``org_branding`` is on; 404 otherwise."""
    organization = (
        await Organization.select(Organization.features)
        .where(Organization.id == organization_id)
        .first()
        .output(load_json=True)
    )
    if organization is None or Feature.ORG_BRANDING.value not in (organization["features"] or ()):
        raise NotFoundException("No branding for this organization.")
    row: dict[str, Any] | None = await (
        OrganizationBrand.select().where(OrganizationBrand.organization == organization_id).first()
    )
    if row is None:
        raise NotFoundException("No branding for this organization.")
    return row


@get("/brand/{name:str}", opt=NO_SESSION, include_in_schema=False)
async def organization_css(name: FromPath[str]) -> Response[str]:
    """``/brand/<org id>.css``: the organization's colour as the ``--brand`` custom property (no inline style)."""
    if not name.endswith(".css"):
        raise NotFoundException("Not found.")
    row = await _branded(name.removesuffix(".css"))
    if not row["primary_color"]:
        raise NotFoundException("No colour for this organization.")
    body = f":root {{ --brand: {row['primary_color']}; }}\n"
    return Response(body, media_type="text/css", headers={"Cache-Control": "public, max-age=300"})


@get("/brand/{organization_id:str}/logo", opt=NO_SESSION, include_in_schema=False)
async def organization_logo(organization_id: FromPath[str]) -> Response[bytes]:
    """The logo's bytes with the type found when it was uploaded, ``nosniff`` and a policy of its own."""
    row = await _branded(organization_id)
    if not row["logo"]:
        raise NotFoundException("No logo for this organization.")
    return Response(
        base64.b64decode(row["logo"]),
        media_type=row["logo_type"],
        headers={
            "Cache-Control": "public, max-age=300",
            "ETag": f'"{row["logo_sha256"]}"',
            "Content-Disposition": "inline; filename=logo",
            "X-Content-Type-Options": "nosniff",
        },
    )


HANDLERS = [organization_css, organization_logo]

"""The SSO widget: the hostile matrix of every route, creating connections from a guide, the IdP by fields,
metadata file or URL (and the refusals: malformed, oversize, DTD/entities, private addresses), settings and
mapping, the draft → active → inactive life, Enforce SSO, read-only view, certificate warnings."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from portal.core import crypto
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Organization, SsoConnection
from portal.sso import saml
from tests.factories import sign_in
from tests.samlidp import make_certificate

pytestmark = pytest.mark.db

HTML = {"accept": "text/html"}
JSON = {"accept": "application/json"}
URL = "/ui/organization/sso"


# --- helpers -------------------------------------------------------------------------------------------


async def token_for(client: httpx.AsyncClient) -> str:
    page = await client.get("/ui/", headers=HTML)
    assert page.status_code == 200, page.status_code
    match = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


async def post(
    client: httpx.AsyncClient,
    path: str,
    data: dict[str, str] | None = None,
    headers: dict[str, str] = HTML,
    files: dict[str, Any] | None = None,
) -> httpx.Response:
    return await client.post(
        path, data={"_csrf_token": await token_for(client), **(data or {})}, headers=headers, files=files
    )


async def flash_after(client: httpx.AsyncClient, response: httpx.Response) -> tuple[str, str]:
    """Follow a 303; (the flash message, the page's text)."""
    assert response.status_code == 303, response.text
    page = await client.get(response.headers["location"], headers=HTML)
    match = re.search(r'<div class="flash flash-(\w+)"[^>]*>(.*?)</div>', page.text, re.S)
    assert match, "no flash message"
    return f"{match.group(1)}: {html.unescape(match.group(2)).strip()}", page.text


def field_error(page: str, name: str) -> str:
    match = re.search(
        rf'<span class="field-error" id="{name}-error"><span class="visually-hidden">Error: </span>(.*?)</span>',
        page,
        re.S,
    )
    assert match, f"no error shown for the {name} field"
    return html.unescape(match.group(1)).strip()


def text(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


async def rows(org_id: str) -> list[dict[str, Any]]:
    return cast(
        list[dict[str, Any]],
        await SsoConnection.select()
        .where(SsoConnection.organization == org_id)
        .order_by(SsoConnection.created_at)
        .output(load_json=True),
    )


async def audit(action: str) -> list[dict[str, Any]]:
    return cast(
        list[dict[str, Any]],
        await AuditEvent.select()
        .where(AuditEvent.action == action)
        .order_by(AuditEvent.at)
        .output(load_json=True),
    )


async def add_connection(org: dict[str, Any], **values: Any) -> dict[str, Any]:
    connection = SsoConnection(
        organization=org["id"],
        protocol=values.pop("protocol", "saml"),
        provider=values.pop("provider", "okta"),
        name=values.pop("name", "Okta"),
        **values,
    )
    await connection.save()
    return cast(dict[str, Any], await SsoConnection.select().where(SsoConnection.id == connection.id).first())


def idp_metadata(tmp_path: Path, *, days: int = 365) -> tuple[bytes, str]:
    """An IdP's metadata as pysaml2 writes it, and its signing certificate."""
    from tests.samlidp import IDP_ENTITY_ID, IDP_SSO_URL

    _, _, pem = make_certificate(tmp_path, f"meta{days}", days=days)
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    xml = f"""<?xml version="1.0"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="{IDP_ENTITY_ID}">
  <md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{body}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="{IDP_SSO_URL}"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>"""
    return xml.encode(), pem


# --- the hostile matrix ----------------------------------------------------------------------------------

ROUTES = [
    ("GET", ""),
    ("POST", ""),
    ("POST", "/enforce"),
    ("GET", "/{id}"),
    ("POST", "/{id}/idp"),
    ("POST", "/{id}/settings"),
    ("POST", "/{id}/activate"),
    ("POST", "/{id}/deactivate"),
    ("POST", "/{id}/delete"),
    ("POST", "/{id}/test"),
]
FORM = {"guide": "okta", "name": "New", "enforced": "on", "source": "fields", "default_roles": "member"}


async def call(client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "GET":
        return await client.get(path, headers=headers)
    return await post(client, path, FORM, headers=headers)


async def unchanged(world: dict[str, Any], connection: dict[str, Any]) -> None:
    [row] = await rows(connection["organization"])
    assert row["name"] == connection["name"] and row["status"] == connection["status"]
    org = (
        await Organization.select(Organization.sso_enforced)
        .where(Organization.id == world["acme"]["id"])
        .first()
    )
    assert org["sso_enforced"] is False
    changes = await AuditEvent.select().where(AuditEvent.action.like("sso.%"))
    assert changes == []


@pytest.fixture
async def acme_connection(world: dict[str, Any]) -> dict[str, Any]:
    return await add_connection(
        world["acme"], name="Acme Okta", status="active", idp_sso_url="https://idp.test/sso"
    )


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_anonymous(
    client: httpx.AsyncClient,
    world: dict[str, Any],
    acme_connection: dict[str, Any],
    method: str,
    suffix: str,
) -> None:
    path = URL + suffix.format(id=acme_connection["id"])
    if method == "GET":
        page = await client.get(path, headers=HTML)
        assert page.status_code == 303 and page.headers["location"].startswith(
            "/login?return_to=/ui/organization/sso"
        )
        api = await client.get(path, headers=JSON)
    else:
        login = await client.get("/login", headers=HTML)
        token = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
        assert token
        data = {"_csrf_token": token.group(1), **FORM}
        page = await client.post(path, data=data, headers=HTML)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        api = await client.post(path, data=data, headers=JSON)
    assert api.status_code == 401
    await unchanged(world, acme_connection)


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_non_member(
    client: httpx.AsyncClient,
    world: dict[str, Any],
    acme_connection: dict[str, Any],
    method: str,
    suffix: str,
) -> None:
    await sign_in(client, world["carol"], world["acme"])
    response = await call(client, method, URL + suffix.format(id=acme_connection["id"]), JSON)
    assert response.status_code == 403
    assert response.json()["error"]["reason"] == "not_member"
    await unchanged(world, acme_connection)


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_member_without_the_permission(
    client: httpx.AsyncClient,
    world: dict[str, Any],
    acme_connection: dict[str, Any],
    method: str,
    suffix: str,
) -> None:
    # Bob (member) holds no SSO permission at all; Vic (sso_viewer) may read but not manage.
    user, missing = (
        (world["bob"], "sk_org_sso_read") if method == "GET" else (world["vic"], "sk_org_sso_manage")
    )
    await sign_in(client, user, world["acme"])
    path = URL + suffix.format(id=acme_connection["id"])
    response = await call(client, method, path, HTML)
    assert response.status_code == 403
    assert missing in response.text
    api = await call(client, method, path, JSON)
    assert api.json()["error"] | {"reason": "missing_permission", "missing": missing} == api.json()["error"]
    await unchanged(world, acme_connection)


@pytest.mark.parametrize(("method", "suffix"), ROUTES)
async def test_organization_without_the_feature(
    client: httpx.AsyncClient, world: dict[str, Any], method: str, suffix: str
) -> None:
    initech_connection = await add_connection(world["initech"], name="Initech IdP")
    await sign_in(client, world["erin"], world["initech"])
    path = URL + suffix.format(id=initech_connection["id"])
    response = await call(client, method, path, HTML)
    assert response.status_code == 403
    assert "Single sign-on is not enabled for this organization" in response.text
    api = await call(client, method, path, JSON)
    assert api.json()["error"]["reason"] == "feature_disabled" and api.json()["error"]["missing"] == "sso"
    [row] = await rows(world["initech"]["id"])
    assert row["name"] == "Initech IdP" and row["status"] == "draft"


@pytest.mark.parametrize(("method", "suffix"), [r for r in ROUTES if "{id}" in r[1]])
async def test_another_organizations_connection_is_not_found(
    client: httpx.AsyncClient,
    world: dict[str, Any],
    acme_connection: dict[str, Any],
    method: str,
    suffix: str,
) -> None:
    await sign_in(client, world["carol"], world["globex"])
    path = URL + suffix.format(id=acme_connection["id"])
    response = await call(client, method, path, HTML)
    assert response.status_code == 404
    assert "Acme Okta" not in response.text
    api = await call(client, method, path, JSON)
    assert api.status_code == 404
    assert (await call(client, method, URL + suffix.format(id="sso_doesnotexist"), JSON)).status_code == 404
    await unchanged(world, acme_connection)
    page = await client.get(URL, headers=HTML)
    assert "Acme Okta" not in page.text


async def test_without_the_feature_the_widget_is_hidden(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["erin"], world["initech"])
    home = await client.get("/ui/", headers=HTML)
    assert f'href="{URL}"' not in home.text
    client.cookies.clear()
    await sign_in(client, world["alice"], world["acme"])
    home = await client.get("/ui/", headers=HTML)
    assert home.text.count(f'href="{URL}"') == 2  # navigation and home card


# --- creating a connection -------------------------------------------------------------------------------


async def test_create_a_saml_connection_from_a_guide(
    client: httpx.AsyncClient, world: dict[str, Any], settings: Settings
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    form = await client.get(URL, headers=HTML)
    for title in (
        "Okta",
        "Microsoft Entra ID",
        "Google Workspace",
        "JumpCloud",
        "OneLogin",
        "Other SAML 2.0 IdP",
        "OpenID Connect IdP",
    ):
        assert f"<strong>{title}</strong>" in form.text
    # A forged organization id is ignored: the organization comes from the session.
    response = await post(
        client, URL, {"guide": "okta", "name": "  Acme   Okta ", "organization": world["globex"]["id"]}
    )
    message, page = await flash_after(client, response)
    assert message == "ok: Connection created. Follow the guide below to set it up."
    [row] = await rows(world["acme"]["id"])
    assert await rows(world["globex"]["id"]) == []
    assert (row["name"], row["protocol"], row["provider"], row["status"]) == (
        "Acme Okta",
        "saml",
        "okta",
        "draft",
    )
    assert row["attribute_mapping"]["given_name"] == "firstName"
    # The SP key is sealed at rest; the certificate is public.
    assert "PRIVATE KEY" not in row["sp_private_key"]
    key = crypto.unseal(settings, "sso.sp_signing_key", row["sp_private_key"])
    assert b"PRIVATE KEY" in key and row["sp_certificate"].startswith("-----BEGIN CERTIFICATE-----")
    sp = saml.ServiceProvider.of(settings.origin, row["id"])
    # SP values with copy buttons, and the Okta guide filled with them.
    assert f'<code id="sp-acs-url">{sp.acs_url}</code>' in page
    assert 'data-copy="sp-entity-id"' in page and f">{sp.entity_id}</code>" in page
    assert f'href="{sp.metadata_url}" download' in page
    guide = page[page.index('id="guide-heading"') :]
    assert "Setup guide: Okta" in guide
    assert re.search(rf'<code id="guide-acs_url-\d+">{re.escape(sp.acs_url)}</code>', guide)
    assert "Not ready yet" in page and "the IdP&#39;s SSO URL" in page
    [created] = await audit("sso.connection.created")
    assert created["organization_id"] == world["acme"]["id"] and created["target"] == row["id"]
    assert created["actor_id"] == world["alice"]["id"]


async def test_create_refuses_bad_input_and_saves_nothing(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    page = await post(client, URL, {"guide": "nope", "name": "x" * 201})
    assert page.status_code == 400
    assert field_error(page.text, "guide") == "Choose your identity provider."
    assert field_error(page.text, "name") == "The name can be at most 200 characters."
    api = await post(client, URL, {"guide": "okta", "name": "bad\u202ename"}, headers=JSON)
    assert api.status_code == 400
    assert api.json()["error"]["fields"] == [
        {"key": "name", "message": "The name contains invisible direction-changing characters."}
    ]
    assert await rows(world["acme"]["id"]) == [] and await audit("sso.connection.created") == []


async def test_create_an_oidc_connection_and_its_secret_is_sealed_never_shown(
    client: httpx.AsyncClient, world: dict[str, Any], settings: Settings
) -> None:
    await sign_in(client, world["alice"], world["acme"])
    await flash_after(client, await post(client, URL, {"guide": "generic-oidc", "name": "Keycloak"}))
    [row] = await rows(world["acme"]["id"])
    assert row["protocol"] == "oidc" and row["sp_private_key"] == ""
    path = f"{URL}/{row['id']}"
    page = await client.get(path, headers=HTML)
    assert f"{settings.origin}/sso/oidc/{row['id']}/callback" in page.text
    base = {"name": "Keycloak", "default_roles": "member", "map_email": "email"}
    # Bad input: each message next to its field, nothing saved.
    bad = await post(
        client,
        f"{path}/settings",
        {
            **base,
            "oidc_issuer": "ftp://idp.example.com",
            "oidc_client_id": "has space",
            "oidc_client_secret": "",
        },
    )
    assert bad.status_code == 400
    assert field_error(bad.text, "oidc_issuer") == "The URL must start with https://."
    assert field_error(bad.text, "oidc_client_id") == "A client id has no spaces and at most 500 characters."
    assert (
        field_error(bad.text, "oidc_client_secret") == "Enter the client secret the IdP gave the application."
    )
    assert (await rows(world["acme"]["id"]))[0]["oidc_issuer"] == ""
    good = {
        **base,
        "oidc_issuer": "https://idp.example.com/",
        "oidc_client_id": "portal-app",
        "oidc_client_secret": "s3cr3t-value",
    }
    message, page_text = await flash_after(client, await post(client, f"{path}/settings", good))
    assert message == "ok: Settings saved."
    [row] = await rows(world["acme"]["id"])
    assert row["oidc_issuer"] == "https://idp.example.com" and row["oidc_client_id"] == "portal-app"
    assert "s3cr3t-value" not in row["oidc_client_secret"]
    assert crypto.unseal(settings, "sso.oidc_client_secret", row["oidc_client_secret"]) == b"s3cr3t-value"
    assert "s3cr3t-value" not in page_text and "it is never shown" in page_text
    # An empty secret keeps the stored one.
    await flash_after(client, await post(client, f"{path}/settings", {**good, "oidc_client_secret": ""}))
    [again] = await rows(world["acme"]["id"])
    assert crypto.unseal(settings, "sso.oidc_client_secret", again["oidc_client_secret"]) == b"s3cr3t-value"
    updated = await audit("sso.connection.updated")
    assert "s3cr3t-value" not in str(updated)

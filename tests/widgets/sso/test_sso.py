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
    # the navigation (twice: the wide sidebar and the phone-sized menu, one of them hidden) and the home card
    assert home.text.count(f'href="{URL}"') == 3


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


# --- the IdP's settings ----------------------------------------------------------------------------------


@pytest.fixture
async def draft(client: httpx.AsyncClient, world: dict[str, Any]) -> dict[str, Any]:
    await sign_in(client, world["alice"], world["acme"])
    await flash_after(client, await post(client, URL, {"guide": "generic-saml", "name": "Acme IdP"}))
    [row] = await rows(world["acme"]["id"])
    return row


async def test_idp_by_fields(
    client: httpx.AsyncClient, world: dict[str, Any], draft: dict[str, Any], tmp_path: Path
) -> None:
    path = f"{URL}/{draft['id']}/idp"
    bad = await post(
        client,
        path,
        {
            "source": "fields",
            "idp_sso_url": "javascript:alert(1)",
            "idp_entity_id": "",
            "idp_certificate": "not a certificate",
        },
    )
    assert bad.status_code == 400
    assert field_error(bad.text, "idp_sso_url") == "The URL must start with http:// or https://."
    assert field_error(bad.text, "idp_entity_id") == "Enter the IdP's entity id (Issuer)."
    assert field_error(bad.text, "idp_certificate") == "This is not a PEM X.509 certificate."
    assert 'class="error-summary"' in bad.text
    [row] = await rows(world["acme"]["id"])
    assert row["idp_sso_url"] == "" and await audit("sso.connection.updated") == []
    _, _, pem = make_certificate(tmp_path, "fields", days=200)
    message, page = await flash_after(
        client,
        await post(
            client,
            path,
            {
                "source": "fields",
                "idp_sso_url": "https://idp.example.com/sso",
                "idp_entity_id": "https://idp.example.com",
                "idp_certificate": pem,
            },
        ),
    )
    assert message == "ok: IdP settings saved."
    [row] = await rows(world["acme"]["id"])
    assert (
        row["idp_sso_url"] == "https://idp.example.com/sso"
        and row["idp_entity_id"] == "https://idp.example.com"
    )
    assert row["certificate_expires_at"] is not None
    assert "CN=fields, valid until" in text(page)
    assert "Not ready yet" not in page and "Test connection" in page


async def test_idp_by_metadata_file(
    client: httpx.AsyncClient, world: dict[str, Any], draft: dict[str, Any], tmp_path: Path
) -> None:
    path = f"{URL}/{draft['id']}/idp"
    metadata, pem = idp_metadata(tmp_path)
    message, _ = await flash_after(
        client,
        await post(
            client, path, {"source": "upload"}, files={"metadata_file": ("idp.xml", metadata, "text/xml")}
        ),
    )
    assert message == "ok: Metadata uploaded."
    [row] = await rows(world["acme"]["id"])
    assert row["idp_entity_id"] == "https://idp.example.test/saml/metadata"
    assert row["idp_sso_url"] == "https://idp.example.test/saml/sso"
    assert saml.load_certificate(row["idp_certificate"]) == saml.load_certificate(pem)
    [updated] = await audit("sso.connection.updated")
    assert updated["details"]["idp"] == "upload"


BAD_METADATA = [
    (b"<md:EntityDescriptor", "The metadata is not well-formed XML"),
    (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        "The metadata contains a DTD or entity declarations, which are refused.",
    ),
    (
        b'<!DOCTYPE lol [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>',
        "The metadata contains a DTD or entity declarations, which are refused.",
    ),
    (b"<x>" + b"a" * (1024 * 1024 + 10) + b"</x>", "The metadata is larger than 1 MB."),
    (b'<r xmlns="urn:other"/>', "This is not SAML metadata (no EntityDescriptor)."),
]


@pytest.mark.parametrize(("body", "expected"), BAD_METADATA)
async def test_bad_metadata_files_are_refused_next_to_the_field(
    client: httpx.AsyncClient, world: dict[str, Any], draft: dict[str, Any], body: bytes, expected: str
) -> None:
    path = f"{URL}/{draft['id']}/idp"
    page = await post(
        client, path, {"source": "upload"}, files={"metadata_file": ("idp.xml", body, "text/xml")}
    )
    assert page.status_code == 400
    assert field_error(page.text, "metadata_file").startswith(expected)
    # Pasted instead of uploaded: the same.
    pasted = await post(client, path, {"source": "upload", "metadata_xml": body.decode()}, headers=JSON)
    assert pasted.status_code == 400
    assert pasted.json()["error"]["fields"][0]["key"] == "metadata_file"
    [row] = await rows(world["acme"]["id"])
    assert row["idp_sso_url"] == "" and row["idp_certificate"] == ""
    assert await audit("sso.connection.updated") == []


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/metadata",
        "https://10.1.2.3/md",
        "https://[::1]/md",
        "https://169.254.169.254/latest",
    ],
)
async def test_private_metadata_urls_are_refused(
    client: httpx.AsyncClient, world: dict[str, Any], draft: dict[str, Any], url: str
) -> None:
    page = await post(client, f"{URL}/{draft['id']}/idp", {"source": "url", "idp_metadata_url": url})
    assert page.status_code == 400
    assert "a private or local address; use a public address." in field_error(page.text, "idp_metadata_url")
    [row] = await rows(world["acme"]["id"])
    assert row["idp_metadata_url"] == "" and row["idp_sso_url"] == ""


async def test_http_metadata_url_is_refused(client: httpx.AsyncClient, draft: dict[str, Any]) -> None:
    page = await post(
        client, f"{URL}/{draft['id']}/idp", {"source": "url", "idp_metadata_url": "http://idp.example.com/md"}
    )
    assert field_error(page.text, "idp_metadata_url") == "The URL must start with https://."


class MetadataServer:
    """Serves one document over HTTP on loopback (what the SSRF rule allows only with the setting on)."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        import http.server
        import threading

        owner = self
        self.body, self.status, self.hits = body, status, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                self.send_response(owner.status)
                self.send_header("content-type", "application/xml")
                self.send_header("content-length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metadata"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lab_settings(settings: Settings) -> Settings:
    import msgspec

    return msgspec.structs.replace(
        settings, sso_allow_private_addresses=True, sso_metadata_refresh_interval=60
    )


async def test_metadata_url_is_fetched_now_and_again_by_the_cron(
    lab_settings: Settings, world: dict[str, Any], tmp_path: Path, db: Any, policy: Any, registry: Any
) -> None:
    from portal.core import clock
    from portal.web.app import create_app
    from tests.conftest import serve
    from widgets.sso import service

    metadata, _first_pem = idp_metadata(tmp_path, days=365)
    server = MetadataServer(metadata)
    try:
        app = create_app(lab_settings, engine=db, policy=policy, registry=registry)
        async with serve(app) as client:
            await sign_in(client, world["alice"], world["acme"])
            await flash_after(client, await post(client, URL, {"guide": "okta"}))
            [row] = await rows(world["acme"]["id"])
            message, page = await flash_after(
                client,
                await post(
                    client, f"{URL}/{row['id']}/idp", {"source": "url", "idp_metadata_url": server.url}
                ),
            )
            assert message == "ok: Metadata fetched from the URL; it is fetched again on a schedule."
            assert server.hits == 1
            [row] = await rows(world["acme"]["id"])
            assert (
                row["idp_metadata_url"] == server.url
                and row["idp_sso_url"] == "https://idp.example.test/saml/sso"
            )
            # Not due yet: nothing fetched.
            assert await service.refresh_metadata(lab_settings) == {"fetched": 0, "failed": 0}
            # Due, and the IdP rotated its certificate: the cron picks the new one up.
            await SsoConnection.update(
                {SsoConnection.metadata_fetched_at: clock.utcnow().replace(year=2000)}
            ).where(SsoConnection.id == row["id"])
            server.body, new_pem = idp_metadata(tmp_path, days=20)
            assert await service.refresh_metadata(lab_settings) == {"fetched": 1, "failed": 0}
            [row] = await rows(world["acme"]["id"])
            assert saml.load_certificate(row["idp_certificate"]) == saml.load_certificate(new_pem)
            # The IdP breaks: the last good values stay, the error shows on the page.
            await SsoConnection.update(
                {SsoConnection.metadata_fetched_at: clock.utcnow().replace(year=2000)}
            ).where(SsoConnection.id == row["id"])
            server.status = 500
            assert await service.refresh_metadata(lab_settings) == {"fetched": 0, "failed": 1}
            [after] = await rows(world["acme"]["id"])
            assert after["idp_certificate"] == row["idp_certificate"]
            page = (await client.get(f"{URL}/{row['id']}", headers=HTML)).text
            assert "Last fetch failed: The metadata URL answered HTTP 500." in text(page)
            # The new certificate expires within 30 days: warned on the page and audited once.
            assert "expires on" in text(page) and "sso-cert-warning" in page
            assert await service.warn_certificates() == 1
            assert await service.warn_certificates() == 0
            [warning] = await audit("sso.certificate.expiring")
            assert warning["target"] == row["id"] and warning["organization_id"] == world["acme"]["id"]
            listing = (await client.get(URL, headers=HTML)).text
            assert "Expires soon" in listing
    finally:
        server.close()


async def test_oversize_and_non_200_metadata_urls_are_refused(
    lab_settings: Settings, world: dict[str, Any], db: Any, policy: Any, registry: Any
) -> None:
    from portal.web.app import create_app
    from tests.conftest import serve

    server = MetadataServer(b"<x>" + b"a" * (1024 * 1024 + 100) + b"</x>")
    try:
        app = create_app(lab_settings, engine=db, policy=policy, registry=registry)
        async with serve(app) as client:
            await sign_in(client, world["alice"], world["acme"])
            await flash_after(client, await post(client, URL, {"guide": "okta"}))
            [row] = await rows(world["acme"]["id"])
            path = f"{URL}/{row['id']}/idp"
            big = await post(client, path, {"source": "url", "idp_metadata_url": server.url})
            assert big.status_code == 400
            assert field_error(big.text, "idp_metadata_url") == "The metadata is larger than 1 MB."
            server.status, server.body = 404, b"not here"
            missing = await post(client, path, {"source": "url", "idp_metadata_url": server.url})
            assert field_error(missing.text, "idp_metadata_url") == "The metadata URL answered HTTP 404."
            [row] = await rows(world["acme"]["id"])
            assert row["idp_metadata_url"] == "" and row["idp_sso_url"] == ""
    finally:
        server.close()


# --- settings, life cycle, enforcement -------------------------------------------------------------------


async def configure(client: httpx.AsyncClient, connection_id: str, tmp_path: Path) -> None:
    metadata, _ = idp_metadata(tmp_path)
    await flash_after(
        client,
        await post(
            client,
            f"{URL}/{connection_id}/idp",
            {"source": "upload"},
            files={"metadata_file": ("idp.xml", metadata, "text/xml")},
        ),
    )


async def test_settings_mapping_and_roles_checked_against_the_policy(
    client: httpx.AsyncClient, world: dict[str, Any], draft: dict[str, Any]
) -> None:
    path = f"{URL}/{draft['id']}/settings"
    form = {
        "name": "Acme IdP",
        "map_email": "mail",
        "group_roles": "Engineering = admin\nSales = wizard",
        "default_roles": "member",
        "allow_idp_initiated": "on",
    }
    bad = await post(client, path, form)
    assert bad.status_code == 400
    assert field_error(bad.text, "group_roles").startswith("Line 2: wizard: not a role of the policy")
    bad = await post(
        client, path, {**form, "group_roles": "no equals sign", "default_roles": "", "map_groups": "a b"}
    )
    assert field_error(bad.text, "group_roles") == "Line 1: write it as Group name = role, role."
    assert field_error(bad.text, "default_roles").startswith("Name at least one role")
    assert field_error(bad.text, "map_groups") == "An attribute name has no spaces or invisible characters."
    [row] = await rows(world["acme"]["id"])
    assert row["group_roles"] == {} and row["allow_idp_initiated"] is False
    good = {**form, "group_roles": "Engineering = admin\n  Sales Team =member , admin"}
    message, page = await flash_after(client, await post(client, path, good))
    assert message == "ok: Settings saved."
    [row] = await rows(world["acme"]["id"])
    assert row["group_roles"] == {"Engineering": ["admin"], "Sales Team": ["member", "admin"]}
    assert row["attribute_mapping"] == {"email": "mail"}
    assert row["allow_idp_initiated"] is True and row["sign_requests"] is False
    assert "Sales Team = member, admin" in page


async def test_signed_requests_put_the_sp_certificate_in_the_metadata(
    client: httpx.AsyncClient, world: dict[str, Any], draft: dict[str, Any], tmp_path: Path
) -> None:
    sp_metadata = await client.get(f"/sso/saml/{draft['id']}/metadata")
    assert b"X509Certificate" not in sp_metadata.content
    await flash_after(
        client,
        await post(
            client,
            f"{URL}/{draft['id']}/settings",
            {"name": "Acme IdP", "sign_requests": "on", "default_roles": "member"},
        ),
    )
    signed = await client.get(f"/sso/saml/{draft['id']}/metadata")
    root = saml.parse_xml(signed.content, "metadata")
    descriptor = root.find("md:SPSSODescriptor", saml.NS)
    assert descriptor.get("AuthnRequestsSigned") == "true"
    cert = root.find(".//ds:X509Certificate", saml.NS).text
    assert saml.load_certificate(cert) == saml.load_certificate(draft["sp_certificate"])


async def test_draft_active_inactive_and_enforce(
    client: httpx.AsyncClient, world: dict[str, Any], draft: dict[str, Any], tmp_path: Path
) -> None:
    base = f"{URL}/{draft['id']}"
    message, _ = await flash_after(client, await post(client, f"{base}/activate"))
    assert message.startswith("error: Acme IdP cannot be activated yet: it needs the IdP's SSO URL")
    message, _ = await flash_after(client, await post(client, f"{URL}/enforce", {"enforced": "on"}))
    assert message == "error: Activate a connection before enforcing SSO."
    await configure(client, draft["id"], tmp_path)
    message, page = await flash_after(client, await post(client, f"{base}/activate"))
    assert message == "ok: Acme IdP is active."
    assert '<span class="badge ok">Active</span>' in page
    message, page = await flash_after(client, await post(client, f"{URL}/enforce", {"enforced": "on"}))
    assert message == "ok: SSO is enforced: people at your verified domains sign in through your IdP."
    assert "Break-glass rule:" in text(page) and "sk_org_sso_manage" in page
    org = (
        await Organization.select(Organization.sso_enforced)
        .where(Organization.id == world["acme"]["id"])
        .first()
    )
    assert org["sso_enforced"] is True
    # The last active connection cannot go while SSO is enforced.
    message, _ = await flash_after(client, await post(client, f"{base}/deactivate"))
    assert message == "error: Turn Enforce SSO off first: it is the organization's last active connection."
    message, _ = await flash_after(client, await post(client, f"{base}/delete"))
    assert message.startswith("error: Turn Enforce SSO off first")
    await flash_after(client, await post(client, f"{URL}/enforce", {"enforced": ""}))
    message, _ = await flash_after(client, await post(client, f"{base}/deactivate"))
    assert message == "ok: Acme IdP is inactive: nobody signs in through it."
    message, _listing = await flash_after(client, await post(client, f"{base}/delete"))
    assert message == "ok: Acme IdP deleted."
    assert await rows(world["acme"]["id"]) == []
    actions = [
        e["action"]
        for e in await AuditEvent.select().where(AuditEvent.action.like("sso.%")).order_by(AuditEvent.at)
    ]
    assert actions == [
        "sso.connection.created",
        "sso.connection.updated",
        "sso.connection.activated",
        "sso.enforcement.updated",
        "sso.enforcement.updated",
        "sso.connection.deactivated",
        "sso.connection.deleted",
    ]


async def test_read_only_view(client: httpx.AsyncClient, world: dict[str, Any], tmp_path: Path) -> None:
    _, _, pem = make_certificate(tmp_path, "ro")
    connection = await add_connection(
        world["acme"],
        name="Acme Okta",
        idp_sso_url="https://idp.example.com/sso",
        idp_certificate=pem,
        group_roles={"Engineering": ["admin"]},
        oidc_client_secret="",
    )
    await sign_in(client, world["vic"], world["acme"])
    listing = await client.get(URL, headers=HTML)
    assert listing.status_code == 200 and "Acme Okta" in listing.text
    assert (
        "Add a connection" not in listing.text and 'action="/ui/organization/sso/enforce"' not in listing.text
    )
    page = await client.get(f"{URL}/{connection['id']}", headers=HTML)
    assert page.status_code == 200
    assert "Engineering → admin" in text(page.text)
    assert 'action="/ui/organization/sso/' not in page.text
    assert "Only members who can manage single sign-on can change this connection." in page.text

"""A real app signs its user in through the portal in Chromium: app → hosted login → back to the app (Authlib
client) → its link to /ui/ opens signed in → sign out in /ui/ → the app's back-channel endpoint gets the
logout token."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from authlib.integrations.httpx_client import OAuth2Client
from joserfc import jwt
from joserfc.jwk import KeySet
from playwright.async_api import Browser, expect

from policy import Feature, PolicyEngine
from portal.auth import accounts
from portal.oidc import clients
from tests.browser.conftest import SCREENSHOTS, LiveServer
from tests.browser.test_sign_in import wait_for_code
from tests.conftest import free_port
from tests.mailserver import Mailbox


class App:
    """A tiny relying party on loopback: /start, /callback (shows who signed in), /backchannel."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.portal = ""
        self.client_id = ""
        self.secret = ""
        self.logout_tokens: list[str] = []
        self.pending: dict[str, tuple[str, str]] = {}

    def rp(self) -> OAuth2Client:
        return OAuth2Client(
            client_id=self.client_id,
            client_secret=self.secret,
            scope="openid email profile",
            redirect_uri=f"{self.base}/callback",
            code_challenge_method="S256",
        )


@pytest.fixture
def app_server() -> Iterator[App]:
    port = free_port()
    app = App(port)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: str = "", location: str | None = None) -> None:
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body.encode())

        def do_GET(self) -> None:
            if self.path.startswith("/start"):
                with app.rp() as rp:
                    verifier, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(12)
                    url, state = rp.create_authorization_url(
                        f"{app.portal}/oauth/authorize", code_verifier=verifier, nonce=nonce
                    )
                app.pending[state] = (verifier, nonce)
                self._send(302, location=url)
                return
            if self.path.startswith("/callback"):
                query = parse_qs(self.path.split("?", 1)[1])
                verifier, nonce = app.pending.pop(query["state"][0])
                with app.rp() as rp:
                    token = rp.fetch_token(
                        f"{app.portal}/oauth/token",
                        authorization_response=f"{app.base}{self.path}",
                        code_verifier=verifier,
                    )
                    keyset = KeySet.import_key_set(rp.get(f"{app.portal}/oauth/jwks").json())
                claims = jwt.decode(token["id_token"], keyset).claims
                assert claims["nonce"] == nonce
                page = (
                    "<!doctype html><title>Acme CRM</title><h1>Acme CRM</h1>"
                    f"<p>Signed in as {claims['email']} in {claims['org_id']}</p>"
                    f'<p><a href="{app.portal}/ui/">Manage your organization</a></p>'
                )
                self._send(200, page)
                return
            self._send(404)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = parse_qs(self.rfile.read(length).decode())
            app.logout_tokens.extend(body.get("logout_token", []))
            self._send(200)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app
    server.shutdown()
    server.server_close()


async def test_app_sign_in_shared_session_and_logout(
    browser: Browser,
    live_server_env: dict[str, str],
    mail: Mailbox,
    policy: PolicyEngine,
    db: Any,
    request: Any,
    app_server: App,
) -> None:
    live_server_env["PORTAL_SMTP_URL"] = mail.url
    live_server_env["PORTAL_OIDC_LOGOUT_INTERVAL"] = "1"
    acme = await accounts.create_organization("acme", "Acme", features=[f.value for f in Feature])
    alice = await accounts.create_user("alice@acme.test", given_name="Alice", family_name="Admin")
    await accounts.add_member(acme["id"], alice["id"], ["admin"], known_roles=policy.roles)
    client, secret = await clients.create(
        "Acme CRM",
        redirect_uris=[f"{app_server.base}/callback"],
        backchannel_logout_uri=f"{app_server.base}/backchannel",
    )
    assert secret
    app_server.client_id, app_server.secret = client.id, secret
    server: LiveServer = request.getfixturevalue("live_server")
    app_server.portal = server.url

    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    csp: list[str] = []
    page.on("console", lambda msg: csp.append(msg.text) if "Content Security Policy" in msg.text else None)
    await page.goto(f"{app_server.base}/start")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Email address").fill("alice@acme.test")
    await page.get_by_role("button", name="Continue").click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    await page.get_by_label("Code").fill(await wait_for_code(mail, "alice@acme.test"))
    await page.get_by_role("button", name="Sign in").click()

    # Back at the app, which knows who signed in.
    await expect(page.get_by_role("heading", name="Acme CRM")).to_be_visible()
    await expect(page.get_by_text(f"Signed in as alice@acme.test in {acme['id']}")).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "oidc-app.png"))

    # The app's link to /ui/ opens signed in: no second sign-in.
    await page.get_by_role("link", name="Manage your organization").click()
    await expect(page.get_by_role("heading", name="Acme", exact=True)).to_be_visible()

    # An RP-initiated logout without an id_token_hint asks first; staying keeps the session.
    await page.goto(f"{server.url}/oauth/logout?client_id={client.id}")
    await expect(page.get_by_role("heading", name="Sign out of Portal?")).to_be_visible()
    await page.screenshot(path=str(SCREENSHOTS / "oidc-logout-confirm.png"))
    await page.get_by_role("link", name="Stay signed in").click()
    await expect(page.get_by_role("heading", name="Acme", exact=True)).to_be_visible()

    await page.locator(".user-menu summary").click()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_text("signed out")).to_be_visible()
    for _ in range(200):
        if app_server.logout_tokens:
            break
        await page.wait_for_timeout(50)
    assert len(app_server.logout_tokens) == 1
    claims = jwt.decode(app_server.logout_tokens[0], KeySet.import_key_set(_jwks(server.url))).claims
    assert (
        claims["sub"] == alice["id"]
        and "http://schemas.openid.net/event/backchannel-logout" in claims["events"]
    )
    assert csp == []
    await context.close()


def _jwks(base: str) -> dict[str, Any]:
    import httpx

    return dict(httpx.get(f"{base}/oauth/jwks").json())

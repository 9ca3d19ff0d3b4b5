"""Test peers for the OpenID Provider: a back-channel logout listener on loopback, and a "browser" (httpx with
cookies, no automatic redirects) that signs in through the real hosted login."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from tests.mailserver import Mailbox

_CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')
_CHALLENGE = re.compile(r'name="challenge" value="([^"]+)"')


class Listener:
    """Records every POSTed ``logout_token``; ``status`` is what it answers (500 to test retries)."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.status = 200
        self.hits = 0
        self.url = ""

    def wait(self, count: int = 1, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.tokens) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.tokens)


@contextmanager
def backchannel_listener() -> Iterator[Listener]:
    listener = Listener()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = parse_qs(self.rfile.read(length).decode())
            listener.hits += 1
            if listener.status == 200:
                listener.tokens.extend(body.get("logout_token", []))
            self.send_response(listener.status)
            self.send_header("Cache-Control", "no-store")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    listener.url = f"http://127.0.0.1:{server.server_address[1]}/backchannel-logout"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        server.shutdown()
        server.server_close()


def wait_for_code(mail: Mailbox, address: str, seen: int) -> str:
    deadline = time.monotonic() + 15
    while len(mail.to(address)) <= seen and time.monotonic() < deadline:
        time.sleep(0.05)
    return mail.last_code(address)


class UserAgent:
    """A browser stand-in: keeps cookies, follows redirects by hand so the test sees each hop."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, follow_redirects=False, headers={"accept": "text/html"})

    def close(self) -> None:
        self.http.close()

    def follow(self, url: str, *, stop_at: str) -> httpx.Response:
        """GET ``url`` and follow redirects while they stay on the portal; returns the response that leaves
        it (its Location starts with ``stop_at``) or the first non-redirect."""
        response = self.http.get(url)
        for _ in range(10):
            if response.status_code not in (301, 302, 303, 307):
                return response
            location = urljoin(str(response.url), response.headers["location"])
            if location.startswith(stop_at):
                return response
            response = self.http.get(location)
        raise AssertionError("too many redirects")

    def sign_in(
        self, login_page: httpx.Response, email: str, mail: Mailbox, *, stop_at: str
    ) -> httpx.Response:
        """On the hosted login page: enter the email, read the code from the mailbox, enter it."""
        assert login_page.status_code == 200, login_page.text[:500]
        action = str(login_page.url)
        query = parse_qs(urlsplit(action).query)
        token = _CSRF.search(login_page.text)
        assert token, "no CSRF token on the login page"
        seen = len(mail.to(email))
        form = {
            "_csrf_token": token.group(1),
            "email": email,
            "return_to": query.get("return_to", ["/ui/"])[0],
            "organization": query.get("organization", [""])[0],
        }
        sent = self.http.post("/login", data=form)
        assert sent.status_code == 303, sent.text[:500]
        code_page = self.http.get(sent.headers["location"])
        assert code_page.status_code == 200
        challenge = _CHALLENGE.search(code_page.text)
        assert challenge, "no challenge on the code page"
        code_query = parse_qs(urlsplit(sent.headers["location"]).query)
        code = wait_for_code(mail, email, seen)
        token2 = _CSRF.search(code_page.text)
        assert token2
        done = self.http.post(
            "/login/code",
            data={
                "_csrf_token": token2.group(1),
                "challenge": challenge.group(1),
                "code": code,
                "return_to": code_query.get("return_to", ["/ui/"])[0],
                "organization": code_query.get("organization", [""])[0],
            },
        )
        assert done.status_code == 303, done.text[:800]
        return self.follow(urljoin(self.base, done.headers["location"]), stop_at=stop_at)

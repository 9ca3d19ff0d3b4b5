"""A webhook receiver on loopback that verifies every request with the independent ``standardwebhooks``
package (PyPI) and can be told to fail, answer slowly or hang."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    answered: int
    #: ``standardwebhooks.Webhook(secret).verify(...)`` result, or the exception it raised.
    verified: Any = None
    error: str = ""

    @property
    def message_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    url: str = ""
    #: The endpoint's secret (set once the endpoint is created); every request is verified with it.
    secret: str = ""
    #: Answer 500 to the first N requests of each webhook-id, then 200.
    fail_first: int = 0
    #: Always answer this (None: the fail_first rule).
    status: int | None = None
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: The first N requests never get an answer (they wait until the receiver stops) and are not recorded.
    swallow: int = 0
    #: Requests that arrived, answered or not.
    arrived: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    requests: list[Received] = field(default_factory=list)
    _seen: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def successes(self) -> Counter[str]:
        """Successful (2xx, verified) requests per webhook-id."""
        return Counter(r.message_id for r in self.requests if r.answered == 200 and r.error == "")

    def wait(self, count: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.requests)

    def wait_arrived(self, count: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.arrived < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.arrived >= count

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            self._seen[headers.get("webhook-id", "")] += 1
            nth = self._seen[headers.get("webhook-id", "")]
        verified, error = None, ""
        try:
            verified = Webhook(self.secret).verify(body, headers)
        except Exception as exc:  # noqa: BLE001 - recorded, and the test asserts there is none
            error = f"{type(exc).__name__}: {exc}"
        answered = self.status if self.status is not None else (500 if nth <= self.fail_first else 200)
        if error:
            answered = 400
        with self._lock:
            self.requests.append(Received(headers, body, answered, verified, error))
        return answered


@contextmanager
def receiver(**options: Any) -> Iterator[Receiver]:
    found = Receiver(**options)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with found._lock:
                found.arrived += 1
                swallowed = found.arrived <= found.swallow
            if swallowed:
                found._stop.wait()
                return
            if found.delay:
                time.sleep(found.delay)
            answered = found.handle({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(answered)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        found._stop.set()
        server.shutdown()
        server.server_close()

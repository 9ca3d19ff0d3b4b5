"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for tests that read mail."""

from __future__ import annotations

import re
import socket
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

_CODE = re.compile(r"^\s*(\d{6})\s*$", re.MULTILINE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.box.lock:
            self.box.received.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class Mailbox:
    """Messages received by the SMTP server, with helpers to find one and read the code in it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[list[str], EmailMessage]] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def to(self, address: str) -> list[EmailMessage]:
        """Messages whose envelope recipients include ``address``."""
        with self.lock:
            return [m for rcpts, m in self.received if address in rcpts]

    def last_code(self, address: str) -> str:
        """The 6-digit code of the last message to ``address`` (fails the test if there is none)."""
        messages = self.to(address)
        assert messages, f"no mail to {address}; got mail to {[r for r, _ in self.received]}"
        body = messages[-1].get_body(preferencelist=("plain",))
        assert body is not None
        match = _CODE.search(body.get_content())
        assert match, body.get_content()
        return match.group(1)


class MailServer:
    """Start and stop an aiosmtpd controller on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self.box = Mailbox()
        self.box.port = free_port()
        self.controller = Controller(_Handler(self.box), hostname="127.0.0.1", port=self.box.port)

    def start(self) -> Mailbox:
        self.controller.start()
        return self.box

    def stop(self) -> None:
        self.controller.stop()

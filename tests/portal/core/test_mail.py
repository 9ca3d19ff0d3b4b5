"""Outgoing mail: SMTP (a real aiosmtpd server on loopback) and the development outbox."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from portal.core import clock
from portal.core import mail as portal_mail
from portal.core.settings import Settings
from tests.mailserver import Mailbox, free_port


def smtp_settings(settings: Settings, url: str | None) -> Settings:
    import msgspec

    return msgspec.structs.replace(settings, smtp_url=url, mail_from="Acme Cloud <login@cloud.acme.test>")


async def test_send_over_smtp(settings: Settings, mail: Mailbox) -> None:
    await portal_mail.send_mail(
        smtp_settings(settings, mail.url), "bob@acme.test", "Hello", "Line one\nLine two\n"
    )
    [message] = mail.to("bob@acme.test")
    assert message["From"] == "Acme Cloud <login@cloud.acme.test>"
    assert message["To"] == "bob@acme.test"
    assert message["Subject"] == "Hello"
    assert re.fullmatch(r"<[^@>]+@cloud\.acme\.test>", message["Message-ID"])
    sent = message["Date"].datetime
    assert sent.tzinfo is not None and abs((datetime.now(UTC) - sent).total_seconds()) < 60
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    assert body.get_content().splitlines() == ["Line one", "Line two"]


async def test_smtp_credentials_from_the_url_are_used(settings: Settings) -> None:
    logins: list[tuple[bytes, bytes]] = []
    received: list[bytes] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"p@ss:word", handled=False)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.content)
            return "250 OK"

    port = free_port()
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        url = f"smtp://relay%40acme.test:p%40ss%3Aword@127.0.0.1:{port}"
        await portal_mail.send_mail(smtp_settings(settings, url), "bob@acme.test", "Hi", "Text\n")
        bad = f"smtp://relay%40acme.test:wrong@127.0.0.1:{port}"
        with pytest.raises(Exception, match=r"(?i)auth"):
            await portal_mail.send_mail(smtp_settings(settings, bad), "bob@acme.test", "Hi", "Text\n")
    finally:
        controller.stop()
    assert logins[0] == (b"relay@acme.test", b"p@ss:word")
    assert len(received) == 1
    assert message_from_bytes(received[0], policy=policy.default)["Subject"] == "Hi"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "smtp://127.0.0.1:2525",
            {"hostname": "127.0.0.1", "port": 2525, "use_tls": False, "start_tls": False},
        ),
        ("smtp://localhost", {"hostname": "localhost", "port": None, "use_tls": False, "start_tls": False}),
        (
            "smtps://u:p@mail.example.com",
            {"port": None, "use_tls": True, "start_tls": False, "username": "u"},
        ),
        (
            "smtp://u:p@mail.example.com:587",
            {"port": 587, "use_tls": False, "start_tls": True, "password": "p"},
        ),
        ("smtp://relay.internal:25", {"use_tls": False, "start_tls": None, "username": None}),
    ],
)
async def test_tls_follows_the_url(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, url: str, expected: dict[str, Any]
) -> None:
    calls: list[dict[str, Any]] = []

    async def fake_send(message: Any, **kwargs: Any) -> None:
        calls.append(kwargs)

    monkeypatch.setattr(portal_mail.aiosmtplib, "send", fake_send)
    await portal_mail.send_mail(smtp_settings(settings, url), "bob@acme.test", "Hi", "Text\n")
    [call] = calls
    for key, value in expected.items():
        assert call[key] == value, key


async def test_without_smtp_mail_goes_to_the_outbox_and_the_log(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("portal.mail")
    handler = Collect(logging.INFO)
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    fixed = datetime(2026, 11, 22, 10, 30, 0, 123456, tzinfo=UTC)
    monkeypatch.setattr(clock, "utcnow", lambda: fixed)
    try:
        await portal_mail.send_mail(settings, "bob@acme.test", "First", "One\n")
        await portal_mail.send_mail(settings, "bob@acme.test", "Second", "Two\n")
        await portal_mail.send_mail(settings, "../../etc/passwd@x.test", "Odd", "Three\n")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    outbox = Path(settings.data_dir) / "outbox"
    names = sorted(p.name for p in outbox.iterdir())
    assert names == [
        "20261122T103000.123456Z-.._.._etc_passwd@x.test.eml",
        "20261122T103000.123456Z-bob@acme.test-1.eml",
        "20261122T103000.123456Z-bob@acme.test.eml",
    ]
    first = message_from_bytes((outbox / names[2]).read_bytes(), policy=policy.default)
    assert first["Subject"] == "First"
    assert first["From"] == settings.mail_from
    assert first["Date"].datetime == fixed.replace(microsecond=0)
    assert first["Message-ID"]
    second = message_from_bytes((outbox / names[1]).read_bytes(), policy=policy.default)
    assert second["Subject"] == "Second"
    messages = [r.getMessage() for r in records]
    assert messages[0] == f"mail to bob@acme.test written to {outbox / names[2]}"
    assert len(messages) == 3

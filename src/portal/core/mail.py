"""Outgoing mail (DESIGN §4): SMTP when ``smtp_url`` is set, else ``.eml`` files in ``<data_dir>/outbox``."""

from __future__ import annotations

import ipaddress
import logging
import re
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiosmtplib

from portal.core import clock
from portal.core.settings import Settings

log = logging.getLogger("portal.mail")

#: Seconds to wait for the SMTP server at each step.
SMTP_TIMEOUT = 15.0

_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9@._+-]")


def build_message(settings: Settings, to: str, subject: str, text: str) -> EmailMessage:
    """A plain-text message with From, To, Subject, Date and Message-ID."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(clock.utcnow())
    message["Message-ID"] = make_msgid(domain=_sender_domain(settings))
    message.set_content(text)
    return message


async def send_mail(settings: Settings, to: str, subject: str, text: str) -> None:
    """Send one message: over SMTP when configured, else written to the development outbox and logged."""
    message = build_message(settings, to, subject, text)
    if settings.smtp_url:
        await _send_smtp(settings.smtp_url, message)
        log.info("mail to %s sent (%s)", to, subject)
    else:
        path = write_outbox(settings, to, message)
        log.info("mail to %s written to %s", to, path)


async def _send_smtp(url: str, message: EmailMessage) -> None:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    implicit_tls = parts.scheme == "smtps"
    start_tls: bool | None
    if implicit_tls or _is_loopback(host):
        # smtps is TLS from the first byte; a loopback relay (tests, a local MTA) speaks plain SMTP.
        start_tls = False
    elif username:
        # Never send credentials in clear over a network: require STARTTLS.
        start_tls = True
    else:
        # An unauthenticated relay: upgrade when the server offers STARTTLS.
        start_tls = None
    await aiosmtplib.send(
        message,
        hostname=host,
        port=parts.port,
        username=username,
        password=password,
        use_tls=implicit_tls,
        start_tls=start_tls,
        timeout=SMTP_TIMEOUT,
    )


def write_outbox(settings: Settings, to: str, message: EmailMessage) -> Path:
    """Write ``message`` as ``<data_dir>/outbox/<UTC time>-<to>.eml`` (never overwriting another)."""
    outbox = Path(settings.data_dir) / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    stamp = clock.utcnow().strftime("%Y%m%dT%H%M%S.%fZ")
    safe_to = _UNSAFE_FILENAME.sub("_", to)[:200]
    data = message.as_bytes()
    for n in range(100):
        suffix = f"-{n}" if n else ""
        path = outbox / f"{stamp}-{safe_to}{suffix}.eml"
        try:
            with path.open("xb") as f:
                f.write(data)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not find a free file name in {outbox}")


def _sender_domain(settings: Settings) -> str:
    """The domain for Message-IDs: the From address's, else the public URL's host."""
    _, address = parseaddr(settings.mail_from)
    domain = address.rpartition("@")[2] if "@" in address else ""
    return domain or urlsplit(settings.public_url).hostname or "localhost"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""Outgoing mail (DESIGN §4): SMTP when ``smtp_url`` is set, else ``.eml`` files in ``<data_dir>/outbox``."""

from __future__ import annotations

import html
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


_URL = re.compile(r"https?://[^\s<>\"']+")


def subject(settings: Settings, what: str) -> str:
    """Every subject has one style: ``<brand>: <what>`` (codes never go in a subject, which lock screens
    and notifications show)."""
    return f"{settings.brand_name}: {what}"


def text_to_html(settings: Settings, title: str, text: str) -> str:
    """The HTML alternative of a plain-text message: same words, paragraphs kept, an indented line (a code
    or a link) set apart, links clickable. Inline styles only: mail clients drop style sheets."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    parts = []
    for block in blocks:
        if all(line.startswith("    ") for line in block.splitlines()):
            inner = html.escape(block.strip())
            if _URL.fullmatch(block.strip()):
                inner = f'<a href="{inner}" style="color:{settings.brand_primary_color}">{inner}</a>'
                parts.append(f'<p style="margin:16px 0;word-break:break-all">{inner}</p>')
            else:
                parts.append(
                    '<p style="margin:16px 0;font:600 24px/1.2 ui-monospace,monospace;letter-spacing:4px">'
                    f"{inner}</p>"
                )
            continue
        escaped = html.escape(block)
        linked = _URL.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', escaped)
        parts.append(f'<p style="margin:12px 0">{linked.replace(chr(10), "<br>")}</p>')
    brand = html.escape(settings.brand_name)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>"
        '<body style="margin:0;padding:24px;background:#f6f7f9;font:16px/1.5 system-ui,sans-serif;color:#1b1f24">'
        '<div style="max-width:560px;margin:0 auto;background:#fff;border:1px solid #d8dde3;border-radius:8px;'
        'padding:24px">'
        f'<p style="margin:0 0 16px;font-weight:700;color:{settings.brand_primary_color}">{brand}</p>'
        f"{''.join(parts)}</div></body></html>"
    )


def build_message(settings: Settings, to: str, subject: str, text: str) -> EmailMessage:
    """A multipart message (plain text, and the same words as HTML) with From, To, Subject, Date and
    Message-ID."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(clock.utcnow())
    message["Message-ID"] = make_msgid(domain=_sender_domain(settings))
    message.set_content(text)
    message.add_alternative(text_to_html(settings, subject, text), subtype="html")
    return message


async def send_mail(settings: Settings, to: str, subject: str, text: str, *, dev_log: str = "") -> None:
    """Send one message: over SMTP when configured, else written to the development outbox and logged.

    ``dev_log`` (a sign-in code, a link) is added to the log line in the development outbox mode only, so
    that a developer can sign in from the console; with SMTP it is never logged.
    """
    message = build_message(settings, to, subject, text)
    if settings.smtp_url:
        await _send_smtp(settings.smtp_url, message)
        log.info("mail to %s sent (%s)", to, subject)
    else:
        path = write_outbox(settings, to, message)
        if dev_log:
            log.info("mail to %s written to %s (development outbox: %s)", to, path, dev_log)
        else:
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

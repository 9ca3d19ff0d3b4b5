"""Domain names as organizations claim them: normalized, and refused when nobody can own them."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

import idna
from publicsuffixlist import PublicSuffixList

from portal.core.errors import InvalidInput

#: Well-known free-mail providers: an organization cannot claim everybody's mailbox domain.
FREE_MAIL_DOMAINS = frozenset(
    """
    gmail.com googlemail.com yahoo.com yahoo.co.uk yahoo.fr yahoo.de yahoo.co.jp ymail.com rocketmail.com
    outlook.com outlook.de outlook.fr hotmail.com hotmail.co.uk hotmail.fr hotmail.de hotmail.it live.com
    live.co.uk live.fr msn.com aol.com icloud.com me.com mac.com proton.me protonmail.com protonmail.ch pm.me
    gmx.com gmx.de gmx.net gmx.at gmx.ch web.de mail.com email.com yandex.ru yandex.com ya.ru mail.ru inbox.ru
    bk.ru list.ru rambler.ru zoho.com zohomail.com fastmail.com fastmail.fm hey.com tutanota.com tuta.io
    tutamail.com qq.com 163.com 126.com yeah.net sina.com sohu.com naver.com daum.net hanmail.net
    rediffmail.com libero.it virgilio.it orange.fr wanadoo.fr free.fr laposte.net sfr.fr t-online.de
    freenet.de btinternet.com sky.com comcast.net verizon.net att.net sbcglobal.net cox.net seznam.cz
    wp.pl o2.pl interia.pl onet.pl mailinator.com guerrillamail.com 10minutemail.com
    """.split()  # noqa: SIM905 - a word list reads better than 87 quoted strings
)

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    # Loading the bundled list takes ~50 ms; do it once, on first use.
    return PublicSuffixList()


def normalize_domain(raw: str, field: str = "domain") -> str:
    """Lowercase, IDNA (punycode) form without a trailing dot; :class:`InvalidInput` naming ``field`` if the
    value is not a domain an organization can own (IP address, public suffix, free-mail provider)."""
    value = raw.strip().lower()
    if value.startswith(("http://", "https://")) or "/" in value or "@" in value:
        raise InvalidInput(field, "Enter a domain name only, like example.com (no scheme, path or @).")
    value = value.removesuffix(".")
    if not value:
        raise InvalidInput(field, "Enter a domain name, like example.com.")
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        pass
    else:
        raise InvalidInput(field, "Enter a domain name, not an IP address.")
    try:
        ascii_form = idna.encode(value, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise InvalidInput(field, f"{raw.strip()!r} is not a valid domain name.") from None
    labels = ascii_form.split(".")
    if len(ascii_form) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidInput(field, f"{raw.strip()!r} is not a valid domain name.")
    if labels[-1].isdigit():
        raise InvalidInput(field, "Enter a domain name, not an IP address.")
    # A single label (com, localhost) is a public suffix under the list's default rule.
    if _suffixes().is_public(ascii_form):
        raise InvalidInput(field, f"{ascii_form} is a public suffix: nobody can own all of it.")
    if ascii_form in FREE_MAIL_DOMAINS:
        raise InvalidInput(
            field, f"{ascii_form} is a free email provider: it cannot belong to one organization."
        )
    return ascii_form


def display_domain(domain: str) -> str:
    """The Unicode form of a stored IDNA name, for people (``xn--bcher-kva.example`` → ``bücher.example``)."""
    try:
        return str(idna.decode(domain))
    except (idna.IDNAError, UnicodeError):
        return domain


def normalize_domains(values: list[str], field: str = "domains") -> list[str]:
    """Normalize each domain, de-duplicated and sorted; the first bad one raises :class:`InvalidInput`."""
    return sorted({normalize_domain(value, field) for value in values if value.strip()})

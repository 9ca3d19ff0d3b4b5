"""Flash messages across a redirect: one signed cookie, read and cleared by the next page."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from litestar import Request, Response
from litestar.datastructures import Cookie

from portal.core.settings import Settings
from portal.links.service import frameable_cookies

COOKIE = "portal_flash"


def _sign(settings: Settings, payload: bytes) -> str:
    mac = hmac.new(settings.secret_key.encode(), payload, hashlib.sha256).hexdigest()[:32]
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + mac


def flash(response: Response[Any], settings: Settings, message: str, kind: str = "ok") -> Response[Any]:
    """Attach a message (``ok`` or ``error``) for the next page the browser opens."""
    payload = json.dumps([kind, message[:300]]).encode()
    response.set_cookie(COOKIE, _sign(settings, payload), path="/", httponly=True, **_site(settings))
    return response


def _site(settings: Settings) -> dict[str, Any]:
    # Issue 14: in a framed setup-link page the message must survive a third-party context.
    if frameable_cookies(settings):
        return {"samesite": "none", "secure": True}
    return {"samesite": "lax", "secure": settings.secure}


def read(request: Request[Any, Any, Any], settings: Settings) -> dict[str, str] | None:
    """The pending message, if its signature holds."""
    raw = request.cookies.get(COOKIE)
    if not raw or "." not in raw:
        return None
    encoded, _, _signature = raw.rpartition(".")
    try:
        payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        return None
    if not hmac.compare_digest(_sign(settings, payload), raw):
        return None
    kind, message = json.loads(payload)
    # ``pending``: something still under way; the page's live update removes it when the result is shown.
    return {"kind": kind if kind in ("error", "pending") else "ok", "message": str(message)}


def clear_cookie(settings: Settings) -> Cookie:
    """The cookie that removes a shown message."""
    return Cookie(key=COOKIE, value="", path="/", max_age=0, httponly=True, **_site(settings))

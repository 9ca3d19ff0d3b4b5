"""Standard Webhooks signatures: ``whsec_<base64 key>`` secrets and the ``webhook-*`` headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

PREFIX = "whsec_"
#: Key length in bytes (the specification allows 24 to 64).
KEY_BYTES = 32


def new_secret() -> str:
    """A fresh endpoint secret: ``whsec_`` and 32 random bytes in base64."""
    return PREFIX + base64.b64encode(os.urandom(KEY_BYTES)).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` under the secret's key."""
    key = base64.b64decode(secret.removeprefix(PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one attempt: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": "Portal-Webhooks/1",
    }

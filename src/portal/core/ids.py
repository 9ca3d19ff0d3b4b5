"""Random prefixed ids and hashed bearer secrets (DESIGN §3)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIXES = frozenset(
    {
        "org",
        "usr",
        "mem",
        "inv",
        "dom",
        "ses",
        "pk",
        "aud",
        "chl",
        "sso",
        "ssr",
        "scd",
        "sct",
        "scu",
        "scg",
        "lnk",
    }
)


def new_id(prefix: str) -> str:
    """A random, URL-safe id such as ``org_3kTq...`` (128 bits of randomness)."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}_{secrets.token_urlsafe(16)}"


def new_secret(prefix: str) -> str:
    """A 256-bit bearer secret with a recognizable prefix (``portal_ses_...``) so scanners find leaks."""
    return f"portal_{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(value: str) -> str:
    """The SHA-256 hex digest stored instead of a bearer secret."""
    return hashlib.sha256(value.encode()).hexdigest()


def same_secret(value: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with its stored hash."""
    return hmac.compare_digest(hash_secret(value), stored_hash)


# Named per-prefix factories: piccolo's migrations serialise a column default by its import path.
def organization_id() -> str:
    return new_id("org")


def user_id() -> str:
    return new_id("usr")


def membership_id() -> str:
    return new_id("mem")


def invitation_id() -> str:
    return new_id("inv")


def domain_id() -> str:
    return new_id("dom")


def session_id() -> str:
    return new_id("ses")


def audit_event_id() -> str:
    return new_id("aud")


def challenge_id() -> str:
    return new_id("chl")


def passkey_id() -> str:
    return new_id("pk")


# --- issue 12: sso
def sso_connection_id() -> str:
    return new_id("sso")


def sso_request_id() -> str:
    return new_id("ssr")


# --- issue 13: scim
def scim_directory_id() -> str:
    return new_id("scd")


def scim_token_id() -> str:
    return new_id("sct")


def scim_user_id() -> str:
    return new_id("scu")


def scim_group_id() -> str:
    return new_id("scg")


# --- issue 14: links
def setup_link_id() -> str:
    return new_id("lnk")

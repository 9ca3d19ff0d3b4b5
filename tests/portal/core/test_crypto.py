"""The secret box: AES-GCM under HKDF-derived keys, bound to a purpose, with key ids for rotation."""

from __future__ import annotations

import msgspec
import pytest

from portal.core import crypto
from portal.core.settings import Settings, load_settings

KEY = "k" * 40
NEW_KEY = "n" * 40


def settings(key: str = KEY, previous: tuple[str, ...] = ()) -> Settings:
    return Settings(secret_key=key, previous_secret_keys=list(previous))


def test_a_sealed_value_opens_for_its_purpose_and_hides_the_plaintext() -> None:
    sealed = crypto.seal(settings(), "webhook-secret", b"whsec_abc")
    assert sealed.startswith(f"v1.{crypto.key_id(KEY)}.")
    assert b"whsec_abc" not in sealed.encode() and "d2hzZWNf" not in sealed  # not even base64 of it
    assert crypto.unseal(settings(), "webhook-secret", sealed) == b"whsec_abc"
    # Random nonces: the same secret sealed twice gives two different values.
    assert crypto.seal(settings(), "webhook-secret", b"whsec_abc") != sealed


def test_another_purpose_a_tampered_value_or_an_unknown_key_is_refused() -> None:
    sealed = crypto.seal(settings(), "webhook-secret", b"secret")
    with pytest.raises(crypto.SealError, match="another purpose"):
        crypto.unseal(settings(), "oidc-signing-key", sealed)
    body = sealed.rsplit(".", 1)[1]
    flipped = sealed[: -len(body)] + ("A" if body[0] != "A" else "B") + body[1:]
    with pytest.raises(crypto.SealError, match="altered"):
        crypto.unseal(settings(), "webhook-secret", flipped)
    with pytest.raises(crypto.SealError, match="neither PORTAL_SECRET_KEY"):
        crypto.unseal(settings(NEW_KEY), "webhook-secret", sealed)
    with pytest.raises(crypto.SealError, match="not a sealed value"):
        crypto.unseal(settings(), "webhook-secret", "plain text")


def test_after_a_key_change_old_values_open_and_reseal_under_the_new_key() -> None:
    sealed = crypto.seal(settings(), "idp-client-secret", b"s3cret")
    rotated = settings(NEW_KEY, previous=(KEY,))
    assert crypto.unseal(rotated, "idp-client-secret", sealed) == b"s3cret"
    assert crypto.needs_reseal(rotated, sealed)
    resealed = crypto.reseal(rotated, "idp-client-secret", sealed)
    assert resealed.split(".")[1] == crypto.key_id(NEW_KEY)
    assert crypto.unseal(settings(NEW_KEY), "idp-client-secret", resealed) == b"s3cret"
    assert crypto.reseal(rotated, "idp-client-secret", resealed) == resealed


def test_previous_keys_come_from_a_comma_separated_setting() -> None:
    loaded = load_settings(
        {"PORTAL_SECRET_KEY": NEW_KEY, "PORTAL_PREVIOUS_SECRET_KEYS": f"{KEY}, {'o' * 40}"}
    )
    assert loaded.previous_secret_keys == [KEY, "o" * 40]
    assert msgspec.structs.replace(loaded, previous_secret_keys=[]).previous_secret_keys == []

"""``portal client ...``, ``portal keys rotate`` (old keys stay published until their tokens expired) and
``portal secrets rotate`` re-sealing the private signing keys under a new PORTAL_SECRET_KEY."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner
from joserfc import jwt
from piccolo.engine.base import Engine

from portal.cli import main
from portal.core import clock, crypto
from portal.core.ids import same_secret
from portal.core.settings import Settings
from portal.core.tables import OidcClient, OidcKey
from portal.oidc import keys, tokens
from tests.conftest import POLICY_DIR, ROOT
from tests.factories import make_member, make_org, make_user, sign_in
from tests.portal.oidc.test_hostile import CALLBACK, basic, get_code

pytestmark = pytest.mark.db


@pytest.fixture
def run(database_url: str, tmp_path: Path, db: Engine):  # type: ignore[no-untyped-def]
    env = {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
    }

    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.output

    return invoke


def _value(out: str, name: str) -> str:
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith(f"{name}: "))


def test_client_commands(run) -> None:  # type: ignore[no-untyped-def]
    code, out = run(
        "client", "create", "Acme CRM", "--redirect-uri", "https://crm.example/cb",
        "--post-logout-redirect-uri", "https://crm.example/", "--backchannel-logout-uri",
        "https://crm.example/bcl",
    )  # fmt: skip
    assert code == 0, out
    client_id, secret = _value(out, "client_id"), _value(out, "client_secret")
    assert secret.startswith("portal_client_secret_") and "not shown again" in out
    code, out = run("client", "create", "SPA", "--redirect-uri", "http://localhost:3000/cb", "--public")
    assert code == 0 and "client_secret" not in out
    code, out = run("client", "list")
    assert code == 0 and client_id in out and "confidential" in out and "public" in out
    code, out = run("client", "rotate-secret", client_id)
    assert code == 0
    new_secret = _value(out, "client_secret")
    assert new_secret != secret
    code, out = run("client", "create", "Bad", "--redirect-uri", "http://crm.example/cb")
    assert code == 1 and "must use https" in out
    code, out = run("client", "delete", client_id)
    assert code == 0 and f"deleted {client_id}" in out
    code, out = run("client", "delete", client_id)
    assert code == 1 and "no client" in out


async def test_client_secret_is_stored_hashed(db: Engine) -> None:
    from portal.oidc import clients

    client, secret = await clients.create("CRM", redirect_uris=[CALLBACK])
    assert secret
    row = await OidcClient.select(OidcClient.secret_hash).where(OidcClient.id == client.id).first()
    assert row is not None and secret not in str(row) and same_secret(secret, row["secret_hash"])


async def _tokens(client: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    from portal.oidc import clients

    org = await make_org()
    user = await make_user()
    await make_member(org, user, roles=["admin"])
    await sign_in(client, user, org)
    app, secret = await clients.create("CRM", redirect_uris=[CALLBACK])
    assert secret
    setup = {"app": app, "secret": secret}
    code = await get_code(client, app.id)
    response = await client.post(
        "/oauth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
        headers=basic(app.id, secret),
    )
    assert response.status_code == 200
    return response.json(), str(setup["app"].id)


async def test_keys_rotate_keeps_old_keys_published_until_their_tokens_expire(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    issued, _ = await _tokens(client)
    old_kid = jwt.decode(issued["id_token"], await tokens.own_keys(settings, issued["id_token"])).header[
        "kid"
    ]
    new_kids = await keys.rotate(settings)
    published = {k["kid"] for k in (await client.get("/oauth/jwks")).json()["keys"]}
    assert old_kid in published and set(new_kids) <= published
    # The old access token still works; new tokens are signed by the new key.
    bearer = {"authorization": f"Bearer {issued['access_token']}"}
    assert (await client.get("/oauth/userinfo", headers=bearer)).status_code == 200
    fresh, _ = await _tokens(client)
    assert (
        jwt.decode(fresh["id_token"], await tokens.own_keys(settings, fresh["id_token"])).header["kid"]
        in new_kids
    )
    # Once every token it signed has expired, the retired key leaves the JWKS.
    long_ago = clock.utcnow() - timedelta(seconds=settings.oidc_id_token_ttl + 1)
    await OidcKey.update({OidcKey.retired_at: long_ago}).where(OidcKey.id == old_kid)
    published = {k["kid"] for k in (await client.get("/oauth/jwks")).json()["keys"]}
    assert old_kid not in published and set(new_kids) <= published


async def test_private_keys_are_sealed_and_secrets_rotate_reseals_them(
    client: httpx.AsyncClient, settings: Settings, database_url: str, tmp_path: Path
) -> None:
    assert len((await client.get("/oauth/jwks")).json()["keys"]) == 2
    issued, _ = await _tokens(client)
    rows = await OidcKey.select()
    assert len(rows) == 2 and {r["alg"] for r in rows} == {"ES256", "RS256"}
    for row in rows:
        assert row["private_jwk"].startswith(f"v1.{crypto.key_id(settings.secret_key)}.")
        assert '"d"' not in row["private_jwk"]
    new_key = "the-new-secret-key-" + "n" * 32
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")},
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "cli"),
        "PORTAL_SECRET_KEY": new_key,
        "PORTAL_PREVIOUS_SECRET_KEYS": settings.secret_key,
    }
    done = subprocess.run(  # noqa: ASYNC221 (the CLI as an operator runs it)
        [sys.executable, "-m", "portal.cli", "secrets", "rotate"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "oidc_key.private_jwk: 2 re-sealed" in done.stdout
    rotated = msgspec.structs.replace(settings, secret_key=new_key, previous_secret_keys=[])
    for row in await OidcKey.select():
        assert row["private_jwk"].startswith(f"v1.{crypto.key_id(new_key)}.")
    # With only the new key, the same signing key opens, and old tokens still verify against the JWKS.
    signer = await keys.signing_key(rotated, "ES256")
    assert (
        signer.kid
        == jwt.decode(issued["id_token"], await tokens.own_keys(rotated, issued["id_token"])).header["kid"]
    )
    # The old key alone no longer opens them (they are sealed under the new one).
    sealed = (await OidcKey.select(OidcKey.private_jwk).first())["private_jwk"]
    with pytest.raises(crypto.SealError):
        crypto.unseal(settings, keys.PURPOSE, sealed)

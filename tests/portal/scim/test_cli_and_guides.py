"""``portal scim create|rotate|revoke`` against the engine under test, and guide overrides from
``PORTAL_GUIDES_DIR/scim/``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from portal.cli import main
from portal.core.settings import Settings
from portal.core.tables import ScimToken
from portal.scim import service
from tests.conftest import POLICY_DIR
from tests.factories import make_org
from widgets.scim import service as widget_service

pytestmark = pytest.mark.db


async def test_cli_create_rotate_revoke(database_url: str, tmp_path: Path, db: Any) -> None:
    await make_org("acme", features=["scim"])
    env = {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
    }
    import asyncio

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    created = await asyncio.to_thread(
        invoke, "scim", "create", "--org", "acme", "--name", "Okta", "--provider", "okta"
    )
    assert created.exit_code == 0, created.output
    directory_id = re.search(r"directory: (scd_\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    token = re.search(r"token:\s+(portal_scim_\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    assert f"/scim/v2/{directory_id}" in created.stdout
    hashes = [
        r["token_hash"]
        for r in await ScimToken.select(ScimToken.token_hash).where(ScimToken.directory == directory_id)
    ]
    assert hashes == [service.ids.hash_secret(token)]
    rotated = await asyncio.to_thread(invoke, "scim", "rotate", directory_id)
    assert rotated.exit_code == 0 and "portal_scim_" in rotated.stdout
    assert await ScimToken.count().where(ScimToken.directory == directory_id) == 2
    revoked = await asyncio.to_thread(invoke, "scim", "revoke", directory_id)
    assert revoked.exit_code == 0 and "2 token(s) revoked" in revoked.stdout
    missing = await asyncio.to_thread(
        lambda: CliRunner().invoke(main, ["scim", "rotate", "scd_nope"], env=env)
    )
    assert missing.exit_code != 0 and "no SCIM directory 'scd_nope'" in missing.output
    unknown_org = await asyncio.to_thread(
        lambda: CliRunner().invoke(main, ["scim", "create", "--org", "nope", "--name", "X"], env=env)
    )
    assert unknown_org.exit_code != 0 and "no organization 'nope'" in unknown_org.output


def test_guides_ship_and_an_override_wins(tmp_path: Path, settings: Settings) -> None:
    shipped = widget_service.load_guides(settings)
    assert [g.key for g in shipped] == ["okta", "entra", "jumpcloud", "onelogin", "generic"]
    assert all("{{ base_url }}" in g.body or "{{base_url}}" in g.body for g in shipped)
    (tmp_path / "scim").mkdir()
    (tmp_path / "scim" / "okta.md").write_text(
        "---\ntitle: Okta (our way)\norder: 1\n---\nAsk **IT** for {{ base_url }}.\n"
    )
    (tmp_path / "scim" / "rippling.md").write_text("---\ntitle: Rippling\n---\nUse {{ base_url }}.\n")
    import msgspec

    custom = widget_service.load_guides(msgspec.structs.replace(settings, guides_dir=str(tmp_path)))
    assert custom[0].title == "Okta (our way)"
    assert "Rippling" in [g.title for g in custom]

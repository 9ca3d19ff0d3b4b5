"""SSO widget tests: the real policy files plus one extra role, ``sso_viewer``, that may only read SSO."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core.settings import Settings
from tests.conftest import POLICY_DIR
from tests.factories import make_member, make_org, make_user


@pytest.fixture
def policy(tmp_path: Path) -> PolicyEngine:
    directory = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, directory)
    (directory / "viewer.csv").write_text(
        "p, sso_viewer, sk_org_sso_read\np, sso_viewer, sk_org_settings_read\n"
    )
    return PolicyEngine.from_dir(directory)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec_replace(settings, sso_allow_private_addresses=False)


def msgspec_replace(settings: Settings, **changes: Any) -> Settings:
    import msgspec

    return msgspec.structs.replace(settings, **changes)


@pytest.fixture
async def world(db: Engine, policy: PolicyEngine) -> dict[str, Any]:
    acme = await make_org("acme", "Acme", features=["sso", "domain_verification"])
    globex = await make_org("globex", "Globex", features=["sso"])
    initech = await make_org("initech", "Initech", features=[])
    people: dict[str, Any] = {"acme": acme, "globex": globex, "initech": initech}
    for name, org, roles in (
        ("alice", acme, ["admin"]),
        ("bob", acme, ["member"]),
        ("vic", acme, ["sso_viewer"]),
        ("dave", acme, ["ghost"]),
        ("carol", globex, ["admin"]),
        ("erin", initech, ["admin"]),
    ):
        user = await make_user(f"{name}@{org['name']}.test")
        await make_member(org, user, roles)
        people[name] = user
    return people

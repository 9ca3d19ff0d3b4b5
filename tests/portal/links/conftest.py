"""Setup-link tests: an organization with every feature, an admin, and a second organization."""

from __future__ import annotations

from typing import Any

import pytest
from piccolo.engine.base import Engine

from policy import Feature, PolicyEngine
from tests.factories import make_member, make_org, make_user


@pytest.fixture
async def world(db: Engine, policy: PolicyEngine) -> dict[str, Any]:
    acme = await make_org("acme", "Acme", features=list(Feature))
    globex = await make_org("globex", "Globex", features=list(Feature))
    bare = await make_org("bare", "Bare", features=[])
    alice = await make_user("alice@acme.test")
    await make_member(acme, alice, ["admin"])
    await make_member(globex, alice, ["admin"])
    return {"acme": acme, "globex": globex, "bare": bare, "alice": alice}

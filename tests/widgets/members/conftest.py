"""Fixtures for the Members widget: two organizations, people in every position, mail over loopback SMTP."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core import db as portal_db
from portal.core.settings import Settings
from tests.conftest import POLICY_DIR
from tests.factories import make_invitation, make_member, make_org, make_user
from tests.mailserver import Mailbox

#: Roles an app owner might add: `inviter` invites but holds nothing else; `lead` manages members but has
#: none of the SSO, SCIM or session-policy permissions an admin has.
EXTRA_ROLES = """
p, inviter, sk_org_users_read
p, inviter, sk_org_users_invite
p, lead, sk_org_settings_read
p, lead, sk_org_users_read
p, lead, sk_org_users_invite
p, lead, sk_org_users_role_change
p, lead, sk_org_users_delete
"""


@pytest.fixture(scope="session")
def policy(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    directory = tmp_path_factory.mktemp("policies")
    shutil.copytree(POLICY_DIR, directory, dirs_exist_ok=True)
    (Path(directory) / "roles.csv").write_text(EXTRA_ROLES)
    return PolicyEngine.from_dir(directory)


@pytest.fixture
def settings(settings: Settings, mail: Mailbox) -> Settings:
    """The app sends its mail to the loopback SMTP server."""
    return msgspec.structs.replace(settings, smtp_url=mail.url, brand_name="Acme Cloud")


@pytest.fixture
async def world(db: Engine) -> dict[str, Any]:
    # One transaction: on SQLite each commit is a file sync, and this fixture runs for every test.
    async with portal_db.write_transaction(db):
        return await _world()


async def _world() -> dict[str, Any]:
    acme = await make_org("acme", "Acme")
    globex = await make_org("globex", "Globex")
    alice = await make_user("alice@acme.test", given_name="Alice", family_name="Admin")
    bob = await make_user("bob@acme.test", given_name="Bob", family_name="Builder")
    ghost = await make_user("ghost@acme.test")
    lee = await make_user("lee@acme.test", given_name="Lee", family_name="Lead")
    olga = await make_user("olga@elsewhere.test", given_name="Olga")
    gina = await make_user("gina@globex.test", given_name="Gina")
    gus = await make_user("gus@globex.test", given_name="Gus")
    m = {
        "alice": await make_member(acme, alice, ["admin"]),
        "bob": await make_member(acme, bob, ["member"]),
        "ghost": await make_member(acme, ghost, ["ghost"]),  # a role the policy does not define
        "lee": await make_member(acme, lee, ["lead"]),
        "gina": await make_member(globex, gina, ["admin"]),
        "gus": await make_member(globex, gus, ["member"]),
    }
    acme_invitation, acme_token = await make_invitation(acme, "ivy@acme.test", ["member"], invited_by=alice)
    globex_invitation, _ = await make_invitation(globex, "gil@globex.test", ["member"], invited_by=gina)
    return {
        "acme": acme,
        "globex": globex,
        "alice": alice,
        "bob": bob,
        "ghost": ghost,
        "lee": lee,
        "olga": olga,
        "gina": gina,
        "gus": gus,
        "m": m,
        "acme_invitation": acme_invitation,
        "acme_token": acme_token,
        "globex_invitation": globex_invitation,
    }

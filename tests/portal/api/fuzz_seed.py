"""Seed a migrated database for the schemathesis run: ``python -m tests.portal.api.fuzz_seed DATABASE_URL``
prints JSON with an all-scopes key and ids the fuzzer may use (objects it is free to change or delete)."""

from __future__ import annotations

import asyncio
import json
import sys

from portal.api import keys
from portal.auth import sessions
from portal.core import db
from portal.core.migrate import migrate
from portal.core.tables import Domain
from tests.factories import make_invitation, make_member, make_org, make_user
from widgets.domains import verification


async def seed(url: str) -> dict[str, str]:
    engine = db.bind(db.make_engine(url))
    await db.start(engine)
    try:
        await migrate()
        org = await make_org("fuzz-org", features=["domain_verification", "session_policy"])
        doomed = await make_org("fuzz-doomed")
        await make_member(org, roles=["admin"])
        await make_member(org, roles=["admin"])
        user = await make_user("fuzz-member@example.test")
        member = await make_member(org, user, roles=["member"])
        outsider = await make_user("fuzz-outsider@example.test")
        invitation_id, _ = await make_invitation(org)
        domain = Domain(
            organization=org["id"], domain="fuzz.example.com", verification_token=verification.new_token()
        )
        await domain.save()
        _, session_id = await sessions.create_session(
            user["id"], auth_method="test", organization_id=org["id"]
        )
        _, doomed_session = await sessions.create_session(
            user["id"], auth_method="test", organization_id=org["id"]
        )
        _, clear = await keys.create("fuzz", list(keys.SCOPES))
        return {
            "key": clear,
            "organization_id": org["id"],
            "doomed_organization_id": doomed["id"],
            "membership_id": member["id"],
            "user_id": user["id"],
            "outsider_id": outsider["id"],
            "invitation_id": invitation_id,
            "domain_id": domain.id,
            "session_id": session_id,
            "doomed_session_id": doomed_session,
        }
    finally:
        await db.stop(engine)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(seed(sys.argv[1]))))

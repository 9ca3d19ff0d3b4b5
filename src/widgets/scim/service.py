"""The SCIM widget's business rules: directories of the active organization, their tokens, group → role
mapping, the request log and the self-test. Queries live in :mod:`portal.scim.service`; every call here is
scoped to the organization from the session."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
from litestar import Litestar
from markupsafe import Markup

from portal.core import clock, ids
from portal.core.settings import Settings
from portal.core.tables import ScimToken
from portal.scim import service as scim
from portal.web import guides
from portal.webhooks.events import SELF_TEST_PREFIX

GUIDES_DIR = Path(__file__).parent / "guides"


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class DirectoryView:
    """What the directory page shows."""

    directory: scim.Directory
    base_url: str
    users: int
    groups: int
    tokens: list[dict[str, Any]]
    group_rows: list[dict[str, Any]]
    requests: list[dict[str, Any]]
    self_test: dict[str, Any]
    guide: guides.Guide | None
    guide_html: Markup | None
    all_guides: list[guides.Guide] = field(default_factory=list)


def load_guides(settings: Settings) -> list[guides.Guide]:
    return guides.load(GUIDES_DIR, "scim", settings.guides_dir)


async def directory_view(
    settings: Settings, organization_id: str, directory_id: str, guide_key: str | None
) -> DirectoryView:
    """The page of one of the organization's directories (LookupError if it is not one of them)."""
    directory = await scim.org_directory(organization_id, directory_id)  # tenant check
    base_url = f"{settings.public_url.rstrip('/')}/scim/v2/{directory.id}"
    users, groups = await scim.counts(directory.id)
    tokens = await scim.tokens(directory.id)
    now = clock.utcnow()
    for token in tokens:
        expires = token["expires_at"]
        token["live"] = expires is None or scim._aware(expires) > now
    all_guides = load_guides(settings)
    guide = guides.find(all_guides, guide_key or directory.provider) or guides.find(all_guides, "generic")
    html = guides.render(guide, {"base_url": base_url}) if guide else None
    group_rows = await scim.list_groups(directory.id)
    for row in group_rows:
        row["roles"] = directory.group_roles.get(row["id"], [])
    return DirectoryView(
        directory=directory,
        base_url=base_url,
        users=users,
        groups=groups,
        tokens=tokens,
        group_rows=group_rows,
        requests=await scim.recent_requests(directory.id),
        self_test=await scim.self_test_result(directory.id),
        guide=guide,
        guide_html=html,
        all_guides=all_guides,
    )


async def run_self_test(app: Litestar, settings: Settings, directory: scim.Directory) -> dict[str, Any]:
    """Discovery, then a create/read/delete round trip through the real SCIM endpoints (in process, with a
    two-minute token of its own that is deleted afterwards). The result is stored and returned."""
    token = ids.new_secret(scim.TOKEN_PREFIX)
    row = ScimToken(
        directory=directory.id,
        token_hash=ids.hash_secret(token),
        hint="self-test",
        expires_at=clock.utcnow() + timedelta(minutes=2),
    )
    await row.save()
    steps: list[Step] = []
    base = f"/scim/v2/{directory.id}"
    headers = {"authorization": f"Bearer {token}", "content-type": "application/scim+json"}
    transport = httpx.ASGITransport(app=cast(Any, app), client=("127.0.0.1", 0))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url=settings.public_url, headers=headers, timeout=30
        ) as http:

            async def call(
                name: str, method: str, path: str, expect: int, **kwargs: Any
            ) -> httpx.Response | None:
                started = time.perf_counter()
                try:
                    response = await http.request(method, base + path, **kwargs)
                except httpx.HTTPError as exc:
                    steps.append(Step(name, False, f"{type(exc).__name__}: {exc}"))
                    return None
                ms = (time.perf_counter() - started) * 1000
                ok = response.status_code == expect and (
                    not response.content
                    or response.headers.get("content-type", "").startswith("application/scim+json")
                )
                detail = f"{method} {path} → {response.status_code} in {ms:.0f} ms"
                if not ok:
                    detail += f" (expected {expect})"
                steps.append(Step(name, ok, detail))
                return response if ok else None

            await call("Service provider configuration", "GET", "/ServiceProviderConfig", 200)
            await call("Resource types", "GET", "/ResourceTypes", 200)
            await call("Schemas", "GET", "/Schemas", 200)
            user_name = f"{SELF_TEST_PREFIX}{secrets.token_hex(4)}"
            body = {
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": user_name,
                "active": False,
            }
            created = await call("Create a test user", "POST", "/Users", 201, json=body)
            if created is not None:
                uid = created.json()["id"]
                await call("Find it by userName", "GET", f'/Users?filter=userName eq "{user_name}"', 200)
                await call("Delete it", "DELETE", f"/Users/{uid}", 204)
                await call("It is gone", "GET", f"/Users/{uid}", 404)
    finally:
        await ScimToken.delete().where(ScimToken.id == row.id)
    result = {
        "ok": all(s.ok for s in steps) and len(steps) == 7,
        "at": clock.utcnow().isoformat(),
        "steps": [{"name": s.name, "ok": s.ok, "detail": s.detail} for s in steps],
    }
    await scim.save_self_test(directory.id, result)
    return result

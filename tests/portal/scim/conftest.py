"""Fixtures for the SCIM server tests: an organization with the scim feature, a directory and its token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar

from policy import Feature
from portal.core.settings import Settings
from portal.scim import service
from tests.conftest import serve
from tests.factories import make_org


@dataclass
class Scim:
    """A directory and a client that speaks to it with its token."""

    org: dict[str, Any]
    directory: service.Directory
    token: str
    http: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"/scim/v2/{self.directory.id}"

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {
            "authorization": f"Bearer {token or self.token}",
            "content-type": "application/scim+json",
            **extra,
        }

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(self.base + path, params=params, headers=self.headers())

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.http.post(self.base + path, json=body, headers=self.headers())

    async def put(self, path: str, body: Any, **extra: str) -> httpx.Response:
        return await self.http.put(self.base + path, json=body, headers=self.headers(**extra))

    async def patch(self, path: str, body: Any, **extra: str) -> httpx.Response:
        return await self.http.patch(self.base + path, json=body, headers=self.headers(**extra))

    async def delete(self, path: str, **extra: str) -> httpx.Response:
        return await self.http.delete(self.base + path, headers=self.headers(**extra))


async def make_directory(org: dict[str, Any], name: str = "Okta") -> tuple[service.Directory, str]:
    directory = await service.create_directory(org["id"], name, "okta", actor_id=None)
    token = await service.issue_token(directory, overlap=timedelta(hours=24), actor_id=None)
    return directory, token


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The usual test settings; the rate limit above what these tests send (test_bad_input tests the limit)."""
    return msgspec.structs.replace(settings, scim_rate_limit=100_000)


@pytest.fixture
async def scim(app: Litestar) -> AsyncIterator[Scim]:
    org = await make_org(features=[Feature.SCIM])
    directory, token = await make_directory(org)
    async with serve(app) as http:
        yield Scim(org, directory, token, http)


def user_body(user_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "emails": [{"value": user_name, "type": "work", "primary": True}],
        "active": True,
        **extra,
    }


def group_body(name: str, members: list[str] = (), **extra: Any) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": name,
        "members": [{"value": m} for m in members],
        **extra,
    }


def patch_body(*ops: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": list(ops)}

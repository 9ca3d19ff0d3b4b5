"""The API's conventions: problem+json naming each bad field, unknown fields refused, 413, Idempotency-Key
replay and conflict, ETag/If-Match, cursor pages with next links, the per-key rate limit with its headers,
the OpenAPI 3.1 document and the reference page under the CSP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from litestar import Litestar
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Organization
from portal.web.app import create_app
from portal.web.registry import WidgetRegistry
from tests.conftest import FrozenClock, serve
from tests.factories import make_member, make_org
from tests.portal.api.support import call, make_key

pytestmark = pytest.mark.db


@pytest.fixture
async def key(db: Engine) -> str:
    return (await make_key())[1]


async def test_bad_fields_are_named_and_nothing_is_saved(client: httpx.AsyncClient, key: str) -> None:
    before = await Organization.count()
    response = await call(
        client, "POST", "/organizations", key,
        json={"name": "Not A Slug!", "allowed_email_domains": ["gmail.com"], "features": ["sso"]},
    )  # fmt: skip
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422 and problem["title"] == "Unprocessable content"
    assert [e["field"] for e in problem["errors"]] == ["name"]
    assert await Organization.count() == before
    # A later step's error (the allowed domains) rolls back the organization created before it.
    response = await call(
        client,
        "POST",
        "/organizations",
        key,
        json={"name": "ok-name", "allowed_email_domains": ["gmail.com"]},
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "allowed_email_domains"
    assert await Organization.count() == before


async def test_types_unknown_fields_and_malformed_json(client: httpx.AsyncClient, key: str) -> None:
    response = await call(client, "POST", "/organizations", key, json={"name": "acme", "plan": "pro"})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "plan", "message": "Object contains unknown field `plan`"}]
    response = await call(client, "POST", "/organizations", key, json={"name": 5})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "name"
    response = await call(
        client, "POST", "/organizations", key, json={"name": "acme", "session_policy": {"source": 1}}
    )
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "session_policy.source"
    response = await call(
        client,
        "POST",
        "/organizations",
        key,
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert (
        response.status_code in {400, 422} and response.headers["content-type"] == "application/problem+json"
    )
    response = await call(client, "GET", "/organizations?limit=0", key)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "limit"
    response = await call(client, "GET", "/organizations?cursor=garbage", key)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "cursor"


async def test_oversize_body_is_413(client: httpx.AsyncClient, key: str) -> None:
    response = await call(
        client, "POST", "/organizations", key, json={"name": "big", "metadata": {"x": "a" * 70_000}}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert not await Organization.exists().where(Organization.name == "big")


async def test_idempotency_key_replays_the_first_answer(client: httpx.AsyncClient, db: Engine) -> None:
    _key_id, key = await make_key()
    body = {"name": "once", "metadata": {"plan": "pro"}}
    first = await call(client, "POST", "/organizations", key, json=body, headers={"idempotency-key": "abc-1"})
    assert first.status_code == 201
    again = await call(client, "POST", "/organizations", key, json=body, headers={"idempotency-key": "abc-1"})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert await Organization.count().where(Organization.name == "once") == 1
    assert await AuditEvent.count().where(AuditEvent.action == "organization.created") == 1
    # The same key with another body is refused; nothing is created.
    other = await call(
        client, "POST", "/organizations", key, json={"name": "twice"}, headers={"idempotency-key": "abc-1"}
    )
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert not await Organization.exists().where(Organization.name == "twice")
    # Keys are per API key: another key may use the same value for its own request.
    _other_id, other_key = await make_key()
    mine = await call(
        client,
        "POST",
        "/organizations",
        other_key,
        json={"name": "twice"},
        headers={"idempotency-key": "abc-1"},
    )
    assert mine.status_code == 201
    # A refused first answer (422) is replayed too; a fixed body needs a new key.
    bad = {"name": "Bad Name"}
    one = await call(client, "POST", "/organizations", key, json=bad, headers={"idempotency-key": "k2"})
    two = await call(client, "POST", "/organizations", key, json=bad, headers={"idempotency-key": "k2"})
    assert one.status_code == two.status_code == 422 and one.json()["errors"] == two.json()["errors"]
    # The documented header is accepted by every POST operation.
    doc = (await client.get("/api/v1/openapi.json")).json()
    for path, item in doc["paths"].items():
        if "post" in item:
            names = {p["name"] for p in item["post"].get("parameters", [])}
            assert "Idempotency-Key" in names, path


async def test_etag_and_if_match(client: httpx.AsyncClient, key: str) -> None:
    org = await make_org()
    url = f"/organizations/{org['id']}"
    read = await call(client, "GET", url, key)
    etag = read.headers["etag"]
    stale = await call(
        client, "PATCH", url, key, json={"display_name": "Changed"}, headers={"if-match": '"nope"'}
    )
    assert stale.status_code == 412
    row = await Organization.select(Organization.display_name).where(Organization.id == org["id"]).first()
    assert row["display_name"] != "Changed"
    fresh = await call(
        client, "PATCH", url, key, json={"display_name": "Changed"}, headers={"if-match": etag}
    )
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    # The old ETag is stale now.
    again = await call(client, "PATCH", url, key, json={"display_name": "Again"}, headers={"if-match": etag})
    assert again.status_code == 412
    assert (await call(client, "GET", url, key)).headers["etag"] == fresh.headers["etag"]


async def test_cursor_pages_follow_next_links(client: httpx.AsyncClient, key: str) -> None:
    created = {(await make_org())["id"] for _ in range(5)}
    seen: list[str] = []
    response = await call(client, "GET", "/organizations?limit=2", key)
    pages = 0
    while True:
        assert response.status_code == 200
        page = response.json()
        seen += [o["id"] for o in page["data"]]
        pages += 1
        if page["next"] is None:
            assert "link" not in response.headers
            break
        assert response.headers["link"] == f'<{page["next"]}>; rel="next"'
        assert page["next"].startswith("http://localhost:8000/api/v1/organizations?limit=2&cursor=")
        response = await client.get(
            page["next"].removeprefix("http://localhost:8000"), headers={"authorization": f"Bearer {key}"}
        )
    assert pages == 3 and len(seen) == len(set(seen)) == 5 and set(seen) == created


async def test_audit_events_filters_and_pages(client: httpx.AsyncClient, db: Engine) -> None:
    key_id, key = await make_key()
    org = await make_org()
    await make_member(org, roles=["admin"])
    for n in range(3):
        response = await call(
            client, "PATCH", f"/organizations/{org['id']}", key, json={"display_name": f"Name {n}"}
        )
        assert response.status_code == 200
    url = f"/audit-events?organization_id={org['id']}&actor_id={key_id}&action=settings.updated&limit=2"
    first = (await call(client, "GET", url, key)).json()
    assert [e["details"]["changes"]["display_name"]["new"] for e in first["data"]] == ["Name 2", "Name 1"]
    second = (
        await client.get(
            first["next"].removeprefix("http://localhost:8000"), headers={"authorization": f"Bearer {key}"}
        )
    ).json()
    assert [e["details"]["changes"]["display_name"]["new"] for e in second["data"]] == ["Name 0"]
    assert second["next"] is None
    prefixed = (
        await call(client, "GET", f"/audit-events?organization_id={org['id']}&action=member.", key)
    ).json()
    assert {e["action"] for e in prefixed["data"]} == {"member.added"}
    later = (
        await call(
            client, "GET", f"/audit-events?organization_id={org['id']}&since=2999-01-01T00:00:00Z", key
        )
    ).json()
    assert later["data"] == []
    naive = await call(client, "GET", "/audit-events?since=2026-01-01T00:00:00", key)
    assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "since"


@pytest.fixture
def limited_app(settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry) -> Litestar:
    tight = msgspec.structs.replace(settings, api_rate_limit=3, api_rate_window=60)
    return create_app(tight, engine=db, policy=policy, registry=registry)


@pytest.fixture
async def limited(limited_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(limited_app) as test_client:
        yield test_client


async def test_rate_limit_per_key(limited: httpx.AsyncClient, db: Engine, frozen_clock: FrozenClock) -> None:
    """A fixed window per key: at 12:00:00.12 the window 12:00:00-12:01:00 has 60 s left."""
    _id, key = await make_key()
    _other, other_key = await make_key()
    remaining = []
    for _ in range(3):
        response = await call(limited, "GET", "/organizations", key)
        assert response.status_code == 200
        assert response.headers["ratelimit-policy"] == '"per-key";q=3;w=60'
        remaining.append(response.headers["ratelimit"])
    assert remaining == ['"per-key";r=2;t=60', '"per-key";r=1;t=60', '"per-key";r=0;t=60']
    refused = await call(limited, "GET", "/organizations", key)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "60"
    assert refused.headers["content-type"] == "application/problem+json"
    assert "Retry in 60 seconds" in refused.json()["detail"]
    # Another key has its own budget.
    assert (await call(limited, "GET", "/organizations", other_key)).status_code == 200
    # Hammering does not move the end of the window; once it ends, the key has its budget again.
    frozen_clock.advance(seconds=30)
    again = await call(limited, "GET", "/organizations", key)
    assert again.status_code == 429 and again.headers["retry-after"] == "30"
    frozen_clock.advance(seconds=30)
    renewed = await call(limited, "GET", "/organizations", key)
    assert renewed.status_code == 200 and renewed.headers["ratelimit"] == '"per-key";r=2;t=60'


async def test_openapi_document_and_reference_page(client: httpx.AsyncClient, db: Engine) -> None:
    doc = (await client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert doc["servers"] == [{"url": "/api/v1"}]
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": "An API key: `portal_sk_...`."
    }  # fmt: skip
    assert "/organizations/{organization_id}/memberships/{membership_id}" in doc["paths"]
    assert not any(p in doc["paths"] for p in ("/", "/openapi.json", "/reference", "/{path}"))
    error = doc["paths"]["/organizations"]["post"]["responses"]["422"]["content"]
    assert list(error) == ["application/problem+json"]
    page = await client.get("/api/v1/reference", headers={"accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "<script" not in page.text and "style=" not in page.text and "<style" not in page.text
    assert "PATCH /api/v1/organizations/{organization_id}/memberships/{membership_id}" in page.text
    assert "Scope: <code>memberships:write</code>" in page.text
    assert 'id="schema-OrganizationCreate"' in page.text


async def test_session_cookie_does_not_authenticate_the_api(client: httpx.AsyncClient, db: Engine) -> None:
    from tests.factories import sign_in

    org = await make_org()
    admin = await make_member(org, roles=["admin"])
    await sign_in(client, admin["user"] if isinstance(admin["user"], str) else admin["user"]["id"], org)
    response = await client.get("/api/v1/organizations")
    assert response.status_code == 401


async def test_chunked_oversize_body_is_413_too(client: httpx.AsyncClient, key: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "chunky", "metadata": {"x": "'
        for _ in range(80):
            yield b"a" * 1024
        yield b'"}}'

    for extra in ({}, {"idempotency-key": "chunky-1"}):
        response = await client.post(
            "/api/v1/organizations",
            content=chunks(),
            headers={"authorization": f"Bearer {key}", "content-type": "application/json", **extra},
        )
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert not await Organization.exists().where(Organization.name == "chunky")


async def test_a_request_still_running_with_the_same_key_gets_409(
    client: httpx.AsyncClient, db: Engine
) -> None:
    from datetime import timedelta

    from portal.core import clock
    from portal.core.tables import ApiIdempotency

    key_id, key = await make_key()
    body = b'{"name": "racing"}'
    import hashlib

    digest = hashlib.sha256()
    for part in ("POST", "/organizations", ""):
        digest.update(part.encode() + b"\0")
    digest.update(body)
    now = clock.utcnow()
    await ApiIdempotency(
        scope_key=f"{key_id}:race-1", request_hash=digest.hexdigest(), created_at=now,
        expires_at=now + timedelta(hours=1),
    ).save()  # fmt: skip
    response = await call(
        client, "POST", "/organizations", key, content=body,
        headers={"content-type": "application/json", "idempotency-key": "race-1"},
    )  # fmt: skip
    assert response.status_code == 409 and "still being processed" in response.json()["detail"]
    assert not await Organization.exists().where(Organization.name == "racing")
    # An expired record is forgotten: the key works again.
    await ApiIdempotency.update({ApiIdempotency.expires_at: now - timedelta(seconds=1)}).where(
        ApiIdempotency.scope_key == f"{key_id}:race-1"
    )
    response = await call(
        client, "POST", "/organizations", key, content=body,
        headers={"content-type": "application/json", "idempotency-key": "race-1"},
    )  # fmt: skip
    assert response.status_code == 201


async def test_unknown_paths_and_methods_are_problems(client: httpx.AsyncClient, key: str) -> None:
    for path in ("/api/v1/nope", "/api/v1/", "/api/v1/organizations/x/y/z"):
        response = await client.get(path, headers={"authorization": f"Bearer {key}"})
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
    response = await client.put("/api/v1/organizations", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 405 and response.headers["content-type"] == "application/problem+json"
    assert "POST" in response.headers["allow"]


async def test_concurrent_retries_with_one_idempotency_key_create_once(
    client: httpx.AsyncClient, key: str
) -> None:
    import asyncio

    async def attempt() -> httpx.Response:
        return await call(
            client,
            "POST",
            "/organizations",
            key,
            json={"name": "concurrent"},
            headers={"idempotency-key": "same"},
        )

    responses = await asyncio.gather(*(attempt() for _ in range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 409} and 201 in statuses, statuses
    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(created) == 1
    assert await Organization.count().where(Organization.name == "concurrent") == 1

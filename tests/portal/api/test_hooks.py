"""The hostile matrix for the API's webhook-endpoint and setup-link routes: no key, a revoked key, a key without
the route's scope, a key bound to another organization, another organization's object ids, and success with
what is stored (and audited with the key as actor)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.api import hooks, keys
from portal.core import db
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, SetupLink, WebhookDelivery, WebhookEndpoint
from portal.links import service as links
from portal.web.app import create_app
from portal.web.registry import WidgetRegistry
from portal.webhooks import events
from portal.webhooks import service as webhooks
from tests.conftest import serve
from tests.factories import make_org
from tests.portal.api.support import call, make_key

pytestmark = pytest.mark.db

PUBLIC_URL = "https://93.184.215.14/hooks/portal"  # a public literal address: no DNS lookup needed


@dataclass
class Side:
    org: dict[str, Any]
    ids: dict[str, str]


async def _side(settings: Settings) -> Side:
    org = await make_org(features=["domain_verification"])
    async with db.write_transaction():
        endpoint, _secret = await webhooks.create_endpoint(settings, PUBLIC_URL, organization_id=org["id"])
        await events.emit(
            "organization.updated", organization_id=org["id"], data={"organization_id": org["id"]}
        )
    event = (
        await WebhookDelivery.select(WebhookDelivery.event)
        .where(WebhookDelivery.endpoint == endpoint.id)
        .first()
    )
    link = await links.create_link(settings, org["id"], "domain_verification")
    return Side(
        org=org,
        ids={
            "organization_id": org["id"],
            "endpoint_id": endpoint.id,
            "event_id": event["event"],
            "link_id": link.id,
        },
    )


@pytest.fixture
async def client(
    settings: Settings, db: Engine, policy: PolicyEngine, registry: WidgetRegistry
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings, engine=db, policy=policy, registry=registry)) as test_client:
        yield test_client


@pytest.fixture
async def sides(settings: Settings, db: Engine) -> tuple[Side, Side]:
    return await _side(settings), await _side(settings)


ORG = "/organizations/{organization_id}"
#: (method, path, scope, success status, body, the path ids that name another organization's objects)
ROUTES: list[tuple[str, str, str, int, dict[str, Any] | None, tuple[str, ...]]] = [
    ("GET", "/webhook-endpoints", "webhooks:read", 200, None, ()),
    ("POST", "/webhook-endpoints", "webhooks:write", 201, {"url": PUBLIC_URL, "event_types": ["user.created"]}, ()),
    ("GET", "/webhook-endpoints/{endpoint_id}", "webhooks:read", 200, None, ("endpoint_id",)),
    ("PATCH", "/webhook-endpoints/{endpoint_id}", "webhooks:write", 200, {"description": "billing"}, ("endpoint_id",)),
    ("DELETE", "/webhook-endpoints/{endpoint_id}", "webhooks:write", 204, None, ("endpoint_id",)),
    ("GET", "/webhook-endpoints/{endpoint_id}/deliveries", "webhooks:read", 200, None, ("endpoint_id",)),
    ("POST", "/webhook-events/{event_id}/replay", "webhooks:write", 202, None, ("event_id",)),
    ("POST", ORG + "/portal-links", "portal_links:write", 201, {"intent": "domain_verification"}, ("organization_id",)),
    ("DELETE", ORG + "/portal-links/{link_id}", "portal_links:write", 204, None, ("organization_id", "link_id")),
]  # fmt: skip
IDS = [f"{m} {p}" for m, p, *_ in ROUTES]


def test_every_route_of_the_module_is_in_the_matrix() -> None:
    declared = {
        (method, path.replace(":str", ""))
        for h in hooks.HANDLERS
        for path in h.paths
        for method in h.http_methods
    }
    assert declared == {(m, p) for m, p, *_ in ROUTES}
    assert {h.opt["scope"] for h in hooks.HANDLERS} <= set(keys.SCOPES)


async def _send(
    client: httpx.AsyncClient, route: tuple[Any, ...], ids: dict[str, str], key: str | None
) -> httpx.Response:
    method, path, _scope, _status, body, _objects = route
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    return await call(client, method, path.format(**ids), key, **kwargs)


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_no_key_and_a_revoked_key_get_401(
    client: httpx.AsyncClient, sides: tuple[Side, Side], route: Any
) -> None:
    _id, revoked = await make_key(revoked=True)
    before = await AuditEvent.count()
    for key in (None, revoked):
        response = await _send(client, route, sides[0].ids, key)
        assert response.status_code == 401, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert await AuditEvent.count() == before


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
async def test_a_key_without_the_scope_gets_403_naming_it(
    client: httpx.AsyncClient, sides: tuple[Side, Side], route: Any
) -> None:
    _id, key = await make_key([s for s in keys.SCOPES if s != route[2]])
    response = await _send(client, route, sides[0].ids, key)
    assert response.status_code == 403, response.text
    assert response.json()["missing_scope"] == route[2]


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if r[5]], ids=[i for i, r in zip(IDS, ROUTES, strict=True) if r[5]]
)
async def test_another_organizations_ids_are_404_and_change_nothing(
    client: httpx.AsyncClient, sides: tuple[Side, Side], route: Any
) -> None:
    mine, theirs = sides
    _id, key = await make_key(organization=mine.org["id"])
    before = (await AuditEvent.count(), await WebhookEndpoint.count(), await SetupLink.count())
    swapped = {**mine.ids, **{name: theirs.ids[name] for name in route[5]}}
    response = await _send(client, route, swapped, key)
    assert response.status_code == 404, response.text
    assert (await AuditEvent.count(), await WebhookEndpoint.count(), await SetupLink.count()) == before
    assert await WebhookEndpoint.exists().where(WebhookEndpoint.id == theirs.ids["endpoint_id"])


async def test_a_bound_key_lists_only_its_organizations_endpoints_and_creates_for_it(
    client: httpx.AsyncClient, sides: tuple[Side, Side]
) -> None:
    mine, theirs = sides
    _id, key = await make_key(organization=mine.org["id"])
    listed = await call(client, "GET", "/webhook-endpoints", key)
    assert [e["id"] for e in listed.json()["data"]] == [mine.ids["endpoint_id"]]
    refused = await call(
        client,
        "POST",
        "/webhook-endpoints",
        key,
        json={"url": PUBLIC_URL, "organization_id": theirs.org["id"]},
    )
    assert refused.status_code == 404
    made = await call(client, "POST", "/webhook-endpoints", key, json={"url": PUBLIC_URL})
    assert made.status_code == 201 and made.json()["organization_id"] == mine.org["id"]


async def test_success_and_what_is_stored(client: httpx.AsyncClient, sides: tuple[Side, Side]) -> None:
    mine, _theirs = sides
    key_id, key = await make_key()
    ids = mine.ids

    made = await call(
        client, "POST", "/webhook-endpoints", key, json={"url": PUBLIC_URL, "event_types": ["user.created"]}
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert secret.startswith("whsec_") and made.headers["cache-control"] == "no-store"
    row = (
        await WebhookEndpoint.select()
        .where(WebhookEndpoint.id == made.json()["id"])
        .first()
        .output(load_json=True)
    )
    assert (
        row["event_types"] == ["user.created"] and secret not in row["secret"]
    )  # sealed, not stored as given
    shown = await call(client, "GET", f"/webhook-endpoints/{made.json()['id']}", key)
    assert "secret" not in shown.json()

    changed = await call(
        client, "PATCH", f"/webhook-endpoints/{ids['endpoint_id']}", key, json={"description": "billing"}
    )
    assert changed.status_code == 200 and changed.json()["description"] == "billing"
    assert (
        await WebhookEndpoint.select(WebhookEndpoint.description)
        .where(WebhookEndpoint.id == ids["endpoint_id"])
        .first()
    )["description"] == "billing"

    log = await call(client, "GET", f"/webhook-endpoints/{ids['endpoint_id']}/deliveries", key)
    assert [d["event_id"] for d in log.json()["data"]] == [ids["event_id"]]
    replay = await call(client, "POST", f"/webhook-events/{ids['event_id']}/replay", key)
    assert replay.status_code == 202 and len(replay.json()["delivery_ids"]) == 1

    link = await call(
        client,
        "POST",
        f"/organizations/{ids['organization_id']}/portal-links",
        key,
        json={"intent": "domain_verification", "ttl": 300},
    )
    assert link.status_code == 201, link.text
    assert "/setup/" in link.json()["url"] and link.json()["intent"] == "domain_verification"
    assert await SetupLink.exists().where(SetupLink.id == link.json()["id"])
    gone = await call(
        client, "DELETE", f"/organizations/{ids['organization_id']}/portal-links/{link.json()['id']}", key
    )
    assert gone.status_code == 204
    assert (await SetupLink.select(SetupLink.revoked_at).where(SetupLink.id == link.json()["id"]).first())[
        "revoked_at"
    ] is not None

    deleted = await call(client, "DELETE", f"/webhook-endpoints/{ids['endpoint_id']}", key)
    assert deleted.status_code == 204
    assert not await WebhookEndpoint.exists().where(WebhookEndpoint.id == ids["endpoint_id"])
    audited = {
        r["action"] for r in await AuditEvent.select(AuditEvent.action).where(AuditEvent.actor_id == key_id)
    }
    assert {"webhook.endpoint_created", "webhook.endpoint_updated", "webhook.endpoint_deleted"} <= audited


async def test_bad_input_names_the_field_and_saves_nothing(
    client: httpx.AsyncClient, sides: tuple[Side, Side]
) -> None:
    _key_id, key = await make_key()
    before = (await WebhookEndpoint.count(), await SetupLink.count())
    cases = [
        ("/webhook-endpoints", {"url": "https://127.0.0.1/hook"}, "url"),
        ("/webhook-endpoints", {"url": "ftp://example.com/hook"}, "url"),
        ("/webhook-endpoints", {"url": PUBLIC_URL, "event_types": ["user.exploded"]}, "event_types"),
        ("/webhook-endpoints", {"url": PUBLIC_URL, "colour": "red"}, "colour"),
        (
            f"/organizations/{sides[0].ids['organization_id']}/portal-links",
            {"intent": "everything"},
            "intent",
        ),
        (f"/organizations/{sides[0].ids['organization_id']}/portal-links", {"intent": "sso"}, None),
    ]
    for path, body, field in cases:
        response = await call(client, "POST", path, key, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        if field:
            assert field in response.text, response.text
    assert (await WebhookEndpoint.count(), await SetupLink.count()) == before


async def test_a_replayed_answer_holds_the_secret_but_the_table_keeps_it_sealed(
    client: httpx.AsyncClient, sides: tuple[Side, Side]
) -> None:
    from portal.core.tables import ApiIdempotency

    _key_id, key = await make_key()
    body = {"url": PUBLIC_URL}
    headers = {"idempotency-key": "hook-1"}
    first = await call(client, "POST", "/webhook-endpoints", key, json=body, headers=headers)
    again = await call(client, "POST", "/webhook-endpoints", key, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    secret = first.json()["secret"]
    assert again.json()["secret"] == secret
    [stored] = await ApiIdempotency.select(ApiIdempotency.response_body)
    assert secret not in stored["response_body"] and stored["response_body"].startswith("v1.")

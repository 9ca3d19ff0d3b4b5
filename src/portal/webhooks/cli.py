"""``portal webhook create|list|enable|disable|delete|deliveries|replay``: the webhook service functions on the command line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from portal.core.settings import Settings, ensure_secret_key

T = TypeVar("T")


def _run(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    """``work`` in one write transaction; NotFound becomes a one-line error."""
    from portal.cli import _with_db
    from portal.core import db
    from portal.webhooks import service

    async def transaction() -> T:
        async with db.write_transaction():
            return await work()

    try:
        return _with_db(settings, transaction)
    except service.NotFound as exc:
        raise click.ClickException(f"not found: {exc}") from None


def _when(value: object) -> str:
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else "-"


@click.group("webhook")
def webhook() -> None:
    """Webhook endpoints (signed Standard Webhooks events).

    An endpoint is a URL of your app where the portal sends signed events."""


@webhook.command("create", short_help="Register an endpoint; prints its secret once.")
@click.argument("url")
@click.option("--event", "event_types", multiple=True, help="An event type to send (repeatable); none: all.")
@click.option(
    "--org", "organization", default=None, help="Only this organization's events (id, name or external id)."
)
@click.option(
    "--description", default="", help="A note for people reading the list, such as 'billing service'."
)
def webhook_create(
    url: str, event_types: tuple[str, ...], organization: str | None, description: str
) -> None:
    """Register an endpoint URL; prints its id and its secret (whsec_...), shown only now."""
    from portal.auth import accounts
    from portal.cli import _settings
    from portal.core.errors import InvalidInput
    from portal.webhooks import service

    settings = ensure_secret_key(_settings())

    async def create() -> tuple[service.EndpointView, str]:
        organization_id = None
        if organization is not None:
            found = await accounts.find_organization(organization)
            if found is None:
                raise InvalidInput("org", f"no organization {organization!r}")
            organization_id = found["id"]
        return await service.create_endpoint(
            settings, url, event_types=event_types, organization_id=organization_id, description=description
        )

    endpoint, secret = _run(settings, create)
    click.echo(f"id: {endpoint.id}")
    click.echo(f"url: {endpoint.url}")
    click.echo(f"events: {' '.join(endpoint.event_types) or 'all'}")
    click.echo(f"secret: {secret}")
    click.echo(
        "Store the secret now: it is not shown again. Verify each request's webhook-signature with it."
    )


@webhook.command("list")
def webhook_list() -> None:
    """Every endpoint: id, state, organization, event types, URL."""
    from portal.cli import _settings
    from portal.webhooks import service

    for e in _run(_settings(), service.list_endpoints):
        state = "enabled" if e.enabled else f"disabled ({e.disabled_reason})"
        click.echo(
            f"{e.id}  {state}  {e.organization_id or 'all organizations'}  "
            f"{','.join(e.event_types) or 'all events'}  {e.url}"
        )


@webhook.command("delete")
@click.argument("endpoint_id")
def webhook_delete(endpoint_id: str) -> None:
    """Delete an endpoint and its delivery log."""
    from portal.cli import _settings
    from portal.webhooks import service

    _run(_settings(), lambda: service.delete_endpoint(endpoint_id))
    click.echo(f"deleted {endpoint_id}")


@webhook.command("enable", short_help="Turn a disabled endpoint back on.")
@click.argument("endpoint_id")
def webhook_enable(endpoint_id: str) -> None:
    """Turn an endpoint back on (after it was disabled for failing); its failure record is cleared."""
    from portal.cli import _settings
    from portal.webhooks import service

    settings = ensure_secret_key(_settings())
    _run(settings, lambda: service.update_endpoint(settings, endpoint_id, enabled=True))
    click.echo(f"enabled {endpoint_id}")


@webhook.command("disable")
@click.argument("endpoint_id")
def webhook_disable(endpoint_id: str) -> None:
    """Stop sending to an endpoint (new events are not kept for it)."""
    from portal.cli import _settings
    from portal.webhooks import service

    settings = ensure_secret_key(_settings())
    _run(settings, lambda: service.update_endpoint(settings, endpoint_id, enabled=False))
    click.echo(f"disabled {endpoint_id}")


@webhook.command("deliveries", short_help="An endpoint's latest deliveries and attempts.")
@click.argument("endpoint_id")
@click.option("--limit", default=50, show_default=True, help="How many of the latest deliveries to show.")
def webhook_deliveries(endpoint_id: str, limit: int) -> None:
    """An endpoint's latest deliveries and every attempt (status, response code, duration, error)."""
    from portal.cli import _settings
    from portal.webhooks import service

    for d in _run(_settings(), lambda: service.list_deliveries(endpoint_id, limit=limit)):
        due = f"  next attempt {_when(d.next_attempt_at)}" if d.status == "pending" else ""
        click.echo(f"{d.id}  {d.event_type}  {d.event_id}  {d.status}  attempts {d.attempts}{due}")
        for a in d.log:
            code = a.status_code if a.status_code is not None else "-"
            error = f"  {a.error}" if a.error else ""
            click.echo(f"    {_when(a.at)}  {a.status}  {code}  {a.duration_ms} ms{error}")


@webhook.command("replay", short_help="Send one event again (same webhook-id).")
@click.argument("event_id")
@click.option("--endpoint", "endpoint_id", default=None, help="Only to this endpoint.")
def webhook_replay(event_id: str, endpoint_id: str | None) -> None:
    """Send one event again (same webhook-id) to the endpoints it was for, now; prints each outcome."""
    from portal.cli import _settings, _with_db
    from portal.webhooks import delivery, service

    settings = ensure_secret_key(_settings())
    ids = _run(settings, lambda: service.replay_event(event_id, endpoint_id=endpoint_id))
    if not ids:
        click.echo(f"{event_id}: no enabled endpoint to send it to")
        return

    async def send() -> list[delivery.Outcome]:
        return await delivery.send(settings, await delivery.claim(settings, ids=ids))

    for outcome in _with_db(settings, send):
        result = "delivered" if outcome.ok else f"failed ({outcome.error}); retried later"
        click.echo(f"{outcome.delivery_id} -> {outcome.endpoint_id}: {result}")

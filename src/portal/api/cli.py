"""``portal api-key create|list|revoke``: keys for the management API."""

from __future__ import annotations

import click


@click.group("api-key")
def api_key() -> None:
    """Management API keys (portal_sk_ bearer tokens for /api/v1)."""


@api_key.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, help="e.g. organizations:read; repeatable.")
@click.option("--org", default=None, help="Bind the key to this organization (id, name or external id).")
def create(name: str, scopes: tuple[str, ...], org: str | None) -> None:
    """Create a key; it is printed once (only its hash is stored)."""
    from portal.api import keys
    from portal.cli import _settings, _with_db

    row, clear = _with_db(_settings(), lambda: keys.create(name, list(scopes), org))
    click.echo(f"id: {row['id']}")
    click.echo(f"key: {clear}")
    click.echo(f"scopes: {' '.join(row['scopes'])}")
    if row["organization_id"]:
        click.echo(f"organization: {row['organization_id']}")
    click.echo("Store the key now: it is not shown again.")


@api_key.command("list", short_help="Every key with its scopes, organization and last use.")
def list_keys() -> None:
    """Every key: id, prefix, name, scopes, organization, created, last used, revoked."""
    from portal.api import keys
    from portal.cli import _settings, _with_db

    for row in _with_db(_settings(), keys.list_all):
        state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "active"
        used = f"{row['last_used_at']:%Y-%m-%d %H:%M}" if row["last_used_at"] else "never"
        click.echo(
            f"{row['id']}  {row['prefix']}…  {row['name']}  {','.join(row['scopes'])}"
            f"  org={row['organization_id'] or '*'}  created={row['created_at']:%Y-%m-%d %H:%M}"
            f"  last_used={used}  {state}"
        )


@api_key.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from portal.api import keys
    from portal.cli import _settings, _with_db

    if not _with_db(_settings(), lambda: keys.revoke(key_id)):
        raise click.ClickException(f"no live API key {key_id!r}")
    click.echo(f"revoked {key_id}")

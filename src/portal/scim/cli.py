"""``portal scim ...``: create a SCIM directory for an organization and rotate or revoke its token."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click


@click.group("scim")
def scim_group() -> None:
    """SCIM directories (an IdP provisions members and groups).

    A directory is where an organization's identity provider provisions members and groups."""


@scim_group.command("create", short_help="Create a directory: base URL and token.")
@click.option("--org", "org_ref", required=True, help="Organization id, name or external id.")
@click.option("--name", required=True, help="Shown in the widget, such as 'Okta production'.")
@click.option(
    "--provider",
    type=click.Choice(["okta", "entra", "jumpcloud", "onelogin", "generic"]),
    default="generic",
    show_default=True,
    help="The identity provider, for the setup guide the widget shows.",
)
def scim_create(org_ref: str, name: str, provider: str) -> None:
    """Create a directory; prints its base URL and token (the token is shown only now)."""
    from portal.auth import accounts
    from portal.cli import _settings, _with_db
    from portal.scim import service

    settings = _settings()

    async def work() -> tuple[Any, str]:
        org = await accounts.find_organization(org_ref)
        if org is None:
            raise click.ClickException(f"no organization {org_ref!r}")
        directory = await service.create_directory(org["id"], name, provider, actor_id=None)
        token = await service.issue_token(
            directory, overlap=timedelta(seconds=settings.scim_token_overlap), actor_id=None
        )
        return directory, token

    directory, token = _with_db(settings, work)
    click.echo(f"directory: {directory.id}")
    click.echo(f"base URL:  {settings.public_url.rstrip('/')}/scim/v2/{directory.id}")
    click.echo(f"token:     {token}  (shown only now)")


@scim_group.command("rotate", short_help="A new token; the old one works a while.")
@click.argument("directory_id")
def scim_rotate(directory_id: str) -> None:
    """A new token (shown only now); the previous one works for PORTAL_SCIM_TOKEN_OVERLAP."""
    from portal.cli import _settings, _with_db
    from portal.scim import service

    settings = _settings()

    async def work() -> str:
        directory = await service.get_directory(directory_id)
        if directory is None:
            raise click.ClickException(f"no SCIM directory {directory_id!r}")
        return await service.issue_token(
            directory, overlap=timedelta(seconds=settings.scim_token_overlap), actor_id=None
        )

    click.echo(f"token: {_with_db(settings, work)}  (shown only now)")


@scim_group.command("revoke")
@click.argument("directory_id")
def scim_revoke(directory_id: str) -> None:
    """Every token of the directory stops working now."""
    from portal.cli import _settings, _with_db
    from portal.scim import service

    settings = _settings()

    async def work() -> int:
        directory = await service.get_directory(directory_id)
        if directory is None:
            raise click.ClickException(f"no SCIM directory {directory_id!r}")
        return await service.revoke_tokens(directory, actor_id=None)

    click.echo(f"{_with_db(settings, work)} token(s) revoked")

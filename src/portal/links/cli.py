"""``portal link create|list|revoke``: setup links for IT admins (issue 14)."""

from __future__ import annotations

import click


def _organization_id(ref: str) -> str:
    from portal.auth import accounts
    from portal.cli import _settings, _with_db

    found = _with_db(_settings(), lambda: accounts.find_organization(ref))
    if found is None:
        raise click.ClickException(f"no organization {ref!r} (give its id, name or external id)")
    return str(found["id"])


@click.group("link")
def link() -> None:
    """One-time setup links for IT admins without an account.

    An IT admin outside the app opens the link and sets up SSO, SCIM or domains without an account."""


@link.command("create", short_help="Print a one-time setup URL for ORG.")
@click.argument("org")
@click.option(
    "--intent",
    type=click.Choice(["sso", "scim", "domain_verification"]),
    required=True,
    help="What the link opens: the SSO, SCIM or Domains widget.",
)
@click.option(
    "--ttl",
    default=None,
    help="How long it can be opened: 90s, 5m, 2h… (default PORTAL_ADMIN_PORTAL_LINK_TTL).",
)
def link_create(org: str, intent: str, ttl: str | None) -> None:
    """Print a one-time URL for ORG (id, name or external id); only its hash is stored."""
    from portal.cli import _settings, _with_db
    from portal.core.errors import InvalidInput
    from portal.core.settings import parse_duration
    from portal.links import service

    seconds = None
    if ttl is not None:
        seconds = parse_duration(ttl)
        if seconds is None:
            raise click.BadParameter(
                f"{ttl!r} is not a duration (use seconds, or a number with s, m, h or d)", param_hint="--ttl"
            )
    settings = _settings()
    organization_id = _organization_id(org)
    try:
        created = _with_db(
            settings, lambda: service.create_link(settings, organization_id, intent, ttl=seconds)
        )
    except InvalidInput as exc:
        raise click.BadParameter(exc.message, param_hint=f"--{exc.field}") from None
    click.echo(created.url)
    click.echo(
        f"id: {created.id}  intent: {created.intent}  opens until: {created.expires_at.isoformat()}", err=True
    )
    click.echo("The URL works once and is not shown again; revoke it with `portal link revoke ID`.", err=True)


@link.command("list", short_help="ORG's setup links with their status.")
@click.argument("org")
def link_list(org: str) -> None:
    """ORG's setup links, newest first, with their status (pending, expired, active, ended, revoked)."""
    from portal.cli import _settings, _with_db
    from portal.links import service

    organization_id = _organization_id(org)
    rows = _with_db(_settings(), lambda: service.list_links(organization_id))
    if not rows:
        click.echo("no setup links")
    for row in rows:
        click.echo(
            f"{row['id']}  {row['intent']:<19}  {row['status']:<7}  created {row['created_at'].isoformat()}"
            f"  opens until {row['expires_at'].isoformat()}"
        )


@link.command("revoke", short_help="Revoke a link (and end its session).")
@click.argument("link_id")
def link_revoke(link_id: str) -> None:
    """Revoke a link: it no longer opens, and the session it opened ends now."""
    from portal.cli import _settings, _with_db
    from portal.links import service

    if not _with_db(_settings(), lambda: service.revoke_link(link_id)):
        raise click.ClickException(f"no setup link {link_id!r} that is not revoked already")
    click.echo(f"revoked {link_id}")

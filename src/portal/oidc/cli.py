"""``portal client ...`` (register the apps that sign users in) and ``portal keys rotate``."""

from __future__ import annotations

import click

from portal.core.settings import ensure_secret_key


@click.group("client")
def client() -> None:
    """Register the apps that sign users in (OIDC clients).

    OpenID Connect clients: the apps that sign their users in through the portal.
    """


@client.command("create")
@click.argument("name")
@click.option(
    "--redirect-uri", "redirect_uris", multiple=True, required=True, help="Exact match; repeatable."
)
@click.option("--post-logout-redirect-uri", "post_logout", multiple=True, help="Repeatable.")
@click.option("--backchannel-logout-uri", default=None, help="Receives back-channel logout tokens.")
@click.option("--public", is_flag=True, help="No secret (a browser or mobile app); PKCE S256 required.")
@click.option(
    "--signing-alg",
    type=click.Choice(["ES256", "RS256"]),
    default="ES256",
    show_default=True,
    help="Algorithm of this client's ID tokens (RS256 if its library cannot verify ES256).",
)
def client_create(
    name: str,
    redirect_uris: tuple[str, ...],
    post_logout: tuple[str, ...],
    backchannel_logout_uri: str | None,
    public: bool,
    signing_alg: str,
) -> None:
    """Register a client.

    Prints its client_id and (confidential clients) its secret, shown only now.
    """
    from portal.cli import _settings, _with_db
    from portal.oidc import clients

    settings = _settings()
    created, secret = _with_db(
        settings,
        lambda: clients.create(
            name,
            redirect_uris=list(redirect_uris),
            post_logout_redirect_uris=list(post_logout),
            backchannel_logout_uri=backchannel_logout_uri,
            public=public,
            signing_alg=signing_alg,
        ),
    )
    click.echo(f"client_id: {created.id}")
    if secret:
        click.echo(f"client_secret: {secret}")
        click.echo(
            "Store the secret now: it is not shown again (portal client rotate-secret makes a new one)."
        )
    click.echo(f"issuer: {settings.public_url.rstrip('/')}")


@client.command("list")
def client_list() -> None:
    """Every registered client."""
    from portal.cli import _settings, _with_db
    from portal.oidc import clients

    for item in _with_db(_settings(), clients.list_all):
        kind = "public" if item.public else "confidential"
        click.echo(f"{item.id}  {item.name}  {kind}  {item.signing_alg}  {' '.join(item.redirect_uris)}")


@client.command("delete")
@click.argument("client_id")
def client_delete(client_id: str) -> None:
    """Delete a client; its tokens stop working."""
    from portal.cli import _settings, _with_db
    from portal.oidc import clients

    if not _with_db(_settings(), lambda: clients.delete(client_id)):
        raise click.ClickException(f"no client {client_id!r}")
    click.echo(f"deleted {client_id}")


@client.command("rotate-secret")
@click.argument("client_id")
def client_rotate_secret(client_id: str) -> None:
    """Give a confidential client a new secret.

    The old one stops working; the new one is shown only now.
    """
    from portal.cli import _settings, _with_db
    from portal.oidc import clients

    secret = _with_db(_settings(), lambda: clients.rotate_secret(client_id))
    click.echo(f"client_secret: {secret}")


@click.group("keys")
def keys_group() -> None:
    """The provider's signing keys."""


@keys_group.command("rotate")
def keys_rotate() -> None:
    """Add new signing keys.

    A new ES256 and RS256 key; old keys stay in the JWKS until their tokens expire.
    """
    from portal.cli import _settings, _with_db
    from portal.oidc import keys

    settings = ensure_secret_key(_settings())
    for kid in _with_db(settings, lambda: keys.rotate(settings)):
        click.echo(f"new signing key {kid}")

"""The ``portal`` command: migrate, serve, demo, policy check/explain, and admin commands."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from policy import Feature, PolicyEngine, PolicyError, check_policy_dir
from portal.api import cli as api_cli
from portal.auth import accounts
from portal.core import db, logs
from portal.core.errors import InvalidInput
from portal.core.settings import Settings, SettingsError, ensure_secret_key, load_settings
from portal.links import cli as links_cli
from portal.oidc import cli as oidc_cli
from portal.scim import cli as scim_cli
from portal.web.forms import FormErrors
from portal.webhooks import cli as webhooks_cli

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return load_settings(os.environ)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _policy(settings: Settings) -> PolicyEngine:
    try:
        return PolicyEngine.from_dir(settings.policy_dir)
    except PolicyError as exc:
        raise click.ClickException(f"the policy in {settings.policy_dir} is invalid:\n{exc}") from None


def _with_db(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = db.bind(db.make_engine(settings.database_url))
        await db.start(engine)
        try:
            return await work()
        finally:
            await db.stop(engine)

    try:
        return asyncio.run(run())
    except InvalidInput as exc:
        raise click.ClickException(str(exc)) from None
    except FormErrors as exc:
        raise click.ClickException(" ".join(exc.errors.values())) from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("portal")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


FEATURES = sorted(f.value for f in Feature)

# -h as well as --help everywhere; wide enough that the command table is not cut to "...".
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}


@click.group("portal", context_settings=CONTEXT)
@click.version_option(_version(), "--version", "-V", prog_name="portal", message="%(prog)s %(version)s")
def main() -> None:
    """Portal: self-hosted organization and account widgets.

    Every setting is a PORTAL_* environment variable (see the README's Settings table).
    """


@main.command()
def migrate() -> None:
    """Apply pending database migrations."""
    from portal.core.migrate import MigrationError, summarize
    from portal.core.migrate import migrate as run_migrations

    settings = _settings()
    try:
        report = _with_db(settings, run_migrations)
    except MigrationError as exc:
        raise click.ClickException(f"migration failed: {exc}") from None
    click.echo(summarize(report))


@main.command()
@click.option("--host", default=None, help="Interface to bind (default PORTAL_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default PORTAL_PORT, 8000).")
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    help="Serving processes (default WEB_CONCURRENCY, else 1); one per core is a good start.",
)
@click.option(
    "--proxy-headers",
    is_flag=True,
    help="Believe X-Forwarded-For/-Proto from PORTAL_TRUSTED_PROXIES peers (behind a load balancer).",
)
def serve(host: str | None, port: int | None, workers: int | None, proxy_headers: bool) -> None:
    """Serve the portal; SIGTERM stops it gracefully.

    uvicorn with uvloop and httptools, one or more processes."""
    import msgspec

    from portal.web import serving

    settings = _settings()
    logs.configure(settings.log_level)
    if port is not None and "PORTAL_PUBLIC_URL" not in os.environ:
        # issue 16: an unset public URL follows the port.
        settings = msgspec.structs.replace(settings, port=port, public_url=f"http://localhost:{port}")
    settings = ensure_secret_key(settings)
    _policy(settings)  # refuse a broken policy here, with its problems, before any process starts
    try:
        count = serving.workers_from(workers, os.environ)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    options = serving.ServeOptions(
        host=host or settings.host,
        port=port or settings.port,
        workers=count,
        proxy_headers=proxy_headers,
    )
    where = f"http://{options.host}:{options.port}"
    try:
        sock = serving.bind_socket(options.host, options.port)
    except serving.PortInUse as exc:
        raise click.ClickException(str(exc)) from None
    processes = f"{count} processes" if count > 1 else "1 process"
    click.echo(f"Portal serving on {where} (public URL {settings.origin}; {processes})")
    serving.run(settings, options, sock)


@main.command()
@click.option("--burst", is_flag=True, help="Run the queued jobs, then exit.")
def worker(burst: bool) -> None:
    """Run background jobs from Redis (arq). Needs PORTAL_REDIS_URL."""
    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException(
            "PORTAL_REDIS_URL is not set: without Redis the web process runs background jobs itself"
        )
    logs.configure(settings.log_level)
    from portal.jobs import run_worker

    run_worker(settings, burst=burst)


@main.command()
def demo() -> None:
    """Seed the demo organization Acme (once).

    Admin alice@acme.test and member bob@acme.test, every feature on.
    """
    settings = _settings()
    policy = _policy(settings)
    created = _with_db(settings, lambda: accounts.seed_demo(policy.roles))
    click.echo("demo organization 'acme' created" if created else "demo organization 'acme' already exists")
    outbox = Path(settings.data_dir) / "outbox"
    click.echo(
        f"Sign in at {settings.origin}/login as {accounts.DEMO_ADMIN} (admin) or {accounts.DEMO_MEMBER} (member);\n"
        f"without PORTAL_SMTP_URL the sign-in code is written to {outbox.resolve()}/ and to the log."
    )


@main.group()
def policy() -> None:
    """Check and explain the role → permission policy."""


@policy.command("check")
@click.option("--dir", "directory", default=None, help="Policy directory (default PORTAL_POLICY_DIR).")
def policy_check(directory: str | None) -> None:
    """Validate the policy files.

    Prints file:line: message for each problem and exits 1.
    """
    directory = directory or _settings().policy_dir
    problems = check_policy_dir(directory)
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {directory}", err=True)
        sys.exit(1)
    engine = PolicyEngine.from_dir(directory)
    click.echo(f"{directory}: ok ({len(engine.roles)} roles: {', '.join(engine.roles)})")


@policy.command("explain")
@click.option("--user", "email", required=True, help="The user's email.")
@click.option("--org", "org_ref", required=True, help="Organization id, name or external id.")
def policy_explain(email: str, org_ref: str) -> None:
    """Show what a user may do in an organization.

    For each permission and widget: allowed, or the reason it is denied.
    """
    from portal.web.explain import explain
    from portal.web.facts import load_facts
    from portal.web.registry import discover

    settings = _settings()
    engine = _policy(settings)

    async def work() -> list[str]:
        user = await accounts.find_user(email)
        if user is None:
            raise click.ClickException(f"no user with email {email}")
        org = await accounts.find_organization(org_ref)
        if org is None:
            raise click.ClickException(f"no organization {org_ref!r}")
        facts = await load_facts(user, org["id"])
        return explain(facts, engine, discover())

    for line in _with_db(settings, work):
        click.echo(line)


@main.group()
def org() -> None:
    """Manage organizations."""


@org.command("create")
@click.argument("name")
@click.option("--display-name", default=None, help="Name shown to people (default: NAME).")
@click.option("--external-id", default=None, help="Your app's id for this organization (unique).")
@click.option(
    "--feature",
    "features",
    multiple=True,
    type=click.Choice(FEATURES),
    help=f"Enable a feature (repeatable): {', '.join(FEATURES)}.",
)
def org_create(
    name: str, display_name: str | None, external_id: str | None, features: tuple[str, ...]
) -> None:
    """Create an organization NAME (lowercase slug)."""
    settings = _settings()
    created = _with_db(
        settings,
        lambda: accounts.create_organization(name, display_name, features=features, external_id=external_id),
    )
    click.echo(f"{created['id']} {created['name']}")


@org.command("list")
def org_list() -> None:
    """List organizations.

    Id, name, display name, number of members, features.
    """
    settings = _settings()
    rows = _with_db(settings, accounts.list_organizations)
    for row in rows:
        features = ",".join(row["features"]) or "-"
        click.echo(
            f"{row['id']}  {row['name']}  {row['display_name']!r}  members={row['members']}  features={features}"
        )
    click.echo(f"{len(rows)} organization(s)")


@main.group()
def user() -> None:
    """Manage users."""


@user.command("create")
@click.argument("email")
@click.option("--given-name", default="", help="First name.")
@click.option("--family-name", default="", help="Last name.")
def user_create(email: str, given_name: str, family_name: str) -> None:
    """Create a user with EMAIL."""
    settings = _settings()
    created = _with_db(
        settings, lambda: accounts.create_user(email, given_name=given_name, family_name=family_name)
    )
    click.echo(f"{created['id']} {created['email']}")


@user.command("list")
@click.option(
    "--org", "org_ref", default=None, help="Only members of this organization (id, name or external id)."
)
def user_list(org_ref: str | None) -> None:
    """List users (or an organization's members).

    Id, email, name, and their organizations with roles.
    """
    settings = _settings()

    async def work() -> list[dict[str, Any]]:
        organization_id = None
        if org_ref is not None:
            organization = await accounts.find_organization(org_ref)
            if organization is None:
                raise click.ClickException(f"no organization {org_ref!r}")
            organization_id = organization["id"]
        return await accounts.list_users(organization_id)

    rows = _with_db(settings, work)
    for row in rows:
        memberships = " ".join(f"{m['org']}:{'+'.join(m['roles'])}" for m in row["memberships"]) or "-"
        click.echo(f"{row['id']}  {row['email']}  {row['name']!r}  {memberships}")
    click.echo(f"{len(rows)} user(s)")


@main.group()
def member() -> None:
    """Manage memberships."""


@member.command("add")
@click.option("--org", "org_ref", required=True, help="Organization id, name or external id.")
@click.option("--user", "email", required=True, help="The user's email.")
@click.option("--role", "roles", multiple=True, required=True, help="A role from the policy (repeatable).")
def member_add(org_ref: str, email: str, roles: tuple[str, ...]) -> None:
    """Make a user a member of an organization."""
    settings = _settings()
    engine = _policy(settings)

    async def work() -> dict[str, Any]:
        organization = await accounts.find_organization(org_ref)
        if organization is None:
            raise click.ClickException(f"no organization {org_ref!r}")
        found = await accounts.find_user(email)
        if found is None:
            raise click.ClickException(f"no user with email {email}")
        return await accounts.add_member(organization["id"], found["id"], roles, known_roles=engine.roles)

    created = _with_db(settings, work)
    click.echo(f"{created['id']} roles={','.join(created['roles'])}")


def _operator_change(org_ref: str, email: str, change: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run a Members-widget change as the operator: the widget's rules (last administrator, roles from the
    policy) apply, except that the operator may grant and remove anyone."""
    from widgets.members import service

    settings = _settings()
    engine = _policy(settings)

    async def work() -> Any:
        organization = await accounts.find_organization(org_ref)
        if organization is None:
            raise click.ClickException(f"no organization {org_ref!r}")
        membership_id = await accounts.find_membership(organization["id"], email)
        if membership_id is None:
            raise click.ClickException(f"{email} is not a member of {organization['name']}")
        actor = service.Actor(user_id="", organization_id=organization["id"], roles=engine.roles, ip="")
        async with db.write_transaction():
            return await change(engine, actor, membership_id, *args)

    return _with_db(settings, work)


@member.command("roles")
@click.option("--org", "org_ref", required=True, help="Organization id, name or external id.")
@click.option("--user", "email", required=True, help="The member's email.")
@click.option(
    "--role", "roles", multiple=True, required=True, help="The new roles, from the policy (repeatable)."
)
def member_roles(org_ref: str, email: str, roles: tuple[str, ...]) -> None:
    """Replace a member's roles.

    The organization keeps at least one active member who can change roles.
    """
    from widgets.members import service
    from widgets.members.schemas import RolesForm

    member, changed = _operator_change(org_ref, email, service.change_roles, RolesForm(roles=list(roles)))
    new = sorted(set(roles))
    click.echo(f"{member.email}: roles={','.join(new)}" + ("" if changed else " (unchanged)"))


@member.command("remove")
@click.option("--org", "org_ref", required=True, help="Organization id, name or external id.")
@click.option("--user", "email", required=True, help="The member's email.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def member_remove(org_ref: str, email: str, yes: bool) -> None:
    """Remove a member.

    They lose access at once; the account is kept.
    """
    from widgets.members import service

    if not yes:
        click.confirm(f"Remove {email} from {org_ref}?", abort=True)
    member = _operator_change(org_ref, email, service.remove)
    click.echo(f"{member.email} removed from {org_ref}")


@main.group()
def secrets() -> None:
    """Re-seal stored secrets after a key change.

    Sealed secrets: signing keys, webhook secrets, IdP client secrets.
    """


@secrets.command("rotate")
def secrets_rotate() -> None:
    """Re-seal every stored secret with the current PORTAL_SECRET_KEY.

    Introduce a new key by setting PORTAL_SECRET_KEY to it and PORTAL_PREVIOUS_SECRET_KEYS to the old one,
    run this, then drop the old key.
    """
    from portal.core import crypto

    settings = ensure_secret_key(_settings())
    counts = _with_db(settings, lambda: crypto.reseal_all(settings))
    total = sum(counts.values())
    for name, count in counts.items():
        click.echo(f"{name}: {count} re-sealed")
    click.echo(f"{total} secret(s) re-sealed with key {crypto.key_id(settings.secret_key)}")


main.add_command(oidc_cli.client)  # issue 10: portal client ...
main.add_command(oidc_cli.keys_group)  # issue 10: portal keys rotate
main.add_command(api_cli.api_key)  # issue 11: portal api-key ...
main.add_command(webhooks_cli.webhook)  # issue 11: portal webhook ...
main.add_command(scim_cli.scim_group)  # issue 13: portal scim create|rotate|revoke
main.add_command(links_cli.link)  # issue 14: portal link create|list|revoke


if __name__ == "__main__":
    main()

"""The ``portal`` command: migrate, serve, demo, policy check/explain, and admin commands."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from policy import PolicyEngine, PolicyError, check_policy_dir
from portal.auth import accounts
from portal.core import db
from portal.core.errors import InvalidInput
from portal.core.settings import Settings, SettingsError, ensure_secret_key, load_settings
from portal.links import cli as links_cli
from portal.oidc import cli as oidc_cli

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


@click.group()
def main() -> None:
    """Portal: self-hosted organization and account widgets."""


@main.command()
def migrate() -> None:
    """Apply pending database migrations."""
    from portal.core.migrate import MigrationError
    from portal.core.migrate import migrate as run_migrations

    settings = _settings()
    try:
        report = _with_db(settings, run_migrations)
    except MigrationError as exc:
        raise click.ClickException(f"migration failed: {exc}") from None
    click.echo(report.strip() or "migrations applied")


@main.command()
@click.option("--host", default=None, help="Interface to bind (default PORTAL_HOST).")
@click.option("--port", default=None, type=int, help="Port (default PORTAL_PORT).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the portal with uvicorn."""
    import uvicorn

    from portal.web.app import create_app, reload_policy

    settings = ensure_secret_key(_settings())
    policy = _policy(settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    app = create_app(settings, policy=policy)

    async def reload_on_sighup() -> None:
        # `kill -HUP <pid>` re-reads the policy files (in the event loop, between requests); a policy with
        # problems is refused and the one in force stays.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_policy, policy)

    app.on_startup.append(reload_on_sighup)
    click.echo(
        f"Portal serving on http://{host or settings.host}:{port or settings.port} (public URL {settings.origin})"
    )
    uvicorn.run(
        app, host=host or settings.host, port=port or settings.port, log_level="warning", access_log=False
    )


@main.command()
@click.option("--burst", is_flag=True, help="Run the queued jobs, then exit.")
def worker(burst: bool) -> None:
    """Run background jobs from Redis (arq). Needs PORTAL_REDIS_URL."""
    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException(
            "PORTAL_REDIS_URL is not set: without Redis the web process runs background jobs itself"
        )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    from portal.jobs import make_worker

    make_worker(settings, burst=burst).run()


@main.command()
def demo() -> None:
    """Seed organization "Acme" with admin alice@acme.test and member bob@acme.test (once)."""
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
    """Validate the policy files; print file:line: message for each problem."""
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
    """For each permission and widget: allowed, or the reason it is denied."""
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
@click.option("--display-name", default=None)
@click.option("--external-id", default=None)
@click.option("--feature", "features", multiple=True, help="Enable a feature (repeatable).")
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


@main.group()
def user() -> None:
    """Manage users."""


@user.command("create")
@click.argument("email")
@click.option("--given-name", default="")
@click.option("--family-name", default="")
def user_create(email: str, given_name: str, family_name: str) -> None:
    """Create a user with EMAIL."""
    settings = _settings()
    created = _with_db(
        settings, lambda: accounts.create_user(email, given_name=given_name, family_name=family_name)
    )
    click.echo(f"{created['id']} {created['email']}")


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


@main.group()
def secrets() -> None:
    """Sealed secrets (signing keys, webhook secrets, IdP client secrets)."""


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
main.add_command(links_cli.link)  # issue 14: portal link create|list|revoke


if __name__ == "__main__":
    main()

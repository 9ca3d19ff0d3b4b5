"""The `portal` command against the engine under test."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from piccolo.engine.base import Engine

from portal.cli import main
from portal.core.tables import Membership
from tests.conftest import POLICY_DIR

pytestmark = pytest.mark.db


@pytest.fixture
def run(database_url: str, tmp_path: Path, db: Engine):  # type: ignore[no-untyped-def]
    env = {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
    }

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    invoke.env = env  # type: ignore[attr-defined]
    return invoke


def test_demo_is_idempotent_and_explain_shows_each_permission(run) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("demo")
    assert code == 0 and "demo organization 'acme' created" in out
    assert "alice@acme.test" in out and "outbox" in out
    code, out, _ = run("demo")
    assert code == 0 and "already exists" in out

    code, out, _ = run("policy", "explain", "--user", "alice@acme.test", "--org", "acme")
    assert code == 0, out
    assert "roles:        admin" in out
    assert "features:     audit_log, domain_verification, org_branding, scim, session_policy, sso" in out
    # The permissions section (the widgets section after it repeats manage permissions per widget).
    permissions = out.split("\nwidgets\n", 1)[0]
    permission_lines = [line for line in permissions.splitlines() if line.strip().startswith("sk_org_")]
    assert len(permission_lines) == 13  # issue 11 added sk_org_audit_read
    assert all(line.rstrip().endswith("allowed") for line in permission_lines)

    code, out, _ = run("policy", "explain", "--user", "BOB@acme.test", "--org", "acme")
    assert code == 0
    lines = {
        line.split()[0]: line.split(None, 1)[1]
        for line in out.split("\nwidgets\n", 1)[0].splitlines()
        if line.strip().startswith("sk_org_")
    }
    assert lines["sk_org_settings_read"] == "allowed"
    assert lines["sk_org_users_read"] == "allowed"
    assert lines["sk_org_users_invite"] == "denied: missing_permission (sk_org_users_invite)"
    assert lines["sk_org_sso_manage"] == "denied: missing_permission (sk_org_sso_manage)"
    assert sum(value == "allowed" for value in lines.values()) == 2


def test_explain_for_a_non_member_and_a_disabled_feature(run) -> None:  # type: ignore[no-untyped-def]
    assert run("org", "create", "globex", "--display-name", "Globex", "--feature", "scim")[0] == 0
    assert run("user", "create", "carol@globex.test", "--given-name", "Carol")[0] == 0
    assert run("user", "create", "dave@globex.test")[0] == 0
    code, out, _ = run("member", "add", "--org", "globex", "--user", "carol@globex.test", "--role", "admin")
    assert code == 0 and "roles=admin" in out

    _, out, _ = run("policy", "explain", "--user", "carol@globex.test", "--org", "globex")
    assert "sk_org_sso_read" in out and "denied: feature_disabled (sso)" in out
    assert "sk_org_scim_manage" in out
    scim = next(line for line in out.splitlines() if "sk_org_scim_manage" in line)
    assert scim.rstrip().endswith("allowed")

    _, out, _ = run("policy", "explain", "--user", "dave@globex.test", "--org", "globex")
    assert "roles:        not a member" in out
    assert out.split("\nwidgets\n", 1)[0].count("denied: not_member") == 13


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("org", "create", "Bad Name!"), "name: Use lowercase letters"),
        (("user", "create", "not-an-email"), "email: Enter an email address"),
        (
            ("org", "create", "acme2", "--feature", "billing"),
            "'billing' is not one of 'audit_log', 'domain_verification', 'org_branding', 'scim', 'session_policy', 'sso'",
        ),
        (
            ("member", "add", "--org", "nope", "--user", "a@b.test", "--role", "admin"),
            "no organization 'nope'",
        ),
        (("policy", "explain", "--user", "ghost@acme.test", "--org", "acme"), "no user with email"),
    ],
)
def test_admin_commands_refuse_bad_input(run, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run(*args)
    assert code != 0
    assert message in err


def test_member_add_refuses_roles_missing_from_the_policy_and_duplicates(run) -> None:  # type: ignore[no-untyped-def]
    run("org", "create", "initech")
    run("user", "create", "peter@initech.test")
    code, _, err = run("member", "add", "--org", "initech", "--user", "peter@initech.test", "--role", "owner")
    assert code != 0 and "role 'owner' is not defined in the policy" in err
    assert (
        run("member", "add", "--org", "initech", "--user", "peter@initech.test", "--role", "member")[0] == 0
    )
    code, _, err = run(
        "member", "add", "--org", "initech", "--user", "peter@initech.test", "--role", "member"
    )
    assert code != 0 and "already a member" in err
    code, _, err = run("org", "create", "initech")
    assert code != 0 and "already exists" in err


def test_policy_check(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("policy", "check")
    assert code == 0 and "ok" in out and "admin" in out

    bad = tmp_path / "bad-policies"
    shutil.copytree(POLICY_DIR, bad)
    with (bad / "policy.csv").open("a") as f:
        f.write("p, support, sk_org_users_write\n")
    lines = (bad / "policy.csv").read_text().splitlines()
    code, _, err = run("policy", "check", "--dir", str(bad))
    assert code == 1
    assert f"{bad / 'policy.csv'}:{len(lines)}: " in err
    assert "sk_org_users_write" in err


# --- issue 16 item 9: the CLI a new user tries ---------------------------------------------------------------


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_version_and_short_help() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == "portal 0.1.0"
    result = runner.invoke(main, ["-h"])
    assert result.exit_code == 0 and result.stdout.startswith("Usage: portal [OPTIONS] COMMAND")
    result = runner.invoke(main, ["member", "remove", "-h"])
    assert result.exit_code == 0 and "--yes" in result.stdout


def test_every_option_has_help_and_no_help_line_is_truncated() -> None:
    missing = [
        f"portal {' '.join(path)} {param.opts[0]}"
        for path, command in _commands(main)
        for param in command.params
        if isinstance(param, click.Option) and not param.help
    ]
    assert missing == []
    runner = CliRunner()
    groups = [()] + [path for path, command in _commands(main) if isinstance(command, click.Group)]
    for path in groups:
        # An 80-column terminal, the narrowest common one.
        result = runner.invoke(main, [*path, "--help"], terminal_width=80)
        assert result.exit_code == 0
        commands = result.stdout.split("\nCommands:\n", 1)[1]
        assert "..." not in commands, (path, commands)
    top = runner.invoke(main, ["--help"], terminal_width=80).stdout
    for name in ("member", "org", "user", "client", "demo", "serve", "migrate"):
        assert f"\n  {name} " in top


def test_feature_help_lists_the_valid_values() -> None:
    out = CliRunner().invoke(main, ["org", "create", "--help"]).stdout
    assert "audit_log, domain_verification, org_branding, scim, session_policy, sso" in " ".join(out.split())


def test_org_and_user_lists(run) -> None:  # type: ignore[no-untyped-def]
    run("demo")
    run("org", "create", "globex", "--display-name", "Globex", "--feature", "sso")
    run("user", "create", "zed@globex.test", "--given-name", "Zed")
    run("member", "add", "--org", "globex", "--user", "zed@globex.test", "--role", "member")

    code, out, _ = run("org", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[-1] == "2 organization(s)"
    assert (
        " acme  'Acme'  members=2  features=audit_log,domain_verification,org_branding,scim,session_policy,sso"
        in lines[0]
    )
    assert " globex  'Globex'  members=1  features=sso" in lines[1]

    code, out, _ = run("user", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[-1] == "3 user(s)"
    assert lines[0].endswith("alice@acme.test  'Alice Admin'  acme:admin")
    assert lines[2].endswith("zed@globex.test  'Zed'  globex:member")

    code, out, _ = run("user", "list", "--org", "globex")
    assert code == 0 and out.splitlines()[-1] == "1 user(s)" and "zed@globex.test" in out
    code, _, err = run("user", "list", "--org", "nope")
    assert code == 1 and "no organization 'nope'" in err


async def _roles(email: str) -> list[str] | None:
    row = (
        await Membership.select(Membership.roles)
        .where(Membership.email == email)
        .first()
        .output(load_json=True)
    )
    return None if row is None else list(row["roles"])


def test_member_roles_and_remove(run) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    run("demo")
    code, out, err = run("member", "roles", "--org", "acme", "--user", "bob@acme.test", "--role", "admin")
    assert code == 0, err
    assert out.strip() == "bob@acme.test: roles=admin"
    assert asyncio.run(_roles("bob@acme.test")) == ["admin"]

    code, out, _ = run("member", "roles", "--org", "acme", "--user", "bob@acme.test", "--role", "admin")
    assert code == 0 and "(unchanged)" in out
    code, _, err = run("member", "roles", "--org", "acme", "--user", "bob@acme.test", "--role", "owner")
    assert code == 1 and "'owner' is not a role defined in the policy" in err
    code, _, err = run("member", "roles", "--org", "acme", "--user", "ghost@acme.test", "--role", "member")
    assert code == 1 and "ghost@acme.test is not a member of acme" in err

    # Without --yes it asks; answering no changes nothing.
    result = CliRunner().invoke(
        main,
        ["member", "remove", "--org", "acme", "--user", "bob@acme.test"],
        input="n\n",
        env=run.env,
    )
    assert result.exit_code == 1 and "Remove bob@acme.test from acme? [y/N]" in result.stdout
    assert asyncio.run(_roles("bob@acme.test")) == ["admin"]

    code, out, _ = run("member", "remove", "--org", "acme", "--user", "bob@acme.test", "--yes")
    assert code == 0 and out.strip() == "bob@acme.test removed from acme"
    assert asyncio.run(_roles("bob@acme.test")) is None

    # alice is now the last administrator: neither demoted nor removed.
    code, _, err = run("member", "roles", "--org", "acme", "--user", "alice@acme.test", "--role", "member")
    assert code == 1 and "last active member who can change roles" in err
    code, _, err = run("member", "remove", "--org", "acme", "--user", "alice@acme.test", "--yes")
    assert code == 1 and "last active member who can change roles" in err
    assert asyncio.run(_roles("alice@acme.test")) == ["admin"]

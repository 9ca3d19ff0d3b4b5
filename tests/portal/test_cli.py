"""The `portal` command against the engine under test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from piccolo.engine.base import Engine

from portal.cli import main
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
    assert "features:     domain_verification, org_branding, scim, session_policy, sso" in out
    # The permissions section (the widgets section after it repeats manage permissions per widget).
    permissions = out.split("\nwidgets\n", 1)[0]
    permission_lines = [line for line in permissions.splitlines() if line.strip().startswith("sk_org_")]
    assert len(permission_lines) == 12
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
    assert out.split("\nwidgets\n", 1)[0].count("denied: not_member") == 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("org", "create", "Bad Name!"), "name: Use lowercase letters"),
        (("user", "create", "not-an-email"), "email: Enter an email address"),
        (("org", "create", "acme2", "--feature", "billing"), "unknown feature 'billing'"),
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

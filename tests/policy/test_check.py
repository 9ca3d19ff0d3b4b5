"""`portal policy check`: every kind of bad policy file is reported as file:line: message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from policy import PolicyError, Problem, check_policy_dir

POLICIES = Path(__file__).parents[2] / "policies"
MODEL = (POLICIES / "model.conf").read_text()
HEADER = "# my roles\n\np, support, sk_org_users_read\n"  # lines 1-3: a comment, a blank line, a good row


def policy_dir(tmp_path: Path, model: str | None = MODEL, **files: str) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    if model is not None:
        (directory / "model.conf").write_text(model)
    for name, text in files.items():
        (directory / f"{name}.csv").write_text(text)
    return directory


def report(directory: Path) -> list[str]:
    """The problems as `portal policy check` prints them, with the directory shortened to `D`."""
    return [str(problem).replace(str(directory), "D") for problem in check_policy_dir(directory)]


def test_the_shipped_policies_have_no_problem() -> None:
    assert check_policy_dir(POLICIES) == []
    assert check_policy_dir(str(POLICIES)) == []


def test_comments_blank_lines_and_spacing_are_fine(tmp_path: Path) -> None:
    text = "\ufeff# header\n\n   # indented comment\np,support,sk_org_users_read\r\n  p2 ,  sk_org_sso_read , sso  \n\n"
    assert report(policy_dir(tmp_path, roles=text)) == []


def test_problem_format() -> None:
    problem = Problem("policies/policy.csv", 7, "duplicate row, first at line 3")
    assert str(problem) == "policies/policy.csv:7: duplicate row, first at line 3"
    error = PolicyError([problem, Problem("policies/model.conf", 1, "bad")])
    assert str(error) == "policies/policy.csv:7: duplicate row, first at line 3\npolicies/model.conf:1: bad"
    assert error.problems[1].line == 1


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("p, admin", "p row needs 2 fields (role, permission), got 1"),
        ("p, admin, sk_org_users_read, allow", "p row needs 2 fields (role, permission), got 3"),
        ("p2, sk_org_sso_read", "p2 row needs 2 fields (permission, feature), got 1"),
        ("g, lead", "g row needs 2 fields (role, parent role), got 1"),
        (
            "p3, admin, sk_org_users_read",
            "unknown row type 'p3': use p (role, permission), p2 (permission, feature), g (role, parent role), "
            "role (role, title, description), label (permission, label)",
        ),
        (
            "x",
            "unknown row type 'x': use p (role, permission), p2 (permission, feature), g (role, parent role), "
            "role (role, title, description), label (permission, label)",
        ),
        (
            "p, admin, sk_org_user_read",
            "unknown permission 'sk_org_user_read', did you mean sk_org_users_read?",
        ),
        (
            "p, admin, sk_org_sso_write",
            "unknown permission 'sk_org_sso_write', did you mean sk_org_sso_manage?",
        ),
        (
            "p, admin, sk_org_settings_write",
            "unknown permission 'sk_org_settings_write', did you mean sk_org_settings_manage?",
        ),
        ("p2, sk_org_sso_read, ssso", "unknown feature 'ssso', did you mean sso?"),
        (
            "p2, sk_org_sso_read, teleport",
            "unknown feature 'teleport' (valid: sso, scim, domain_verification, session_policy, audit_log, org_branding)",
        ),
        ("p2, sk_org_sso_reed, sso", "unknown permission 'sk_org_sso_reed', did you mean sk_org_sso_read?"),
        ("p, , sk_org_users_read", "p row has an empty role"),
        (
            "p, support team, sk_org_users_read",
            "invalid role 'support team': use letters, digits and _ . : -",
        ),
        ("g, lead, sup port", "invalid parent role 'sup port': use letters, digits and _ . : -"),
    ],
)
def test_bad_row_is_reported_at_its_line(tmp_path: Path, row: str, message: str) -> None:
    directory = policy_dir(tmp_path, roles=HEADER + row + "\n")
    assert report(directory) == [f"D/roles.csv:4: {message}"]


def test_one_row_can_have_several_problems(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, roles=HEADER + "p2, sk_org_sso_reed, ssso\n")
    assert report(directory) == [
        "D/roles.csv:4: unknown permission 'sk_org_sso_reed', did you mean sk_org_sso_read?",
        "D/roles.csv:4: unknown feature 'ssso', did you mean sso?",
    ]


def test_duplicate_rows_name_the_first_occurrence(tmp_path: Path) -> None:
    directory = policy_dir(
        tmp_path,
        a=HEADER + "p2, sk_org_sso_read, sso\np,support,sk_org_users_read\n",
        b="\n\n   p2 , sk_org_sso_read , sso\n",
    )
    assert report(directory) == [
        "D/a.csv:5: duplicate row, first at line 3",
        "D/b.csv:3: duplicate row, first at a.csv:4",
    ]


def test_role_that_grants_nothing(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, roles=HEADER + "g, lead, support\ng, helper, ghost\n")
    assert report(directory) == [
        "D/roles.csv:5: role 'helper' grants no permission: give it p rows or a g row to a role with some",
        "D/roles.csv:5: role 'ghost' grants no permission: give it p rows or a g row to a role with some",
    ]


def test_role_with_permissions_inheriting_from_a_role_that_does_not_exist(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, roles=HEADER + "g, support, ghost\n")
    assert report(directory) == [
        "D/roles.csv:4: role 'ghost' grants no permission: give it p rows or a g row to a role with some",
    ]


def test_role_whose_only_row_is_wrong_grants_nothing_and_says_why(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, roles="p, support, sk_org_users_reed\ng, lead, support\n")
    assert report(directory) == [
        "D/roles.csv:1: unknown permission 'sk_org_users_reed', did you mean sk_org_users_read?",
        "D/roles.csv:2: role 'lead' grants no permission: give it p rows or a g row to a role with some",
        "D/roles.csv:2: role 'support' grants no permission: give it p rows or a g row to a role with some",
    ]


def test_inheritance_cycle(tmp_path: Path) -> None:
    rows = "p, a, sk_org_users_read\np, b, sk_org_settings_read\ng, a, b\ng, b, a\ng, c, c\np, c, sk_org_sso_read\n"
    directory = policy_dir(tmp_path, roles=rows)
    assert report(directory) == [
        "D/roles.csv:4: role inheritance cycle: a -> b -> a",
        "D/roles.csv:5: role inheritance cycle: c -> c",
    ]


def test_inheritance_deeper_than_casbin_follows(tmp_path: Path) -> None:
    # Casbin's role manager stops after 10 roles, i.e. 9 g links, and would quietly grant less.
    chain = "".join(f"g, r{i}, r{i + 1}\n" for i in range(10)) + "p, r10, sk_org_users_read\n"
    assert report(policy_dir(tmp_path, roles=chain)) == [
        "D/roles.csv:1: role 'r0' inherits through 10 levels of g rows, Casbin follows 9",
        "D/roles.csv:1: role 'r0' grants no permission: give it p rows or a g row to a role with some",
    ]
    (tmp_path / "policies" / "roles.csv").write_text(chain.replace("g, r0, r1\n", ""))
    assert report(tmp_path / "policies") == []


def test_files_are_reported_in_name_order(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, b="p, x, nope\n", a="\np, y, sk_org_users_raed\n")
    assert report(directory) == [
        "D/a.csv:2: unknown permission 'sk_org_users_raed', did you mean sk_org_users_read?",
        "D/b.csv:1: unknown permission 'nope' (valid: "
        + ", ".join(
            [
                "sk_org_settings_read",
                "sk_org_settings_manage",
                "sk_org_users_read",
                "sk_org_users_invite",
                "sk_org_users_role_change",
                "sk_org_users_delete",
                "sk_org_sso_read",
                "sk_org_sso_manage",
                "sk_org_scim_read",
                "sk_org_scim_manage",
                "sk_org_session_policy_read",
                "sk_org_session_policy_manage",
                "sk_org_audit_read",
            ]
        )
        + ")",
    ]


def test_no_policy_file(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path)
    (directory / "notes.txt").write_text("p, x, y\n")
    (directory / ".#roles.csv").write_text("p, x, y\n")  # an editor's lock file
    assert report(directory) == ["D:0: no policy files (*.csv) in the directory"]


def test_policy_without_any_role(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, roles="# roles to come\np2, sk_org_sso_read, sso\n")
    assert report(directory) == ["D:0: no role is defined: add p rows (role, permission)"]


def test_missing_directory(tmp_path: Path) -> None:
    assert [str(p) for p in check_policy_dir(tmp_path / "nowhere")] == [
        f"{tmp_path / 'nowhere'}:0: policy directory not found"
    ]


def test_missing_model(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, model=None, roles=HEADER)
    assert report(directory) == ["D/model.conf:1: model file is missing: Casbin needs it to read the rows"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "r2 = perm, feature",
            "r2 perm feature",
            "D/model.conf:7: Casbin cannot load the model: parse the content error : line 7 , r2 perm feature = ?",
        ),
        (
            "m2 = r2.perm == p2.perm && r2.feature == p2.feature\n",
            "",
            "D/model.conf:22: [matchers] must define m2 (the permission -> feature matcher)",
        ),
        (
            "e = some(where (p.eft == allow))",
            "e = no(where (p.eft == allow))",
            "D/model.conf:18: Casbin cannot use the model: unsupported effect",
        ),
        (
            "m = r.perm == p.perm",
            "m = r.perm == p.prem",
            "D/model.conf:24: Casbin cannot evaluate matcher m: "
            "'p_prem' is not defined for expression 'r_perm == p_prem and g(r_role, p_role)'",
        ),
        (
            "r2.feature == p2.feature",
            "r2.feature === p2.feature",
            "D/model.conf:25: Casbin cannot evaluate matcher m2: invalid syntax (<unknown>, line 1)",
        ),
        (
            "g = _, _",
            "g = _, _  # lead, support",
            "D/model.conf:15: g must have 2 fields (_, _), got `g = _, _  # lead, support`; "
            "put the comment on its own line",
        ),
        (
            "p = role, perm",
            "p = role, perm, eft",
            "D/model.conf:10: p must have 2 fields (role, permission), got `p = role, perm, eft`",
        ),
    ],
    ids=["syntax", "no-m2", "effect", "matcher-m", "matcher-m2", "inline-comment", "p-fields"],
)
def test_broken_model(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in MODEL
    directory = policy_dir(tmp_path, model=MODEL.replace(old, new, 1))
    shutil.copy(POLICIES / "policy.csv", directory)
    assert report(directory) == [expected]


def test_empty_model_lists_what_it_needs(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, model="# nothing yet\n", roles=HEADER)
    assert report(directory) == [
        "D/model.conf:1: [request_definition] must define r (role, permission)",
        "D/model.conf:1: [request_definition] must define r2 (permission, feature)",
        "D/model.conf:1: [policy_definition] must define p (role, permission)",
        "D/model.conf:1: [policy_definition] must define p2 (permission, feature)",
        "D/model.conf:1: [role_definition] must define g (_, _)",
        "D/model.conf:1: [policy_effect] must define e (the policy effect)",
        "D/model.conf:1: [matchers] must define m (the role -> permission matcher)",
        "D/model.conf:1: [matchers] must define m2 (the permission -> feature matcher)",
    ]


def test_model_and_row_problems_are_reported_together(tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, model=MODEL.replace("p = role, perm", "p = x"))
    (directory / "roles.csv").write_text(HEADER + "p, support\n")
    assert report(directory) == [
        "D/model.conf:10: p must have 2 fields (role, permission), got `p = x`",
        "D/roles.csv:4: p row needs 2 fields (role, permission), got 1",
    ]


# --- issue 16 §6: roles and permissions in plain language ---------------------------------------------------


def test_the_shipped_policies_label_every_permission_and_title_every_role() -> None:
    from policy import Permission, PolicyEngine

    engine = PolicyEngine.from_dir(POLICIES)
    for permission in Permission:
        assert engine.permission_label(permission) != permission.value, permission
    assert engine.role_title("admin") == "Administrator"
    assert engine.role_title("member") == "Member"
    assert engine.role_description("member") == "Sees the organization's settings and its members."


def test_role_and_label_rows_are_read_with_commas_in_the_last_field(tmp_path: Path) -> None:
    from policy import Permission, PolicyEngine

    directory = policy_dir(
        tmp_path,
        roles=HEADER
        + "role, support, Support agent, Helps customers: sees members, settings\n"
        + "label, sk_org_users_read, See members, and invitations\n",
    )
    assert report(directory) == []
    engine = PolicyEngine.from_dir(directory)
    assert engine.role_title("support") == "Support agent"
    assert engine.role_description("support") == "Helps customers: sees members, settings"
    assert engine.permission_label(Permission.USERS_READ) == "See members, and invitations"
    # Without rows: the key, and the labels of what the role grants.
    (directory / "roles.csv").write_text(HEADER)
    bare = PolicyEngine.from_dir(directory)
    assert bare.role_title("support") == "support"
    assert bare.role_description("support") == "sk_org_users_read"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("role, support", "role row needs 3 fields (role, title, description), got 1"),
        ("role, support, Support", "role row needs 3 fields (role, title, description), got 2"),
        ("role, support, , Helps", "role row has an empty title"),
        (
            "role, suport, Support, Helps",
            "role row for 'suport', which grants nothing, did you mean support?",
        ),
        (
            "role, nobody, Nobody, Nothing",
            "role row for 'nobody', which grants nothing: add p rows for it first",
        ),
        ("role, support, " + "x" * 61 + ", Helps", "role row's title is 61 characters long; keep it to 60"),
        (
            "label, sk_org_users_reed, See",
            "unknown permission 'sk_org_users_reed', did you mean sk_org_users_read?",
        ),
        ("label, sk_org_users_read", "label row needs 2 fields (permission, label), got 1"),
        ("label, sk_org_users_read, ", "label row has an empty label"),
    ],
)
def test_bad_plain_language_rows_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    directory = policy_dir(tmp_path, roles=HEADER + row + "\n")
    assert report(directory) == [f"D/roles.csv:4: {message}"]


def test_a_second_title_or_label_is_a_problem(tmp_path: Path) -> None:
    directory = policy_dir(
        tmp_path,
        roles=HEADER
        + "role, support, Support, Helps\n"
        + "label, sk_org_users_read, See members\n"
        + "role, support, Support 2, Helps\n"
        + "label, sk_org_users_read, Members\n",
    )
    assert report(directory) == [
        "D/roles.csv:6: second role row for 'support', first at line 4",
        "D/roles.csv:7: second label row for 'sk_org_users_read', first at line 5",
    ]

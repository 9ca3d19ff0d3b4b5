"""Reading, checking and compiling the policy directory (`policies/`).

One pass serves both `portal policy check` and the engine. The rows of every ``*.csv`` file are parsed with
their file and line and checked against the vocabulary; `model.conf` is loaded by Casbin; the rows are added
to a Casbin enforcer, and Casbin is asked about every (role, permission) and (permission, feature) pair.
Checking has to run Casbin too: a matcher that cannot be evaluated only fails when it is first evaluated.

The rows are read here rather than by Casbin's file adapter: that adapter does skip ``#`` lines, but it
reads one file and forgets line numbers, and problems must name the file and line.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casbin
from casbin.model import Model
from casbin.rbac.default_role_manager import RoleManager

from .vocab import Feature, Permission

MODEL_FILE = "model.conf"

# What each row type means to the engine; the model must agree (see _MODEL_CONTRACT).
_ROW_FIELDS: dict[str, tuple[str, ...]] = {
    "p": ("role", "permission"),
    "p2": ("permission", "feature"),
    "g": ("role", "parent role"),
}
# Rows in plain language (issue 16), read by the portal only, never given to Casbin: a role's title and
# description for role pickers, and a permission's label for pickers and the 403 page. The last field takes
# the rest of the line, so a description may contain commas.
_TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "role": ("role", "title", "description"),
    "label": ("permission", "label"),
}
_TEXT_LIMITS = {"title": 60, "description": 300, "label": 100}
_ROW_TYPES = ", ".join(
    f"{kind} ({', '.join(names)})" for kind, names in {**_ROW_FIELDS, **_TEXT_FIELDS}.items()
)
_ROLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z")
_PERMISSIONS = [permission.value for permission in Permission]
_FEATURES = [feature.value for feature in Feature]

_SECTION_NAMES = {
    "r": "request_definition",
    "p": "policy_definition",
    "g": "role_definition",
    "e": "policy_effect",
    "m": "matchers",
}
# (section, key) -> (number of fields or None, what it is for). The engine asks r for roles and r2 for
# features, so their shape is fixed; the matchers and the effect are the owner's to write.
_MODEL_CONTRACT: dict[tuple[str, str], tuple[int | None, str]] = {
    ("r", "r"): (2, "role, permission"),
    ("r", "r2"): (2, "permission, feature"),
    ("p", "p"): (2, "role, permission"),
    ("p", "p2"): (2, "permission, feature"),
    ("g", "g"): (2, "_, _"),
    ("e", "e"): (None, "the policy effect"),
    ("m", "m"): (None, "the role -> permission matcher"),
    ("m", "m2"): (None, "the permission -> feature matcher"),
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in the policy files; line is 1-based, 0 when it is not about a line."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class PolicyError(Exception):
    """The policy files have problems; str() lists them one per line."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """What Casbin decided for every pair, read by the engine's set operations."""

    grants: Mapping[str, frozenset[Permission]]  # role -> permissions, inherited ones included
    requirements: Mapping[Permission, frozenset[Feature]]  # permission -> features it needs
    granted_by: Mapping[Permission, frozenset[str]]  # permission -> roles that grant it
    # issue 16: plain language (from role and label rows; empty when the files have none)
    titles: Mapping[str, tuple[str, str]] = dataclasses.field(
        default_factory=dict
    )  # role -> (title, description)
    labels: Mapping[Permission, str] = dataclasses.field(default_factory=dict)  # permission -> label


@dataclass(frozen=True, slots=True)
class _Row:
    path: str
    line: int
    kind: str
    fields: tuple[str, ...]


def check_policy_dir(directory: str | Path) -> list[Problem]:
    """Every problem in a policy directory, sorted by file and line; empty when the engine can load it."""
    return compile_policy_dir(directory)[1]


def compile_policy_dir(directory: str | Path) -> tuple[CompiledPolicy | None, list[Problem]]:
    """Check the directory and, when it has no problem, the tables Casbin decided from it."""
    directory = Path(directory)
    if not directory.is_dir():
        return None, [Problem(str(directory), 0, "policy directory not found")]
    rows, problems = _read_rows(directory)
    text_rows = [row for row in rows if row.kind in _TEXT_FIELDS]
    rows = _drop_duplicates([row for row in rows if row.kind not in _TEXT_FIELDS], problems)
    g_rows = [row for row in rows if row.kind == "g"]
    problems += _inheritance_problems(g_rows, _casbin_max_inheritance())
    model_path = directory / MODEL_FILE
    model, lines, model_problems = _load_model(model_path)
    problems += model_problems
    compiled = None
    if model is not None:
        compiled, casbin_problems = _ask_casbin(model, str(model_path), lines, rows)
        problems += casbin_problems
    if compiled is not None:
        titles, labels, text_problems = _plain_language(text_rows, set(compiled.grants))
        problems += text_problems
        compiled = dataclasses.replace(compiled, titles=titles, labels=labels)
    if compiled is not None and not compiled.grants and not problems:
        problems.append(Problem(str(directory), 0, "no role is defined: add p rows (role, permission)"))
    problems.sort(key=lambda problem: (problem.path, problem.line))
    return (None if problems else compiled), problems


def _read_rows(directory: Path) -> tuple[list[_Row], list[Problem]]:
    # Hidden files are skipped: editors leave lock and swap files there (emacs' .#policy.csv).
    files = sorted(path for path in directory.glob("*.csv") if not path.name.startswith("."))
    if not files:
        return [], [Problem(str(directory), 0, "no policy files (*.csv) in the directory")]
    rows: list[_Row] = []
    problems: list[Problem] = []
    for file in files:
        where = str(file)
        try:
            text = file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(where, 0, f"cannot read the file: {exc}"))
            continue
        # split("\n") rather than splitlines(): line numbers must match what an editor shows.
        for number, raw in enumerate(text.split("\n"), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            kind = line.split(",", 1)[0].strip()
            if kind in _TEXT_FIELDS:
                # The last field keeps its commas.
                values = [f.strip() for f in line.split(",", len(_TEXT_FIELDS[kind]))[1:]]
                messages = _text_row_problems(kind, values)
            else:
                _, *values = (field.strip() for field in line.split(","))
                messages = _row_problems(kind, values)
            problems += (Problem(where, number, message) for message in messages)
            if not messages:
                rows.append(_Row(where, number, kind, tuple(values)))
    return rows, problems


def _row_problems(kind: str, values: list[str]) -> list[str]:
    names = _ROW_FIELDS.get(kind)
    if names is None:
        return [f"unknown row type {kind!r}: use {_ROW_TYPES}"]
    if len(values) != len(names):
        return [f"{kind} row needs {len(names)} fields ({', '.join(names)}), got {len(values)}"]
    messages = []
    for name, value in zip(names, values, strict=True):
        if not value:
            messages.append(f"{kind} row has an empty {name}")
        elif name == "permission" and value not in _PERMISSIONS:
            messages.append(_unknown("permission", value, _PERMISSIONS))
        elif name == "feature" and value not in _FEATURES:
            messages.append(_unknown("feature", value, _FEATURES))
        elif name.endswith("role") and not _ROLE_NAME.match(value):
            messages.append(f"invalid {name} {value!r}: use letters, digits and _ . : -")
    return messages


def _text_row_problems(kind: str, values: list[str]) -> list[str]:
    names = _TEXT_FIELDS[kind]
    if len(values) != len(names):
        return [f"{kind} row needs {len(names)} fields ({', '.join(names)}), got {len(values)}"]
    messages = []
    for name, value in zip(names, values, strict=True):
        limit = _TEXT_LIMITS.get(name)
        if not value:
            messages.append(f"{kind} row has an empty {name}")
        elif name == "permission" and value not in _PERMISSIONS:
            messages.append(_unknown("permission", value, _PERMISSIONS))
        elif name == "role" and not _ROLE_NAME.match(value):
            messages.append(f"invalid role {value!r}: use letters, digits and _ . : -")
        elif limit is not None and len(value) > limit:
            messages.append(f"{kind} row's {name} is {len(value)} characters long; keep it to {limit}")
    return messages


def _plain_language(
    rows: list[_Row], roles: set[str]
) -> tuple[dict[str, tuple[str, str]], dict[Permission, str], list[Problem]]:
    """Titles, descriptions and labels from role and label rows; a problem for each duplicate, and for a
    role row naming a role that no p or g row defines (a typo would otherwise leave the real role bare)."""
    titles: dict[str, tuple[str, str]] = {}
    labels: dict[Permission, str] = {}
    first: dict[tuple[str, str], _Row] = {}
    problems: list[Problem] = []
    for row in rows:
        key = row.fields[0]
        seen = first.setdefault((row.kind, key), row)
        if seen is not row:
            where = f"line {seen.line}" if seen.path == row.path else f"{Path(seen.path).name}:{seen.line}"
            problems.append(
                Problem(row.path, row.line, f"second {row.kind} row for {key!r}, first at {where}")
            )
            continue
        if row.kind == "role":
            if key not in roles:
                close = difflib.get_close_matches(key, sorted(roles), n=1)
                hint = f", did you mean {close[0]}?" if close else ": add p rows for it first"
                problems.append(
                    Problem(row.path, row.line, f"role row for {key!r}, which grants nothing{hint}")
                )
                continue
            titles[key] = (row.fields[1], row.fields[2])
        else:
            labels[Permission(key)] = row.fields[1]
    return titles, labels, problems


def _unknown(what: str, value: str, valid: list[str]) -> str:
    # Permissions are sk_org_*_manage throughout; _write is the usual slip, so suggest its _manage twin first.
    replaced = value.removesuffix("_write") + "_manage" if value.endswith("_write") else None
    close = [replaced] if replaced in valid else difflib.get_close_matches(value, valid, n=1)
    hint = f", did you mean {close[0]}?" if close else f" (valid: {', '.join(valid)})"
    return f"unknown {what} {value!r}{hint}"


def _drop_duplicates(rows: list[_Row], problems: list[Problem]) -> list[_Row]:
    first: dict[tuple[str, tuple[str, ...]], _Row] = {}
    unique = []
    for row in rows:
        seen = first.setdefault((row.kind, row.fields), row)
        if seen is row:
            unique.append(row)
            continue
        where = f"line {seen.line}" if seen.path == row.path else f"{Path(seen.path).name}:{seen.line}"
        problems.append(Problem(row.path, row.line, f"duplicate row, first at {where}"))
    return unique


def _casbin_max_inheritance() -> int:
    # Casbin's role manager silently stops following g links after max_hierarchy_level roles (10): a
    # deeper chain would quietly grant less, so it is reported instead.
    return int(RoleManager().max_hierarchy_level) - 1


def _inheritance_problems(g_rows: list[_Row], max_depth: int) -> list[Problem]:
    parents: dict[str, list[_Row]] = {}
    for row in g_rows:
        parents.setdefault(row.fields[0], []).append(row)
    problems: list[Problem] = []
    on_path: list[str] = []
    depth: dict[str, int] = {}  # longest chain of g rows above a role, once visited

    def visit(role: str) -> None:
        on_path.append(role)
        longest = 0
        for row in parents.get(role, ()):
            parent = row.fields[1]
            if parent in on_path:
                cycle = [*on_path[on_path.index(parent) :], parent]
                problems.append(Problem(row.path, row.line, "role inheritance cycle: " + " -> ".join(cycle)))
                continue
            if parent not in depth:
                visit(parent)
            longest = max(longest, depth[parent] + 1)
        depth[role] = longest
        on_path.pop()
        if longest > max_depth:
            first = parents[role][0]
            message = f"role {role!r} inherits through {longest} levels of g rows, Casbin follows {max_depth}"
            problems.append(Problem(first.path, first.line, message))

    for row in g_rows:  # in file order, so that the same files always give the same report
        if row.fields[0] not in depth:
            visit(row.fields[0])
    return problems


def _model_lines(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line of its definition; (section, "") -> line of the section header."""
    lines: dict[tuple[str, str], int] = {}
    sections = {name: sec for sec, name in _SECTION_NAMES.items()}
    section = ""
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = sections.get(line[1:-1].strip(), "")
            lines.setdefault((section, ""), number)
        elif "=" in line and not line.startswith(("#", ";")):
            lines.setdefault((section, line.split("=", 1)[0].strip()), number)
    return lines


def _load_model(path: Path) -> tuple[Any, dict[tuple[str, str], int], list[Problem]]:
    where = str(path)
    if not path.is_file():
        return None, {}, [Problem(where, 1, "model file is missing: Casbin needs it to read the rows")]
    try:
        text = path.read_text(encoding="utf-8")
        model = Model()
        model.load_model_from_text(text)
    except Exception as exc:  # noqa: BLE001 - Casbin raises bare RuntimeErrors, with the line in the message
        found = re.search(r"line (\d+)", str(exc))
        line = int(found[1]) if found else 1
        return None, {}, [Problem(where, line, f"Casbin cannot load the model: {exc}")]
    lines = _model_lines(text)
    problems = []
    sections = dict(model.items())  # a casbin Model is dict-like without get() or `in`
    for (sec, key), (size, meaning) in _MODEL_CONTRACT.items():
        assertion = sections.get(sec, {}).get(key)
        if assertion is None:
            line = lines.get((sec, ""), 1)
            message = f"[{_SECTION_NAMES[sec]}] must define {key} ({meaning})"
            problems.append(Problem(where, line, message))
        elif size is not None and (
            len(assertion.tokens) != size or assertion.params_tokens or "#" in assertion.value
        ):
            # pycasbin keeps "# ..." on r, p and g lines as part of the last field (or as more fields).
            hint = "; put the comment on its own line" if "#" in assertion.value else ""
            message = f"{key} must have {size} fields ({meaning}), got `{key} = {assertion.value}`{hint}"
            problems.append(Problem(where, lines.get((sec, key), 1), message))
    return (None if problems else model), lines, problems


def _ask_casbin(
    model: Any, where: str, lines: dict[tuple[str, str], int], rows: list[_Row]
) -> tuple[CompiledPolicy | None, list[Problem]]:
    """Load the rows into an enforcer and record Casbin's answer for every pair (the matchers decide)."""
    try:
        enforcer = casbin.Enforcer(model)
    except Exception as exc:  # noqa: BLE001 - in practice an effect Casbin does not support
        return None, [Problem(where, lines.get(("e", "e"), 1), f"Casbin cannot use the model: {exc}")]
    for kind in ("p", "p2", "g"):
        rules = [list(row.fields) for row in rows if row.kind == kind]
        if rules and kind == "g":
            enforcer.add_named_grouping_policies(kind, rules)
        elif rules:
            enforcer.add_named_policies(kind, rules)
    roles = list(dict.fromkeys(role for row in rows for role in _roles_of(row)))
    try:
        grants = {role: frozenset(p for p in Permission if enforcer.enforce(role, p.value)) for role in roles}
    except Exception as exc:  # noqa: BLE001 - the matcher is only parsed (SimpleEval) and evaluated now
        return None, [Problem(where, lines.get(("m", "m"), 1), f"Casbin cannot evaluate matcher m: {exc}")]
    features = enforcer.new_enforce_context("2")
    try:
        requirements = {
            permission: frozenset(f for f in Feature if enforcer.enforce(features, permission.value, f.value))
            for permission in Permission
        }
    except Exception as exc:  # noqa: BLE001 - as for m
        return None, [Problem(where, lines.get(("m", "m2"), 1), f"Casbin cannot evaluate matcher m2: {exc}")]
    problems = []
    for role in roles:
        if not grants[role]:
            first = next(row for row in rows if role in _roles_of(row))
            message = f"role {role!r} grants no permission: give it p rows or a g row to a role with some"
            problems.append(Problem(first.path, first.line, message))
    granted_by = {p: frozenset(role for role, held in grants.items() if p in held) for p in Permission}
    return CompiledPolicy(grants, requirements, granted_by), problems


def _roles_of(row: _Row) -> tuple[str, ...]:
    return row.fields if row.kind == "g" else row.fields[:1] if row.kind == "p" else ()

"""Every ``$ portal ...`` example in the README runs as written on a fresh ``make run`` set-up (migrate, demo,
the shipped policies, default settings, run from the project directory) and prints what the README shows.

Expected output lines follow their command in the same code block; ``...`` in a line matches anything, and
a line that is only ``...`` matches any number of lines. The ``policies/roles.csv`` block is written as the
README says, and the sample mistake is made on the line the README names.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PORTAL = str(Path(sys.executable).parent / "portal")

_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in _BLOCK.findall(README) if lang == kind]


def examples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each ``$ portal`` line of the README's sh blocks."""
    found: list[tuple[str, list[str]]] = []
    for body in blocks("sh"):
        lines = body.splitlines()
        in_block = len(found)  # output lines belong to a command of this block only
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if not line.startswith("$ "):
                if len(found) > in_block and lines[i - 1] and not line.startswith("$"):
                    found[-1][1].append(line)
                continue
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + " " + lines[i].strip()
                i += 1
            found.append((command, []))
    return found


def matches(expected: list[str], actual: list[str]) -> bool:
    pattern = "".join(
        "(?:.*\n?)*" if line.strip() == "..." else ".*".join(re.escape(p) for p in line.split("...")) + "\n"
        for line in expected
    )
    return re.fullmatch(pattern, "\n".join(actual) + "\n") is not None


@pytest.fixture
def fresh(tmp_path: Path) -> dict[str, str]:
    """A project directory as after ``make run``'s migrate and demo: ./policies, ./var, no PORTAL_* set."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    for step in ("migrate", "demo"):
        subprocess.run([PORTAL, step], cwd=tmp_path, env=env, check=True, capture_output=True)
    return env


def run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = shlex.split(command)
    assert args[0] == "portal", command
    return subprocess.run([PORTAL, *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def test_the_readme_has_the_examples_this_test_runs() -> None:
    commands = [command.split()[1:3] for command, _ in examples()]
    assert ["policy", "check"] in commands
    assert ["member", "add"] in commands
    assert ["client", "create"] in commands
    [roles] = [b for b in blocks("csv") if b.startswith("# policies/roles.csv")]
    assert "p, support, sk_org_users_read" in roles


def test_every_readme_command_works_as_written(fresh: dict[str, str], tmp_path: Path) -> None:
    [roles] = [b for b in blocks("csv") if b.startswith("# policies/roles.csv")]
    (tmp_path / "policies" / "roles.csv").write_text(roles)
    for command, expected in examples():
        result = run(command, tmp_path, fresh)
        assert result.returncode == 0, (command, result.stderr)
        actual = result.stdout.splitlines()
        if expected:
            assert matches(expected, actual), (command, expected, actual)


def test_the_sample_mistake_prints_what_the_readme_shows(fresh: dict[str, str], tmp_path: Path) -> None:
    [roles] = [b for b in blocks("csv") if b.startswith("# policies/roles.csv")]
    match = re.search(r"A mistake \(here `(\w+)` on line (\d+)\)", README)
    assert match, "the README names the mistake and its line"
    wrong, number = match.group(1), int(match.group(2))
    lines = roles.splitlines()
    lines[number - 1] = re.sub(r"sk_\w+", wrong, lines[number - 1])
    (tmp_path / "policies" / "roles.csv").write_text("\n".join(lines) + "\n")
    [sample] = [b for b in blocks("") if "unknown permission" in b]
    result = run("portal policy check", tmp_path, fresh)
    assert result.returncode == 1
    assert result.stderr.splitlines() == sample.splitlines()

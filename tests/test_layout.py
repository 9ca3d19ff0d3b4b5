"""The dependency rules of DESIGN §2 and §11, read from the source with ``ast`` (no import is executed):

- nothing under ``src/`` imports ``workers`` (``workers -> portal`` only);
- ``src/policy`` imports nothing of ours;
- ``portal.core`` imports no other part of the portal;
- the protocol packages (``portal.oidc``, ``api``, ``webhooks``, ``sso``, ``scim``) import no widget; the one
  exception is the management API, a second door onto the widgets' services (DESIGN §13: "no business rule
  lives in an API handler"), which may import ``widgets.<name>.service`` and ``.schemas`` and nothing else.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

OURS = ("portal", "policy", "widgets", "workers")
PROTOCOLS = ("oidc", "api", "webhooks", "sso", "scim")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported} ({self.rule})"


def module_of(path: Path, src: Path) -> str:
    """``src/portal/core/db.py`` -> ``portal.core.db``; ``__init__.py`` names its package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports (absolute names; relative imports resolved against ``module``), and
    every string passed to ``importlib.import_module`` or ``__import__``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            for alias in node.names:
                yield node.lineno, f"{name}.{alias.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in {"import_module", "__import__"} and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    yield node.lineno, first.value


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def check_tree(src: Path) -> list[Violation]:
    """Every import under ``src`` that breaks a rule of this module's docstring."""
    found: list[Violation] = []
    for path in sorted(src.rglob("*.py")):
        module = module_of(path, src)
        shown = str(path.relative_to(src.parent))
        for line, imported in imports(path, module):
            top = _top(imported)
            if top not in OURS:
                continue
            if top == "workers" and _top(module) != "workers":
                found.append(Violation(shown, line, imported, "src/ never imports workers"))
            if module.startswith("policy") and top != "policy":
                found.append(Violation(shown, line, imported, "policy imports nothing of ours"))
            if module.startswith("portal.core") and not (
                imported == "portal" or imported.startswith(("portal.core", "policy"))
            ):
                found.append(Violation(shown, line, imported, "portal.core imports no other part of portal"))
            if module.split(".")[:2] in (["portal", p] for p in PROTOCOLS) and top == "widgets":
                parts = imported.split(".")
                service = len(parts) >= 3 and parts[2] in {"service", "schemas"}
                if not (module.startswith("portal.api") and service):
                    found.append(Violation(shown, line, imported, "protocol packages never import widgets"))
    return found


def test_the_source_tree_follows_the_dependency_rules() -> None:
    violations = check_tree(ROOT / "src")
    assert not violations, "\n".join(map(str, violations))


def test_workers_is_only_an_entry_point_into_portal() -> None:
    # workers/ may import portal; nothing else imports workers (tests aside).
    for path in (ROOT / "workers").rglob("*.py"):
        for _, imported in imports(path, module_of(path, ROOT)):
            assert _top(imported) in {"portal", "workers", "policy"} or _top(imported) not in OURS


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "src"
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


@pytest.mark.parametrize(
    ("name", "text", "rule"),
    [
        ("portal/cli.py", "from workers.settings import make_worker\n", "src/ never imports workers"),
        ("portal/jobs.py", "import importlib\nimportlib.import_module('workers.domains')\n", "workers"),
        ("widgets/x/service.py", "import workers\n", "src/ never imports workers"),
        ("policy/engine.py", "from portal.core import db\n", "policy imports nothing of ours"),
        ("policy/engine.py", "from widgets import members\n", "policy imports nothing of ours"),
        ("portal/core/db.py", "from portal.web.app import create_app\n", "portal.core imports no other"),
        ("portal/core/db.py", "from ..auth import sessions\n", "portal.core imports no other"),
        ("portal/oidc/tokens.py", "from widgets.members import service\n", "protocol packages never"),
        ("portal/scim/server.py", "from widgets.members.service import remove\n", "protocol packages"),
        ("portal/sso/saml.py", "import widgets.sso.service\n", "protocol packages never import widgets"),
        ("portal/api/members.py", "from widgets.members.controller import X\n", "protocol packages never"),
        ("portal/api/members.py", "from widgets.members import WIDGET\n", "protocol packages never"),
    ],
)
def test_each_forbidden_import_is_caught(tmp_path: Path, name: str, text: str, rule: str) -> None:
    src = _tree(tmp_path, {"portal/__init__.py": "", name: text})
    violations = check_tree(src)
    assert violations, f"{name}: {text!r} was not caught"
    assert any(rule in v.rule for v in violations), violations
    assert violations[0].path.endswith(name)


def test_allowed_imports_pass(tmp_path: Path) -> None:
    src = _tree(
        tmp_path,
        {
            "portal/core/db.py": "from portal.core import tables\nfrom policy import Permission\n",
            "portal/web/app.py": "from portal.auth import login\nfrom widgets import members\n",
            "portal/oidc/tokens.py": "from portal.core import db\nfrom policy import PolicyEngine\n",
            "portal/api/members.py": "from widgets.members import service\nfrom widgets.members.schemas import X\n",
            "policy/engine.py": "import casbin\nfrom policy.vocab import Permission\n",
            "widgets/members/service.py": "from portal.core import db\n",
        },
    )
    assert check_tree(src) == []

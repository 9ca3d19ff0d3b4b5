"""The README's curl example works as written against a running ``portal serve`` (only the port differs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, free_port, portal_serve


def test_readme_curl_example_creates_the_organization(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Management API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    example = next(b for b in blocks if "curl" in b)
    port = free_port()
    env = {
        "PORTAL_DATABASE_URL": f"sqlite:///{tmp_path / 'readme.sqlite3'}",
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
        "PORTAL_POLICY_DIR": str(ROOT / "policies"),
        "PORTAL_PUBLIC_URL": f"http://localhost:{port}",
        "PORTAL_LOG_LEVEL": "WARNING",
    }
    cli = [sys.executable, "-m", "portal.cli"]
    run_env = {"PATH": "/usr/bin:/bin", **env}
    subprocess.run([*cli, "migrate"], env=run_env, cwd=ROOT, check=True, capture_output=True, timeout=60)
    created = subprocess.run(
        [*cli, "api-key", "create", "CRM backend", "--scope", "organizations:read", "--scope", "organizations:write"],
        env=run_env, cwd=ROOT, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    key = re.search(r"^key: (portal_sk_\S+)$", created.stdout, re.M)
    assert key, created.stdout
    script = example.replace("portal_sk_...", key.group(1)).replace("localhost:8000", f"localhost:{port}")
    with portal_serve(env, port, tmp_path / "serve.log"):
        first = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=30)
        again = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=30)
    assert first.returncode == 0, first.stderr
    org = json.loads(first.stdout)
    assert org["name"] == "globex" and org["external_id"] == "crm-4711" and org["features"] == ["sso"]
    assert org["id"].startswith("org_")
    # Run twice with the same Idempotency-Key: the same organization, not an error.
    assert json.loads(again.stdout) == org

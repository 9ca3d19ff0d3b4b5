"""schemathesis (an independent OpenAPI fuzzer) against ``/api/v1/openapi.json`` of a running ``portal serve``:
no 5xx, every status code, content type, header and body matching the document, and its other checks
(schema-invalid data rejected, a missing key refused, unsupported methods 405, deleted objects gone...).

Left out: ``positive_data_acceptance``, which expects every schema-valid body to succeed; the services are
stricter than a JSON schema says (an organization name is a slug, an email must be deliverable, a cursor
must be one of ours) and answer 422 naming the field."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, portal_serve

CHECKS = "all"
EXCLUDED = "positive_data_acceptance"


def _config(ids: dict[str, str]) -> str:
    """Real ids for the path parameters, so that the cases reach the services instead of 404s; deletes get
    objects of their own."""
    lines = [
        "[parameters]",
        *(
            f'{name} = "{ids[name]}"'
            for name in ("organization_id", "membership_id", "invitation_id", "domain_id", "session_id")
        ),
        f'"query.user_id" = "{ids["user_id"]}"',
        "[[operations]]",
        'include-name = "DELETE /organizations/{organization_id}"',
        f'parameters = {{ organization_id = "{ids["doomed_organization_id"]}" }}',
        "[[operations]]",
        'include-name = "DELETE /sessions/{session_id}"',
        f'parameters = {{ session_id = "{ids["doomed_session_id"]}" }}',
    ]
    return "\n".join(lines) + "\n"


# About 35 s of fuzzing plus the server's start on an idle 2-core machine; more when it is shared.
@pytest.mark.timeout(240)
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'fuzz.sqlite3'}"
    seeded = subprocess.run(
        [sys.executable, "-m", "tests.portal.api.fuzz_seed", database_url],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    ids = json.loads(seeded.stdout.strip().splitlines()[-1])
    port = free_port()
    env = {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
        "PORTAL_POLICY_DIR": str(ROOT / "policies"),
        "PORTAL_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PORTAL_API_RATE_LIMIT": "1000000",
        # "Verify now" runs in the process: a closed loopback DNS port makes it end at once.
        "PORTAL_DNS_NAMESERVERS": "127.0.0.1",
        "PORTAL_DNS_PORT": str(free_port()),
        "PORTAL_DNS_TIMEOUT": "0.2",
        "PORTAL_LOG_LEVEL": "WARNING",
    }
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(ids))
    with portal_serve(env, port, tmp_path / "serve.log"):
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run",
                f"http://127.0.0.1:{port}/api/v1/openapi.json",
                "-H", f"Authorization: Bearer {ids['key']}",
                "--checks", CHECKS, "--exclude-checks", EXCLUDED, "--phases", "examples,coverage,fuzzing",
                "-n", os.environ.get("PORTAL_TEST_FUZZ_EXAMPLES", "12"), "--seed", "11", "--workers", "1",
                "--no-color", "--request-timeout", "10",
            ],
            capture_output=True, text=True, timeout=200, cwd=tmp_path,  # its cache stays out of the tree
        )  # fmt: skip
        log = (tmp_path / "serve.log").read_text()
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:] + "\n--- portal log ---\n" + log[-4000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", output)
    assert summary, output[-3000:]
    generated = int(summary.group(1))
    assert generated >= 500, output[-3000:]
    assert "Traceback" not in log and "unhandled" not in log, log[-4000:]
    print(f"schemathesis: {generated} cases, all passed")

"""A short run of ``bench/load.py`` (issue 15 item 5): 20 people signing in by email code for 5 seconds
beside members-page traffic, against real ``portal serve`` processes and PostgreSQL: no error, and the
database checks hold (every session has its user, no code used twice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PG_URL, ROOT, database_name, with_database_name

pytestmark = [
    pytest.mark.db,
    pytest.mark.postgres,  # the PostgreSQL phase of `make test` runs it; the SQLite phase deselects it
    pytest.mark.timeout(180),
]


def test_a_short_load_run_has_no_errors_and_leaves_consistent_rows() -> None:
    url = with_database_name(PG_URL, f"{database_name(PG_URL)}_load_{os.getpid()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env["PORTAL_BENCH_DATABASE_URL"] = url
    result = subprocess.run(
        [sys.executable, "bench/load.py", "--seconds", "5", "--users", "20", "--readers", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=170,
    )
    lines = result.stdout.decode().strip().splitlines()
    assert lines, result.stderr.decode()
    report = json.loads(lines[-1])
    assert result.returncode == 0, report
    assert report["ok"] is True and report["problems"] == []
    assert report["errors"] == 0
    assert report["sign_ins"] >= 20  # everyone signed in at least once
    assert report["replays_refused"] == report["sign_ins"]  # every code refused the second time
    assert report["member_pages"] > report["sign_ins"]
    assert report["database"]["sessions_without_user"] == 0
    assert report["database"]["codes_used_twice"] == 0
    assert report["database"]["sign_ins_recorded"] == report["sign_ins"]
    assert report["database"]["email_code_sessions"] == report["sign_ins"]

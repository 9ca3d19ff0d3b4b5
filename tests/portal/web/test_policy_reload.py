"""Editing the policy of a running portal: SIGHUP re-reads it; a policy with problems is refused."""

from __future__ import annotations

import logging
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from policy import Permission, PolicyEngine
from portal.web.app import reload_policy
from tests.conftest import POLICY_DIR, free_port, portal_serve

SUPPORT_ROLE = "\np, support, sk_org_users_read\n"
BROKEN = "\np, support, sk_org_users_reed\n"


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, directory)
    return directory


def add(directory: Path, rows: str) -> None:
    with (directory / "policy.csv").open("a") as policy_file:
        policy_file.write(rows)


def test_a_reload_applies_the_edited_files(policy_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = PolicyEngine.from_dir(policy_dir)
    assert "support" not in policy.roles
    assert not policy.decide(("support",), frozenset(), Permission.USERS_READ)
    add(policy_dir, SUPPORT_ROLE)

    with caplog.at_level(logging.INFO, logger="portal.policy"):
        assert reload_policy(policy) is True

    assert "support" in policy.roles
    assert policy.decide(("support",), frozenset(), Permission.USERS_READ)  # no stale cached denial
    assert "roles: admin, member, support" in caplog.text


def test_a_policy_with_problems_is_refused_and_the_old_one_stays(
    policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = PolicyEngine.from_dir(policy_dir)
    before = policy.roles
    add(policy_dir, BROKEN)

    with caplog.at_level(logging.INFO, logger="portal.policy"):
        assert reload_policy(policy) is False

    assert policy.roles == before
    assert policy.decide(("admin",), frozenset(), Permission.USERS_READ)
    assert "NOT reloaded; the previous one stays in force" in caplog.text
    assert "policy.csv:" in caplog.text and "sk_org_users_reed" in caplog.text


def test_portal_serve_reloads_on_sighup(policy_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {
        "PORTAL_DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        "PORTAL_POLICY_DIR": str(policy_dir),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
        "PORTAL_SECRET_KEY": "reload-test-secret-" + "x" * 32,
        "PORTAL_LOG_LEVEL": "INFO",
    }
    with portal_serve(env, port, log_path) as process:
        add(policy_dir, SUPPORT_ROLE)
        process.send_signal(signal.SIGHUP)
        _wait(lambda: "roles: admin, member, support" in log_path.read_text(), "the reload", log_path)
        add(policy_dir, BROKEN)
        process.send_signal(signal.SIGHUP)
        _wait(lambda: "NOT reloaded" in log_path.read_text(), "the refusal", log_path)
        assert "sk_org_users_reed" in log_path.read_text()
        assert _healthy(port)  # still serving, on the last good policy
        httpx.get(f"http://127.0.0.1:{port}/nope", timeout=5)
    text = log_path.read_text()
    # Casbin's model dump stays out of the log (issue 16), and every log line has the one format.
    assert "Model:" not in text and "r.r:" not in text and "casbin" not in text
    log_lines = [line for line in text.splitlines() if line[:4].isdigit()]
    assert any(" INFO portal.policy policy reloaded from " in line for line in log_lines)
    assert any(" INFO portal.request GET /nope 404 " in line for line in log_lines)
    for line in text.splitlines():
        if not line.strip() or line.startswith(("Portal serving on ", "  ", "\t")) or ".csv:" in line:
            continue
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+ ", line), line


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(done: Callable[[], bool], what: str, log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log_path.read_text()}")
        time.sleep(0.1)

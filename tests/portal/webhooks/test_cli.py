"""``portal webhook create|list|deliveries|replay|delete`` against the engine under test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from piccolo.engine.base import Engine

from portal.cli import main
from tests.conftest import POLICY_DIR
from tests.portal.webhooks.receiver import Receiver

pytestmark = pytest.mark.db


@pytest.fixture
def run(database_url: str, tmp_path: Path, db: Engine):  # type: ignore[no-untyped-def]
    env = {
        "PORTAL_DATABASE_URL": database_url,
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
        "PORTAL_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
    }

    def invoke(*args: str, **extra: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, list(args), env={**env, **extra}, catch_exceptions=False)
        return result.exit_code, result.stdout + result.stderr

    return invoke


def test_create_list_deliveries_replay_delete(run, hook: Receiver) -> None:  # type: ignore[no-untyped-def]
    code, out = run("webhook", "create", hook.url, "--event", "user.created", "--description", "CRM sync")
    assert code == 0, out
    endpoint_id = re.search(r"^id: (whe_\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    hook.secret = re.search(r"^secret: (whsec_\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    assert "events: user.created" in out and "not shown again" in out
    code, out = run("webhook", "list")
    assert code == 0 and endpoint_id in out and "enabled" in out and "user.created" in out
    assert hook.secret not in out  # shown once only

    assert run("user", "create", "carol@acme.test")[0] == 0  # an event, committed by the CLI
    code, out = run("webhook", "deliveries", endpoint_id)
    assert code == 0 and "user.created" in out and "pending  attempts 0" in out
    event_id = re.search(r"(msg_\S+)", out).group(1)  # type: ignore[union-attr]

    code, out = run("webhook", "replay", event_id)
    assert code == 0 and "delivered" in out, out
    [received] = hook.requests
    assert received.error == "" and received.message_id == event_id
    assert received.verified["data"]["email"] == "carol@acme.test"
    code, out = run("webhook", "deliveries", endpoint_id)
    assert "delivered  attempts 1" in out and re.search(r"delivered  200  \d+ ms", out)

    code, out = run("webhook", "disable", endpoint_id)
    assert code == 0 and f"disabled {endpoint_id}" in out
    assert "disabled (manual)" in run("webhook", "list")[1]
    code, out = run("webhook", "enable", endpoint_id)
    assert code == 0 and f"enabled {endpoint_id}" in out
    assert f"{endpoint_id}  enabled" in run("webhook", "list")[1]
    assert run("webhook", "enable", "whe_nope")[0] == 1

    code, out = run("webhook", "delete", endpoint_id)
    assert code == 0 and f"deleted {endpoint_id}" in out
    assert endpoint_id not in run("webhook", "list")[1]
    code, out = run("webhook", "delete", endpoint_id)
    assert code == 1 and "not found" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("https://127.0.0.1/hook",), "url: 127.0.0.1 resolves to 127.0.0.1, a private or local address"),
        (("http://example.com/hook",), "url: The URL must start with https://."),
        (
            ("https://93.184.215.14/hook", "--event", "user.exploded"),
            "event_types: unknown event type 'user.exploded'",
        ),
        (("https://93.184.215.14/hook", "--org", "nope"), "org: no organization 'nope'"),
    ],
)
def test_create_refuses_bad_input_naming_the_field(run, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    code, out = run("webhook", "create", *args, PORTAL_WEBHOOK_ALLOW_PRIVATE_ADDRESSES="false")
    assert code == 1
    assert message in out
    assert "secret" not in out
    assert run("webhook", "list")[1] == ""

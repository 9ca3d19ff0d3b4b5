"""The database out of reach (issue 15 item 2): every page answers 503, server-rendered for browsers and JSON
for API clients, with no stack trace; ``/readyz`` says what is down; the portal starts all the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy import PolicyEngine
from portal.core.db import is_unavailable, make_engine
from portal.core.settings import Settings
from portal.web.app import create_app
from tests.conftest import POLICY_DIR, free_port, serve


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A PostgreSQL URL where nothing listens.
    return Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/portal",
        data_dir=str(tmp_path / "var"),
        policy_dir=str(POLICY_DIR),
        secret_key="unavailable-test-secret-" + "x" * 32,
    )


# piccolo looks the server version up when the engine is made, and only warns when it cannot.
@pytest.mark.filterwarnings("ignore:.*Unable to fetch server version")
async def test_pages_answer_503_while_the_database_is_down(settings: Settings, policy: PolicyEngine) -> None:
    app = create_app(settings, engine=make_engine(settings.database_url), policy=policy)
    async with serve(app) as client:  # start-up does not need the database
        client.cookies.set("portal_session", "some-session-token")
        page = await client.get("/ui/", headers={"accept": "text/html"})
        assert page.status_code == 503
        assert page.headers["retry-after"] == "5"
        assert page.headers["content-type"].startswith("text/html")
        assert "<h1>Temporarily unavailable</h1>" in page.text
        assert "cannot reach its database" in page.text
        assert "Traceback" not in page.text and "ConnectionRefusedError" not in page.text

        api = await client.get("/ui/organization/members", headers={"accept": "application/json"})
        assert api.status_code == 503
        error = api.json()["error"]
        assert error["status"] == 503 and error["title"] == "Temporarily unavailable"
        assert "request_id" in error

        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("error: ")
        assert (await client.get("/healthz")).status_code == 200


def test_what_counts_as_unavailable() -> None:
    assert is_unavailable(ConnectionRefusedError(111, "refused"))
    assert is_unavailable(TimeoutError())
    wrapped = RuntimeError("query failed")
    wrapped.__cause__ = ConnectionResetError()
    assert is_unavailable(wrapped)

    class CannotConnectNow(Exception):
        sqlstate = "57P03"

    class UniqueViolation(Exception):
        sqlstate = "23505"

    assert is_unavailable(CannotConnectNow())
    assert not is_unavailable(UniqueViolation())
    assert not is_unavailable(ValueError("a bug"))
    assert not is_unavailable(FileNotFoundError())

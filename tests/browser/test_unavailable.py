"""The page a browser gets while the database is out of reach (issue 15): a real ``portal serve`` whose
PostgreSQL does not answer, seen in Chromium."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser

from tests.browser.conftest import SCREENSHOTS
from tests.conftest import POLICY_DIR, free_port, portal_serve


async def test_the_503_page_says_what_is_wrong_and_what_to_do(browser: Browser, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PORTAL_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/portal",  # nothing listens
        "PORTAL_POLICY_DIR": str(POLICY_DIR),
        "PORTAL_DATA_DIR": str(tmp_path / "var"),
        "PORTAL_SECRET_KEY": "browser-test-secret-" + "x" * 32,
        "PORTAL_LOG_LEVEL": "WARNING",
    }
    with portal_serve(env, port, tmp_path / "server.log"):
        context = await browser.new_context()
        await context.add_cookies(
            [{"name": "portal_session", "value": "a-session", "url": f"http://127.0.0.1:{port}"}]
        )
        page = await context.new_page()
        response = await page.goto(f"http://127.0.0.1:{port}/ui/organization/members")
        assert response is not None and response.status == 503
        assert (await page.title()).startswith("Temporarily unavailable · 503")
        heading = page.get_by_role("heading", level=1)
        assert await heading.inner_text() == "Temporarily unavailable"
        text = await page.locator("main").inner_text()
        assert "cannot reach its database" in text and "try again in a few seconds" in text
        assert "Traceback" not in await page.content()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "unavailable.png"))
        await context.close()

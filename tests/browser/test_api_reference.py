"""The management API's reference page in a real browser: rendered on the server from the OpenAPI document,
no Content Security Policy violation, every operation listed, links to the schema work."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from tests.browser.conftest import SCREENSHOTS, LiveServer

pytestmark = pytest.mark.db


async def test_api_reference_page(live_server: LiveServer, browser: Browser) -> None:
    page = await browser.new_page()
    violations: list[str] = []
    page.on(
        "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
    )
    response = await page.goto(f"{live_server.url}/api/v1/reference")
    assert response is not None and response.status == 200
    assert await page.title() == "Portal management API"
    operations = await page.locator("main section h2 code").all_inner_texts()
    assert "POST /api/v1/organizations" in operations
    assert "PUT /api/v1/sessions/{session_id}/active-organization" in operations
    assert "POST /api/v1/organizations/{organization_id}/portal-links" in operations
    assert "GET /api/v1/webhook-endpoints/{endpoint_id}/deliveries" in operations
    from portal.api import hooks, routes

    assert len(operations) == len(routes.HANDLERS) + len(hooks.HANDLERS) == 36
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / "api-reference.png"), full_page=False)
    await page.locator("#update_membership").scroll_into_view_if_needed()
    await page.screenshot(path=str(SCREENSHOTS / "api-reference-operation.png"), full_page=False)
    await page.get_by_role("link", name="OrganizationCreate").first.click()
    assert page.url.endswith("#schema-OrganizationCreate")
    assert await page.locator("#schema-OrganizationCreate table").is_visible()
    await page.goto(f"{live_server.url}/api/v1/openapi.json")
    assert '"openapi":"3.1.0"' in (await page.content()).replace(" ", "")
    assert violations == []

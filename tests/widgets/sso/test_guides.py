"""The packaged SSO guides: front matter, only known placeholders, no raw HTML; overrides from
PORTAL_GUIDES_DIR/sso/ replace or add guides; the connection page renders the chosen guide with its values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from portal.core.settings import Settings
from portal.web import guides
from tests.factories import sign_in
from tests.widgets.sso.test_sso import add_connection
from widgets.sso import service

EXPECTED = {"okta", "entra-id", "google-workspace", "jumpcloud", "onelogin", "generic-saml", "generic-oidc"}


def test_every_packaged_guide_has_front_matter_and_known_placeholders_only() -> None:
    packaged = guides.load(service.GUIDES_DIR, "sso", None)
    assert {g.key for g in packaged} == EXPECTED
    for guide in packaged:
        text = (service.GUIDES_DIR / f"{guide.key}.md").read_text()
        assert text.startswith("---\ntitle: "), guide.key
        assert guide.meta.get("protocol") in {"saml", "oidc"}, guide.key
        assert re.search(r"^order: \d+$", text, re.M), guide.key
        assert guide.placeholders, f"{guide.key} shows none of the connection's values"
        assert guide.placeholders <= service.PLACEHOLDERS, (
            guide.key,
            guide.placeholders - service.PLACEHOLDERS,
        )
        # Every {{ ... }} is a placeholder the renderer fills (a typo like {{acs-url}} would print as is).
        assert len(re.findall(r"\{\{", guide.body)) == len(re.findall(r"\{\{\s*[a-z_]+\s*\}\}", guide.body))
        assert service.guide_protocol(guide) == ("oidc" if guide.key == "generic-oidc" else "saml")
        assert "acs_url" in guide.placeholders or "redirect_uri" in guide.placeholders


def test_rendered_guides_carry_the_values_with_copy_buttons_and_no_raw_html() -> None:
    values = {name: f"https://portal.example.com/{name}" for name in service.PLACEHOLDERS}
    for guide in guides.load(service.GUIDES_DIR, "sso", None):
        html = str(guides.render(guide, values))
        for name in guide.placeholders:
            assert f"https://portal.example.com/{name}" in html
        assert "{{" not in html and "<script" not in html
        if "acs_url" in guide.placeholders:
            assert re.search(r'data-copy="guide-acs_url-\d+"', html)


@pytest.mark.db
async def test_an_override_replaces_a_guide_and_adds_one(
    tmp_path: Path, settings: Settings, world: dict[str, Any], app: Any, client: httpx.AsyncClient
) -> None:
    override = tmp_path / "guides" / "sso"
    override.mkdir(parents=True)
    (override / "okta.md").write_text(
        "---\ntitle: Okta (our way)\nprotocol: saml\norder: 1\n---\nPaste {{ acs_url }}.\n"
    )
    (override / "pingone.md").write_text(
        "---\ntitle: PingOne\nprotocol: saml\n---\n<b>raw</b> {{ entity_id }}\n"
    )
    app.state.settings = msgspec.structs.replace(settings, guides_dir=str(tmp_path / "guides"))
    connection = await add_connection(world["acme"], provider="okta")
    await sign_in(client, world["alice"], world["acme"])
    page = (
        await client.get(f"/ui/organization/sso/{connection['id']}", headers={"accept": "text/html"})
    ).text
    assert "Setup guide: Okta (our way)" in page and 'Paste <span class="copyable">' in page
    assert "PingOne" in page
    ping = (
        await client.get(
            f"/ui/organization/sso/{connection['id']}?guide=pingone", headers={"accept": "text/html"}
        )
    ).text
    assert "&lt;b&gt;raw&lt;/b&gt;" in ping and "<b>raw</b>" not in ping
    listing = (await client.get("/ui/organization/sso", headers={"accept": "text/html"})).text
    assert "<strong>PingOne</strong>" in listing

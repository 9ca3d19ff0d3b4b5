"""Setup guides: Markdown with placeholders, raw HTML refused, app-owner overrides."""

from __future__ import annotations

from pathlib import Path

from portal.web import guides


def test_front_matter_gives_title_order_and_meta() -> None:
    guide = guides.parse("okta", "---\ntitle: Okta\norder: 5\nprotocol: saml\n---\n# Steps\n")
    assert (guide.title, guide.order, dict(guide.meta)) == ("Okta", 5, {"protocol": "saml"})
    assert guide.body == "# Steps\n"


def test_without_front_matter_the_title_comes_from_the_key() -> None:
    assert guides.parse("generic-saml", "Hello").title == "Generic Saml"


def test_placeholders_in_text_get_a_copy_button_and_in_code_the_plain_value() -> None:
    guide = guides.parse("x", "Paste {{ acs_url }} here.\n\n`{{ acs_url }}`\n\n```\n{{entity_id}}\n```\n")
    html = guides.render(guide, {"acs_url": "https://p.test/acs?a=1&b=2", "entity_id": "urn:x"})
    assert '<code id="guide-acs_url-1">https://p.test/acs?a=1&amp;b=2</code>' in html
    assert 'data-copy="guide-acs_url-1" aria-label="Copy acs url"' in html
    assert "<p><code>https://p.test/acs?a=1&amp;b=2</code></p>" in html
    assert "<pre><code>urn:x\n</code></pre>" in html
    assert guide.placeholders == {"acs_url", "entity_id"}


def test_a_missing_value_says_so() -> None:
    html = guides.render(guides.parse("x", "Certificate: {{ certificate }}"), {})
    assert "(not set yet)" in html


def test_raw_html_and_javascript_links_are_not_passed_through() -> None:
    html = guides.render(
        guides.parse(
            "x", '<script>alert(1)</script>\n\n[click](javascript:alert(1)) <img src=x onerror="y">'
        ),
        {},
    )
    assert "<script" not in html and "<img" not in html
    assert 'href="javascript' not in html
    assert "&lt;script&gt;" in html


def test_values_are_escaped() -> None:
    html = guides.render(guides.parse("x", "Name: {{ name }}"), {"name": "<b>acme</b>"})
    assert "<b>" not in html and "&lt;b&gt;acme&lt;/b&gt;" in html


def test_overrides_replace_and_add_guides(tmp_path: Path) -> None:
    packaged = tmp_path / "packaged"
    packaged.mkdir()
    (packaged / "okta.md").write_text("---\ntitle: Okta\norder: 1\n---\npackaged")
    (packaged / "generic.md").write_text("---\ntitle: Generic\norder: 99\n---\ngeneric")
    override = tmp_path / "override" / "sso"
    override.mkdir(parents=True)
    (override / "okta.md").write_text("---\ntitle: Okta (ours)\norder: 1\n---\nour steps")
    (override / "keycloak.md").write_text("---\ntitle: Keycloak\norder: 50\n---\nkc")
    (override / "Bad Name.md").write_text("ignored")
    loaded = guides.load(packaged, "sso", str(tmp_path / "override"))
    assert [guide.key for guide in loaded] == ["okta", "keycloak", "generic"]
    okta = guides.find(loaded, "okta")
    assert okta is not None and okta.title == "Okta (ours)" and okta.body == "our steps"
    assert guides.load(packaged, "scim", str(tmp_path / "override"))[0].body == "packaged"

"""The members list at scale: keyset pages (never OFFSET), search and filters, keys kept in sync."""

from __future__ import annotations

import re
from typing import Any

import httpx
from piccolo.engine.base import Engine

from policy import PolicyEngine
from portal.auth import accounts
from portal.core.tables import Membership, User
from tests.factories import make_invitation, make_member, make_org, make_user, sign_in
from tests.widgets.members.support import HTML, URL, invitation_emails, link, member_names, post
from widgets.members import service
from widgets.members.schemas import MemberQuery


async def walk(policy: PolicyEngine, org_id: str, query: MemberQuery, limit: int) -> list[list[str]]:
    """Every page, following next cursors from the first."""
    pages: list[list[str]] = []
    cursor = ""
    while True:
        page = await service.list_members(
            policy,
            org_id,
            MemberQuery(q=query.q, role=query.role, status=query.status, after=cursor),
            limit=limit,
        )
        pages.append([m.email for m in page.members])
        if not page.next_cursor:
            return pages
        cursor = page.next_cursor


async def big_org(count: int) -> dict[str, Any]:
    org = await make_org("big", "Big")
    for i in range(count):
        # Names that sort differently from their emails, with ties on the name.
        user = await make_user(f"u{i:03d}@big.test", given_name=f"Name{(i * 7) % 13:02d}", family_name="Same")
        await make_member(org, user, ["admin"] if i % 10 == 0 else ["member"])
    return org


async def test_next_pages_cover_every_member_once_in_order(db: Engine, policy: PolicyEngine) -> None:
    org = await big_org(45)
    pages = await walk(policy, org["id"], MemberQuery(), limit=20)
    assert [len(p) for p in pages] == [20, 20, 5]
    everyone = [e for p in pages for e in p]
    assert sorted(everyone) == [f"u{i:03d}@big.test" for i in range(45)]
    rows = await Membership.select(Membership.sort_key, Membership.id).where(
        Membership.organization == org["id"]
    )
    expected = [r["id"] for r in sorted(rows, key=lambda r: (r["sort_key"].encode(), r["id"]))]
    got = []
    cursor = ""
    while True:
        page = await service.list_members(policy, org["id"], MemberQuery(after=cursor), limit=20)
        got += [m.id for m in page.members]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert got == expected


async def test_previous_pages_walk_back_to_a_full_first_page(db: Engine, policy: PolicyEngine) -> None:
    org = await big_org(45)
    first = await service.list_members(policy, org["id"], MemberQuery(), limit=20)
    assert first.prev_cursor is None and first.next_cursor
    second = await service.list_members(policy, org["id"], MemberQuery(after=first.next_cursor), limit=20)
    third = await service.list_members(policy, org["id"], MemberQuery(after=second.next_cursor), limit=20)
    assert third.next_cursor is None and third.prev_cursor
    back = await service.list_members(policy, org["id"], MemberQuery(before=third.prev_cursor), limit=20)
    assert [m.id for m in back.members] == [m.id for m in second.members]
    assert back.prev_cursor and back.next_cursor
    start = await service.list_members(policy, org["id"], MemberQuery(before=back.prev_cursor), limit=20)
    assert [m.id for m in start.members] == [m.id for m in first.members]
    assert start.prev_cursor is None


async def test_a_removal_between_pages_skips_nobody(db: Engine, policy: PolicyEngine) -> None:
    org = await big_org(30)
    first = await service.list_members(policy, org["id"], MemberQuery(), limit=10)
    # The last member shown is removed before "next" is clicked: the cursor still holds its position.
    await Membership.delete().where(Membership.id == first.members[-1].id)
    second = await service.list_members(policy, org["id"], MemberQuery(after=first.next_cursor), limit=10)
    everyone = [
        m.id for m in (await service.list_members(policy, org["id"], MemberQuery(), limit=100)).members
    ]
    assert [m.id for m in second.members] == everyone[9:19]


async def test_search_and_role_filter_page_too(db: Engine, policy: PolicyEngine) -> None:
    org = await big_org(45)
    admins = await walk(policy, org["id"], MemberQuery(role="admin"), limit=2)
    assert sorted(e for p in admins for e in p) == [f"u{i:03d}@big.test" for i in range(0, 45, 10)]
    named = await walk(policy, org["id"], MemberQuery(q="name01"), limit=2)
    assert sum(len(p) for p in named) == len([i for i in range(45) if (i * 7) % 13 == 1])
    by_email = await walk(policy, org["id"], MemberQuery(q="U01"), limit=3)
    assert sorted(e for p in by_email for e in p) == [f"u{i:03d}@big.test" for i in range(10, 20)]
    family = await walk(policy, org["id"], MemberQuery(q="sam"), limit=50)
    assert sum(len(p) for p in family) == 45


async def test_pending_invitations_page_by_email(db: Engine, policy: PolicyEngine) -> None:
    org = await make_org("inv", "Inv")
    for i in range(25):
        await make_invitation(org, f"p{i:02d}@inv.test", ["member" if i % 2 else "admin"])
    first = await service.list_members(policy, org["id"], MemberQuery(status="invited"), limit=10)
    assert [i.email for i in first.invitations] == [f"p{i:02d}@inv.test" for i in range(10)]
    second = await service.list_members(
        policy, org["id"], MemberQuery(status="invited", after=first.next_cursor), limit=10
    )
    assert [i.email for i in second.invitations] == [f"p{i:02d}@inv.test" for i in range(10, 20)]
    back = await service.list_members(
        policy, org["id"], MemberQuery(status="invited", before=second.prev_cursor), limit=10
    )
    assert [i.email for i in back.invitations] == [i.email for i in first.invitations]
    admins = await service.list_members(
        policy, org["id"], MemberQuery(status="invited", role="admin"), limit=50
    )
    assert len(admins.invitations) == 13
    # Above the first page of members, a summary of the first few with a way to see them all.
    summary = await service.list_members(policy, org["id"], MemberQuery(), limit=10)
    assert len(summary.invitations) == service.INVITATION_SUMMARY and summary.more_invitations


async def test_the_page_links_walk_through_the_list(
    client: httpx.AsyncClient, db: Engine, policy: PolicyEngine
) -> None:
    org = await big_org(45)
    admin = await User.select(User.id).where(User.email == "u000@big.test").first()
    assert admin is not None
    await sign_in(client, admin["id"], org)
    seen: list[str] = []
    rows: list[str] = []
    page = await client.get(URL, params={"q": "name"}, headers=HTML)
    assert link(page.text, "prev") is None
    while True:
        assert page.status_code == 200
        seen += member_names(page.text)
        rows += re.findall(r'<tr id="member-(mem_[^"]+)">', page.text)
        next_url = link(page.text, "next")
        if next_url is None:
            break
        assert "q=name" in next_url
        page = await client.get(next_url, headers=HTML)
        assert link(page.text, "prev")
    assert len(rows) == 45 and len(set(rows)) == 45
    assert seen == sorted(seen, key=accounts.fold)


async def test_profile_changes_reach_the_list(client: httpx.AsyncClient, world: dict[str, Any]) -> None:
    """Names and email live on the user; the membership's search keys follow every change."""
    await sign_in(client, world["bob"], world["acme"])
    await post(
        client,
        "/ui/account/profile",
        {"given_name": "Robert", "family_name": "Zimmer", "display_name": "", "locale": "en"},
        token_page="/ui/account/profile",
    )
    await sign_in(client, world["alice"], world["acme"])
    page = await client.get(URL, params={"q": "zimm"}, headers=HTML)
    assert member_names(page.text) == ["Robert Zimmer"]
    assert member_names((await client.get(URL, params={"q": "bob b"}, headers=HTML)).text) == []
    await User.update({User.email: "robert@acme.test"}).where(User.id == world["bob"]["id"])
    await accounts.sync_member_keys(world["bob"]["id"])
    assert member_names((await client.get(URL, params={"q": "robert@"}, headers=HTML)).text) == [
        "Robert Zimmer"
    ]
    assert invitation_emails(page.text) == []

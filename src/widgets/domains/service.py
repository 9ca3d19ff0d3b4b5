"""Domain rules: adding, listing, deleting and checking an organization's domains (DESIGN §6).

Every query the widget makes is scoped to the active organization's id, which the controller takes from
the session. The checks (``check_domain`` for "Verify now", ``check_pending_domains`` on a schedule) run in
background jobs (jobs.py) and re-read rows by id, so they are idempotent: every write is
conditional on the domain still being pending.

One owner per domain: ``domain.verified_domain`` carries a unique index and is set in the same UPDATE that
marks a domain verified. Whoever's UPDATE commits first owns the domain; the other one hits the index and
its claim fails. When a domain is verified, the other organizations' pending claims to it fail too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from piccolo.engine.sqlite import SQLiteEngine

from portal.auth import accounts
from portal.core import clock, db, domains
from portal.core.domains import normalize_domain
from portal.core.errors import InvalidInput
from portal.core.settings import Settings
from portal.core.tables import AuditEvent, Domain
from portal.jobs import JobQueue
from portal.web.forms import FormErrors
from portal.webhooks import events as webhook_events
from widgets.domains import verification
from widgets.domains.schemas import AddDomainForm, CheckReport, CheckRequest, DomainView
from widgets.domains.verification import Lookup

log = logging.getLogger("widgets.domains")

#: Domains one organization may hold: each pending one costs a DNS query per check interval.
MAX_DOMAINS = 100
#: Longest input the form looks at (a domain name has at most 253 characters; Unicode forms are longer).
MAX_INPUT = 1000
#: Pending domains read per query, and check results written per transaction, by the scheduled check.
BATCH_SIZE = 500
#: DNS lookups in flight at once during the scheduled check.
CONCURRENCY = 100
#: A "Verify now" that has not reported after this long is shown as waiting for a worker.
STALLED_AFTER = timedelta(minutes=5)

TAKEN = "This domain is verified by another organization. A domain can be verified by one organization only."
CHECK_COLUMNS = (
    Domain.id,
    Domain.organization,
    Domain.domain,
    Domain.status,
    Domain.verification_token,
    Domain.pending_since,
    Domain.created_at,
)


class Refused(Exception):
    """An action that cannot be done to this domain now; the message says why."""


def describe_duration(seconds: int) -> str:
    """``72 hours``, ``90 minutes``, ``2 weeks``: how the window is named in reasons and on the page."""
    for unit, name in ((7 * 86400, "week"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds % unit == 0 and (unit != 7 * 86400 or seconds >= 2 * unit):
            count = seconds // unit
            return f"{count} {name}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"  # pragma: no cover - the loop ends at unit 1


def expired_reason(settings: Settings) -> str:
    """Why a domain failed when its window closed."""
    window = describe_duration(settings.domain_verification_window)
    return f"Not verified within {window}: the TXT record was not found in time."


def display_name(domain: str) -> str:
    """The Unicode form of an IDNA name (``xn--bcher-kva.example`` → ``bücher.example``); the same rule as
    Organization settings uses."""
    return domains.display_domain(domain)


def _view(row: dict[str, Any], settings: Settings) -> DomainView:
    pending = row["status"] == "pending"
    since = row["pending_since"] or row["created_at"]
    requested, checked = row["check_requested_at"], row["last_checked_at"]
    waiting = pending and requested is not None and (checked is None or checked < requested)
    # A check that has not reported after a few minutes is waiting for a worker (or its job failed): the
    # page stops saying "Checking..." and says so instead.
    stalled = waiting and clock.utcnow() - requested > STALLED_AFTER
    return DomainView(
        id=row["id"],
        domain=row["domain"],
        display_name=display_name(row["domain"]),
        status=row["status"],
        record_name=verification.record_name(row["domain"]),
        record_value=verification.record_value(row["verification_token"]),
        reason=None if row["status"] == "verified" else row["failure_reason"],
        created_at=row["created_at"],
        pending_since=since if pending else None,
        verify_by=since + timedelta(seconds=settings.domain_verification_window) if pending else None,
        last_checked_at=checked,
        check_requested_at=requested,
        check_queued=waiting and not stalled,
        check_stalled=stalled,
        verified_at=row["verified_at"],
    )


async def list_domains(settings: Settings, organization_id: str) -> list[DomainView]:
    """The organization's domains, by name."""
    rows = (
        await Domain.select()
        .where(Domain.organization == organization_id)  # tenant check
        .order_by(Domain.domain)
    )
    return [_view(row, settings) for row in rows]


async def _own_row(organization_id: str, domain_id: str) -> dict[str, Any] | None:
    row: dict[str, Any] | None = (
        await Domain.select()
        # tenant check: another organization's domain id is as good as unknown (404).
        .where((Domain.id == domain_id) & (Domain.organization == organization_id))
        .first()
    )
    return row


async def get_domain(settings: Settings, organization_id: str, domain_id: str) -> DomainView | None:
    """One of the organization's domains; None if unknown or another organization's."""
    row = await _own_row(organization_id, domain_id)
    return None if row is None else _view(row, settings)


def clean_domain(raw: str) -> str:
    """The normalized domain from the form; :class:`FormErrors` with the reason it cannot be added."""
    if len(raw) > MAX_INPUT:
        raise FormErrors({"domain": "Enter a domain name of at most 253 characters."})
    try:
        return normalize_domain(raw, "domain")
    except InvalidInput as exc:
        raise FormErrors({"domain": exc.message}) from None


async def add_domain(
    settings: Settings, organization_id: str, form: AddDomainForm, *, actor_id: str, ip: str
) -> DomainView:
    """Add a pending domain with a fresh token; audit ``domain.added``. Call inside :func:`write_transaction`."""
    name = clean_domain(form.domain)
    if await Domain.exists().where((Domain.organization == organization_id) & (Domain.domain == name)):
        raise FormErrors({"domain": f"{name} is already in your list."})
    # Saying so reveals an owner that DNS already shows to anyone (the published TXT record).
    if await Domain.exists().where(Domain.verified_domain == name):
        raise FormErrors({"domain": f"{name}: {TAKEN}"}, status_code=409)
    if await Domain.count().where(Domain.organization == organization_id) >= MAX_DOMAINS:
        raise FormErrors({"domain": f"An organization can have at most {MAX_DOMAINS} domains."})
    now = clock.utcnow()
    domain = Domain(
        organization=organization_id,
        domain=name,
        status="pending",
        verification_token=verification.new_token(),
        pending_since=now,
        created_at=now,
    )
    await domain.save()
    await accounts.audit(
        "domain.added",
        organization_id=organization_id,
        actor_id=actor_id,
        target=domain.id,
        details={"domain": name},
        ip=ip,
    )
    row = await _own_row(organization_id, domain.id)
    assert row is not None
    return _view(row, settings)


async def request_check(organization_id: str, domain_id: str, *, actor_id: str, ip: str) -> CheckRequest:
    """Record a "Verify now" (pending) or "Try again" (failed: a new window starts); audit
    ``domain.verify_requested``. LookupError if not the organization's; :class:`Refused` if verified or
    owned by another organization. Call inside :func:`write_transaction`, queue the job after commit."""
    row = await _own_row(organization_id, domain_id)
    if row is None:
        raise LookupError(domain_id)
    if row["status"] == "verified":
        raise Refused(f"{display_name(row['domain'])} is already verified.")
    now = clock.utcnow()
    restarted = row["status"] == "failed"
    if restarted:
        if await Domain.exists().where(Domain.verified_domain == row["domain"]):
            raise Refused(f"{display_name(row['domain'])}: {TAKEN}")
        await Domain.update(
            {
                Domain.status: "pending",
                Domain.pending_since: now,
                Domain.failure_reason: None,
                Domain.check_requested_at: now,
            }
        ).where((Domain.id == domain_id) & (Domain.status == "failed"))
    else:
        await Domain.update({Domain.check_requested_at: now}).where(
            (Domain.id == domain_id) & (Domain.status == "pending")
        )
    await accounts.audit(
        "domain.verify_requested",
        organization_id=organization_id,
        actor_id=actor_id,
        target=domain_id,
        details={"domain": row["domain"], "restarted": restarted},
        ip=ip,
    )
    return CheckRequest(
        domain_id=domain_id,
        domain=row["domain"],
        restarted=restarted,
        previous_requested_at=row["check_requested_at"],
    )


async def queue_check(jobs: JobQueue, request: CheckRequest) -> bool:
    """Hand a recorded request to the job queue (after its transaction committed: an in-process job starts
    at once and must see the row). False if a check of this domain is already queued. If the queue cannot
    be reached, the request is withdrawn (the page must not wait for a check that never comes) and the
    error raised."""
    try:
        return await jobs.enqueue("verify_domain", request.domain_id, job_id=request.job_id)
    except Exception:
        await Domain.update({Domain.check_requested_at: request.previous_requested_at}).where(
            Domain.id == request.domain_id
        )
        raise


async def delete_domain(organization_id: str, domain_id: str, *, actor_id: str, ip: str) -> str:
    """Delete one of the organization's domains (a verified one becomes free to verify again); audit
    ``domain.deleted``. Returns its name; LookupError if not the organization's."""
    row = await _own_row(organization_id, domain_id)
    if row is None:
        raise LookupError(domain_id)
    await Domain.delete().where((Domain.id == domain_id) & (Domain.organization == organization_id))
    await accounts.audit(
        "domain.deleted",
        organization_id=organization_id,
        actor_id=actor_id,
        target=domain_id,
        details={"domain": row["domain"], "status": row["status"]},
        ip=ip,
    )
    return str(row["domain"])


# --- checks (run by the jobs in jobs.py) ------------------------------------------------------


def _overdue(row: dict[str, Any], settings: Settings, now: datetime) -> bool:
    since = row["pending_since"] or row["created_at"]
    return bool(since + timedelta(seconds=settings.domain_verification_window) <= now)


async def check_domain(settings: Settings, domain_id: str) -> Lookup | None:
    """The ``verify_domain`` job: look the domain's record up now and record the outcome.

    None (and nothing done) when the domain is gone or no longer pending; a domain past its window fails
    instead of being checked.
    """
    row = await Domain.select(*CHECK_COLUMNS).where(Domain.id == domain_id).first()
    if row is None or row["status"] != "pending":
        return None
    now = clock.utcnow()
    if _overdue(row, settings, now):
        async with db.write_transaction():
            await _fail(
                [row["id"]], expired_reason(settings), now, CheckReport(), count_as="expired", checked=False
            )
        return None
    result = await verification.lookup(
        verification.make_resolver(settings), row["domain"], row["verification_token"]
    )
    await record_results([(row, result)], CheckReport())
    return result


async def fail_overdue(settings: Settings, report: CheckReport, *, batch_size: int = BATCH_SIZE) -> None:
    """Fail every domain still pending when its window closed, a batch per transaction; audit each."""
    reason = expired_reason(settings)
    while True:
        now = clock.utcnow()
        cutoff = now - timedelta(seconds=settings.domain_verification_window)
        async with db.write_transaction():
            rows = (
                await Domain.select(Domain.id)
                .where((Domain.status == "pending") & (Domain.pending_since <= cutoff))
                .limit(batch_size)
            )
            await _fail([r["id"] for r in rows], reason, now, report, count_as="expired", checked=False)
        if len(rows) < batch_size:
            return


async def fail_claims_of_verified_domains(report: CheckReport) -> None:
    """Fail the pending claims to domains another organization has verified (issue 15). They are failed in a
    second transaction right after the verification; a check killed between the two would otherwise leave
    them pending until their window closed, with the wrong reason."""
    async with db.write_transaction():
        claims = await _lock_rows(
            [],
            where=(Domain.status == "pending")
            & Domain.domain.is_in(
                Domain.select(Domain.verified_domain).where(Domain.verified_domain.is_not_null())
            ),
        )
        await _fail(claims, TAKEN, clock.utcnow(), report, count_as="claims_failed", checked=False)


async def check_pending_domains(
    settings: Settings, *, batch_size: int = BATCH_SIZE, concurrency: int = CONCURRENCY
) -> CheckReport:
    """The scheduled check: fail the domains past their window, then look up every other pending domain.

    Pending domains are read in keyset pages of ``batch_size``; at most ``concurrency`` lookups are in
    flight; results are written ``batch_size`` at a time, each batch in one transaction. A slow (timing
    out) lookup holds up only its own slot, not a whole batch.
    """
    report = CheckReport()
    await fail_overdue(settings, report, batch_size=batch_size)
    await fail_claims_of_verified_domains(report)
    resolver = verification.make_resolver(settings)
    todo: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=batch_size)
    done: asyncio.Queue[tuple[dict[str, Any], Lookup] | None] = asyncio.Queue()

    async def scan() -> None:
        after = ""
        while True:
            rows = (
                await Domain.select(*CHECK_COLUMNS)
                .where((Domain.status == "pending") & (Domain.id > after))
                .order_by(Domain.id)
                .limit(batch_size)
            )
            for row in rows:
                await todo.put(row)
            if len(rows) < batch_size:
                break
            after = rows[-1]["id"]
        for _ in range(concurrency):
            await todo.put(None)

    async def look_up() -> None:
        while (row := await todo.get()) is not None:
            result = await verification.lookup(resolver, row["domain"], row["verification_token"])
            await done.put((row, result))
        await done.put(None)

    # The tasks start before any transaction is open: a task copies its creator's context, and with it
    # piccolo's current transaction.
    async with asyncio.TaskGroup() as group:
        group.create_task(scan())
        for _ in range(concurrency):
            group.create_task(look_up())
        finished, buffer = 0, []
        while finished < concurrency:
            item = await done.get()
            if item is None:
                finished += 1
                continue
            buffer.append(item)
            if len(buffer) >= batch_size:
                await record_results(buffer, report)
                buffer = []
        if buffer:
            await record_results(buffer, report)
    return report


async def record_results(results: Sequence[tuple[dict[str, Any], Lookup]], report: CheckReport) -> None:
    """Write a batch of lookups: verify the found ones (first claim wins), note what the others found, then
    fail the other organizations' pending claims to the domains verified now. Only still-pending rows change.

    Two transactions: the batch's own rows, then the claims. Each locks the rows it changes first, in id
    order (PostgreSQL; SQLite's write lock serializes writers anyway), so that concurrent checks can wait
    for each other (the unique index makes a second verifier of a domain wait for the first) but never
    deadlock: no transaction asks for another row after it may have made someone wait.
    """
    now = clock.utcnow()
    report.checked += len(results)
    found = sorted(
        (row for row, result in results if result.verified), key=lambda r: (r["created_at"], r["id"])
    )
    async with db.write_transaction() as transaction:
        await _lock_rows([row["id"] for row, _result in results])
        verified = await _verify(transaction, found, now, report)
        by_reason: dict[str, list[str]] = defaultdict(list)
        for row, result in results:
            if not result.verified:
                by_reason[result.reason or ""].append(row["id"])
                if result.retry:
                    report.retry += 1
                else:
                    report.not_found += 1
        for reason, ids in by_reason.items():
            await Domain.update({Domain.last_checked_at: now, Domain.failure_reason: reason}).where(
                Domain.id.is_in(ids) & (Domain.status == "pending")
            )
    if verified:
        async with db.write_transaction():
            names = sorted({r["domain"] for r in verified})
            claims = await _lock_rows([], where=Domain.domain.is_in(names) & (Domain.status == "pending"))
            await _fail(claims, TAKEN, now, report, count_as="claims_failed", checked=False)


async def _lock_rows(ids: list[str], *, where: Any = None) -> list[str]:
    """Inside a write transaction: the ids of the rows matching (``ids`` or ``where``), locked in id order
    on PostgreSQL (``SELECT ... FOR UPDATE``)."""
    query = Domain.select(Domain.id).where(where if where is not None else Domain.id.is_in(ids))
    if not isinstance(Domain._meta.db, SQLiteEngine):
        query = query.order_by(Domain.id).lock_rows()
    elif where is None:
        return ids  # SQLite: BEGIN IMMEDIATE holds the whole database already
    return [row["id"] for row in await query]


async def _verify(
    transaction: Any, found: list[dict[str, Any]], now: datetime, report: CheckReport
) -> list[dict[str, Any]]:
    """Mark ``found`` verified; rows whose domain someone else verified first fail. Returns the winners."""
    if not found:
        return []
    # Usually nobody else owns any of them: one statement. If the unique index refuses, go row by row
    # (in order of claim) so that exactly the rows that lost the race fail.
    savepoint = await transaction.savepoint()
    try:
        won = await _mark_verified([r["id"] for r in found], now)
    except Exception as exc:
        if not db.is_unique_violation(exc):
            raise
        await savepoint.rollback_to()
    else:
        await savepoint.release()
        await _audit_rows(won, "domain.verified", {})
        report.verified += len(won)
        return won
    won, lost = [], []
    for row in found:
        savepoint = await transaction.savepoint()
        try:
            won.extend(await _mark_verified([row["id"]], now))
        except Exception as exc:
            if not db.is_unique_violation(exc):
                raise
            await savepoint.rollback_to()
            lost.append(row["id"])
        else:
            await savepoint.release()
    await _audit_rows(won, "domain.verified", {})
    report.verified += len(won)
    await _fail(lost, TAKEN, now, report, count_as="lost", checked=True)
    return won


async def _mark_verified(ids: list[str], now: datetime) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await (
        Domain.update(
            {
                Domain.status: "verified",
                # The one-owner rule: unique, and set in the same statement that marks the row verified.
                Domain.verified_domain: Domain.domain,
                Domain.verified_at: now,
                Domain.last_checked_at: now,
                Domain.failure_reason: None,
            }
        )
        .where(Domain.id.is_in(ids) & (Domain.status == "pending"))
        .returning(Domain.id, Domain.organization, Domain.domain)
    )
    return rows


async def _fail(
    ids: list[str], reason: str, now: datetime, report: CheckReport, *, count_as: str, checked: bool
) -> None:
    """Fail the still-pending rows among ``ids`` with ``reason``; audit ``domain.failed`` for each."""
    if not ids:
        return
    values: dict[Any, Any] = {Domain.status: "failed", Domain.failure_reason: reason}
    if checked:
        values[Domain.last_checked_at] = now
    rows = await (
        Domain.update(values)
        .where(Domain.id.is_in(ids) & (Domain.status == "pending"))
        .returning(Domain.id, Domain.organization, Domain.domain)
    )
    await _audit_rows(rows, "domain.failed", {"reason": reason})
    setattr(report, count_as, getattr(report, count_as) + len(rows))


async def _audit_rows(rows: Iterable[dict[str, Any]], action: str, details: dict[str, Any]) -> None:
    """One audit event per row, by the system (no actor), in one INSERT."""
    events = [
        AuditEvent(
            organization_id=row["organization"],
            actor_id=None,
            action=action,
            target=row["id"],
            details={"domain": row["domain"], **details},
            at=clock.utcnow(),
        )
        for row in rows
    ]
    if events:
        await AuditEvent.insert(*events)
        # issue 11: the webhook events, in the same transaction (these changes bypass accounts.audit).
        await webhook_events.emit_many(
            webhook_events.Event(
                action,
                row["organization"],
                {
                    "organization_id": row["organization"],
                    "actor_id": None,
                    "target": row["id"],
                    "domain": row["domain"],
                    **details,
                },
            )
            for row in rows
        )

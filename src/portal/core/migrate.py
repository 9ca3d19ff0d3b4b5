"""Apply the portal's piccolo migrations to the bound engine."""

from __future__ import annotations

import contextlib
import io

from piccolo.apps.migrations.commands.forwards import run_forwards


class MigrationError(Exception):
    """A migration failed; the message is piccolo's."""


async def migrate() -> str:
    """Run every pending migration; returns piccolo's report. Idempotent."""
    report = io.StringIO()
    # piccolo prints progress; keep it for the caller instead of writing to our stdout.
    with contextlib.redirect_stdout(report):
        result = await run_forwards("portal")
    if not result.success:
        raise MigrationError(result.message or report.getvalue())
    return report.getvalue()


def summarize(report: str) -> str:
    """One line for people instead of piccolo's report (whose fresh-database counts read "11 already
    complete / 11 not yet run"): how many migrations ran, or that there was nothing to do."""
    ran = [
        line.split()[1]
        for line in report.splitlines()
        if "[forwards]" in line and line.strip().startswith("-")
    ]
    if not ran:
        return "The database is up to date: no migrations to run."
    plural = "" if len(ran) == 1 else "s"
    return f"Applied {len(ran)} migration{plural} (last {ran[-1]}); the database is up to date."

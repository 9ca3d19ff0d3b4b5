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

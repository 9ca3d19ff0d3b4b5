"""The batching log handler: every line is written, in order, by the writer thread."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import pytest

from portal.core import logs


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logs.BatchingHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, stream
    log.removeHandler(handler)


def _wait_for(stream: io.StringIO, lines: int) -> list[str]:
    deadline = time.monotonic() + 5
    while stream.getvalue().count("\n") < lines and time.monotonic() < deadline:
        time.sleep(0.01)
    return stream.getvalue().splitlines()


def test_lines_are_written_in_order_without_an_explicit_flush(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    for n in range(100):
        log.info("GET /healthz 200 request_id=%02d", n)
    assert _wait_for(stream, 100) == [f"INFO GET /healthz 200 request_id={n:02d}" for n in range(100)]


def test_a_closed_handler_still_writes(logger: tuple[logging.Logger, io.StringIO]) -> None:
    # uvicorn's logging setup closes the handlers it finds (logging.config's clearing) while the root logger
    # keeps ours: the lines logged afterwards must still come out.
    log, stream = logger
    log.handlers[0].close()
    log.warning("after close")
    assert _wait_for(stream, 1) == ["WARNING after close"]


def test_flush_writes_what_is_pending(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    log.info("one")
    logs.flush()
    assert stream.getvalue() == "INFO one\n"

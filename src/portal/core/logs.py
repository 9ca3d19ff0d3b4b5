"""Log output that costs the request little: lines are formatted where they are logged and written to stderr
in batches by one background thread.

Litestar's default (a ``QueueHandler``) wakes its listener thread for every record, a thread switch and a
round of GIL hand-offs per log line, and the portal logs a line per request. Here a record is formatted and
appended to a deque (no lock that a waiting thread sleeps on); one writer thread per process wakes every
:data:`FLUSH_INTERVAL` seconds, or at once for a warning or worse, and writes whatever is pending in one call.
Pending lines are written at exit too (``atexit``); a process killed with SIGKILL loses at most the last
interval's lines.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import sys
import threading
from typing import TextIO

#: Seconds between writes of the pending lines.
FLUSH_INTERVAL = 0.05

_pending: collections.deque[tuple[TextIO | None, str]] = collections.deque()
_wake = threading.Event()
_write_lock = threading.Lock()
_writer: threading.Thread | None = None


def flush() -> None:
    """Write every pending line now (in the order logged)."""
    with _write_lock:
        lines: dict[int, tuple[TextIO | None, list[str]]] = {}
        while _pending:
            stream, line = _pending.popleft()
            lines.setdefault(id(stream), (stream, []))[1].append(line)
        for stream, batch in lines.values():
            out = stream or sys.stderr
            try:
                out.write("\n".join(batch) + "\n")
                out.flush()
            except (OSError, ValueError):  # closed or gone: nowhere left to write
                pass


def _run() -> None:
    while True:
        _wake.wait(FLUSH_INTERVAL)
        _wake.clear()
        flush()


def _start_writer() -> None:
    global _writer
    with _write_lock:
        if _writer is None or not _writer.is_alive():
            _writer = threading.Thread(target=_run, name="portal-log-writer", daemon=True)
            _writer.start()


def _after_fork() -> None:
    global _writer
    _writer = None  # the thread did not survive the fork; the next record starts one


os.register_at_fork(after_in_child=_after_fork)
atexit.register(flush)


class BatchingHandler(logging.Handler):
    """Formats each record on the caller's thread; the process's writer thread writes the lines in batches.
    ``stream`` defaults to the ``sys.stderr`` of the moment of writing."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _pending.append((self.stream, self.format(record)))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)
            return
        if _writer is None:
            _start_writer()
        if record.levelno >= logging.WARNING:
            _wake.set()

    def flush(self) -> None:
        flush()


# --- One log format for every process the ``portal`` command starts (serve, worker); issue 16.

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

#: Libraries whose INFO lines are noise for an operator: Casbin prints its whole model each time a policy
#: loads (every SIGHUP); uvicorn's access log is replaced by the portal's own request line; piccolo announces
#: the SQLite version each time an engine starts.
QUIET = {"casbin": logging.WARNING, "uvicorn.access": logging.WARNING, "piccolo.engine.base": logging.WARNING}


def configure(level: str) -> None:
    """Root logging at ``level`` with :data:`FORMAT` through a :class:`BatchingHandler`; uvicorn's and arq's
    loggers write through it."""
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True, handlers=[BatchingHandler()])
    for name, floor in QUIET.items():
        logging.getLogger(name).setLevel(max(floor, logging.getLevelName(level.upper())))
    for name in ("uvicorn", "uvicorn.error", "arq"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

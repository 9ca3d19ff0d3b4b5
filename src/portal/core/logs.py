"""One log format for every process the ``portal`` command starts (serve, worker)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

#: Libraries whose INFO lines are noise for an operator: Casbin prints its whole model each time a policy
#: loads (every SIGHUP); uvicorn's access log is replaced by the portal's own request line.
QUIET = {"casbin": logging.WARNING, "uvicorn.access": logging.WARNING}


def configure(level: str) -> None:
    """Root logging at ``level`` with :data:`FORMAT`; uvicorn's and arq's loggers write through it."""
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    for name, floor in QUIET.items():
        logging.getLogger(name).setLevel(max(floor, logging.getLevelName(level.upper())))
    for name in ("uvicorn", "uvicorn.error", "arq"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

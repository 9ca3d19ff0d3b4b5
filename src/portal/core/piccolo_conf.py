"""Piccolo's configuration module. ``DB`` is whatever engine :func:`portal.db.bind` installed.

piccolo looks engines up through this module (its migration runner does); the portal configures it at run
time from Settings, never from the environment at import.
"""

from __future__ import annotations

from typing import Any

from piccolo.conf.apps import AppRegistry

APP_REGISTRY = AppRegistry(apps=["portal.core.piccolo_app"])


def __getattr__(name: str) -> Any:
    if name == "DB":
        from portal.core import db

        return db.current_engine()
    raise AttributeError(name)

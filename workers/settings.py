"""arq's entry point: ``arq workers.settings.WorkerSettings`` runs every registered job and cron job.

``portal worker`` (the Procfile's ``worker`` line) runs the same worker and is the supported entry; this
module exists for deployments that run arq directly. The worker itself is built by ``portal.jobs``: the
dependency runs ``workers -> portal`` only. Settings come from ``PORTAL_*`` variables when arq starts the
worker, never at import.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from portal.core.settings import SettingsError, load_settings
from portal.jobs import worker_options

if TYPE_CHECKING:
    from _collections_abc import dict_items


class _SettingsFromEnvironment(dict[str, Any]):
    """arq's settings for ``arq workers.settings.WorkerSettings``, read from ``PORTAL_*`` when arq asks.

    arq accepts a dict as worker settings and reads it (``items()``) when it builds the worker; the
    environment is read then, not when this module is imported. ``portal worker`` is the supported entry
    (same jobs, plus a clear message when ``PORTAL_REDIS_URL`` is missing); this exists for deployments that
    run arq directly.
    """

    def _load(self) -> None:
        if not self:
            try:
                settings = load_settings(os.environ)
            except SettingsError as exc:
                raise SystemExit(str(exc)) from None
            if not settings.redis_url:
                raise SystemExit("PORTAL_REDIS_URL is not set: the arq worker needs Redis")
            self.update(worker_options(settings))

    def items(self) -> dict_items[str, Any]:
        self._load()
        return super().items()

    def __getitem__(self, key: str) -> Any:
        self._load()
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._load()
        return super().get(key, default)


#: For ``arq workers.settings.WorkerSettings`` (the environment is read when arq starts the worker).
WorkerSettings = _SettingsFromEnvironment()

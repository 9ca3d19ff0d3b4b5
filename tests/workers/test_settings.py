"""``arq workers.settings.WorkerSettings``: arq's own entry point reads the settings when arq asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.settings import _SettingsFromEnvironment


def test_worker_settings_for_arq_read_the_environment_only_when_arq_asks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from workers import settings as worker_settings_module

    # Importing the module read nothing: the settings are still empty.
    assert isinstance(worker_settings_module.WorkerSettings, dict)
    assert dict.__len__(worker_settings_module.WorkerSettings) == 0
    monkeypatch.setenv("PORTAL_REDIS_URL", "http://wrong")
    lazy = _SettingsFromEnvironment()
    with pytest.raises(SystemExit, match="PORTAL_REDIS_URL: must start with redis://"):
        lazy.items()
    monkeypatch.setenv("PORTAL_REDIS_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setenv("PORTAL_DATA_DIR", str(tmp_path))
    lazy = _SettingsFromEnvironment()
    from arq.worker import get_kwargs

    kwargs = get_kwargs(lazy)  # what `arq workers.settings.WorkerSettings` builds its Worker from
    assert kwargs["redis_settings"].database == 15
    assert "verify_domain" in {f.name for f in kwargs["functions"]}
    assert "cron:check_pending_domains" in {c.name for c in kwargs["cron_jobs"]}
    monkeypatch.delenv("PORTAL_REDIS_URL")
    with pytest.raises(SystemExit, match="PORTAL_REDIS_URL is not set"):
        _SettingsFromEnvironment().items()

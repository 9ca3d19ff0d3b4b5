from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from portal.core.settings import Settings, SettingsError, load_settings


def test_defaults_need_no_environment() -> None:
    settings = load_settings({})
    assert settings.database_url == "sqlite:///./var/portal.sqlite3"
    assert settings.redis_url is None
    assert settings.session_idle_timeout == 86400
    assert not settings.secure


def test_values_are_parsed_from_strings() -> None:
    settings = load_settings(
        {
            "PORTAL_PORT": "9000",
            "PORTAL_SESSION_IDLE_TIMEOUT": "15m",
            "PORTAL_SESSION_ABSOLUTE_TIMEOUT": "2d",
            "PORTAL_INVITATION_TTL": "3600",
            "PORTAL_DNS_NAMESERVERS": "127.0.0.1, 127.0.0.2",
            "PORTAL_DNS_TIMEOUT": "1.5",
            "PORTAL_REDIS_URL": "redis://127.0.0.1:6379/0",
            "PORTAL_BRAND_PRIMARY_COLOR": "#112233",
            "PORTAL_SMTP_URL": "",
        }
    )
    assert settings.port == 9000
    assert settings.session_idle_timeout == 900
    assert settings.session_absolute_timeout == 2 * 86400
    assert settings.invitation_ttl == 3600
    assert settings.dns_nameservers == ["127.0.0.1", "127.0.0.2"]
    assert settings.dns_timeout == 1.5
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.smtp_url is None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PORTAL_PORT", "eighty", "PORTAL_PORT: expected int"),
        ("PORTAL_PORT", "70000", "PORTAL_PORT: expected int <= 65535"),
        ("PORTAL_SESSION_IDLE_TIMEOUT", "soon", "PORTAL_SESSION_IDLE_TIMEOUT: 'soon' is not a duration"),
        ("PORTAL_SESSION_IDLE_TIMEOUT", "0", "PORTAL_SESSION_IDLE_TIMEOUT: expected int >= 1"),
        ("PORTAL_DATABASE_URL", "mysql://db/portal", "PORTAL_DATABASE_URL: must start with sqlite:/// or"),
        ("PORTAL_REDIS_URL", "http://cache", "PORTAL_REDIS_URL: must start with redis://"),
        ("PORTAL_PUBLIC_URL", "portal.example.com", "PORTAL_PUBLIC_URL: must be an absolute http"),
        ("PORTAL_PUBLIC_URL", "https://example.com/portal", "PORTAL_PUBLIC_URL: must be an origin"),
        ("PORTAL_SECRET_KEY", "short", "PORTAL_SECRET_KEY: expected str of length >= 32"),
        ("PORTAL_BRAND_PRIMARY_COLOR", "blue", "PORTAL_BRAND_PRIMARY_COLOR: must be a hex colour"),
        ("PORTAL_DNS_TIMEOUT", "0", "PORTAL_DNS_TIMEOUT: expected float > 0"),
        ("PORTAL_LOG_LEVEL", "loud", "PORTAL_LOG_LEVEL: must be one of"),
        ("PORTAL_SESION_IDLE_TIMEOUT", "5m", "PORTAL_SESION_IDLE_TIMEOUT: is not a known setting"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({variable: value})
    assert str(excinfo.value).startswith(message)
    assert "\n" not in str(excinfo.value)


def test_https_requires_a_secret_key() -> None:
    with pytest.raises(SettingsError, match="PORTAL_SECRET_KEY: must be set"):
        load_settings({"PORTAL_PUBLIC_URL": "https://portal.example.com"})
    settings = load_settings(
        {"PORTAL_PUBLIC_URL": "https://portal.example.com", "PORTAL_SECRET_KEY": "k" * 40}
    )
    assert settings.secure


def test_settings_are_constructed_directly_in_code() -> None:
    settings = Settings(brand_name="Acme Portal", session_idle_timeout=60)
    assert settings.brand_name == "Acme Portal"
    assert settings.origin == "http://localhost:8000"


def test_cli_stops_with_one_line_naming_the_variable(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "portal.cli", "migrate"],
        env={"PORTAL_SESSION_IDLE_TIMEOUT": "forever", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "Error: PORTAL_SESSION_IDLE_TIMEOUT: 'forever' is not a duration (use seconds, or a number with s, m, h or d)"
    ]


# --- issue 16 §1 -----------------------------------------------------------------------------------------


def test_an_idle_timeout_longer_than_the_absolute_one_is_refused() -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({"PORTAL_SESSION_IDLE_TIMEOUT": "8d"})
    assert str(excinfo.value) == (
        "PORTAL_SESSION_IDLE_TIMEOUT: 8d is longer than PORTAL_SESSION_ABSOLUTE_TIMEOUT (7d): every session "
        "would end at the absolute timeout first; make the idle timeout shorter"
    )
    with pytest.raises(SettingsError, match=r"PORTAL_SESSION_IDLE_TIMEOUT: 1d is longer than .* \(12h\)"):
        load_settings({"PORTAL_SESSION_ABSOLUTE_TIMEOUT": "12h"})
    # Equal is fine.
    assert load_settings({"PORTAL_SESSION_IDLE_TIMEOUT": "7d"}).session_idle_timeout == 7 * 86400


def test_the_cli_refuses_it_with_one_line(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "portal.cli", "migrate"],
        env={"PORTAL_SESSION_IDLE_TIMEOUT": "30d", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: PORTAL_SESSION_IDLE_TIMEOUT: 30d is longer than PORTAL_SESSION_ABSOLUTE_TIMEOUT (7d): every "
        "session would end at the absolute timeout first; make the idle timeout shorter"
    )


def test_the_data_dir_holds_the_default_sqlite_file() -> None:
    assert load_settings({"PORTAL_DATA_DIR": "/srv/portal"}).database_url == (
        "sqlite:////srv/portal/portal.sqlite3"
    )
    assert load_settings({"PORTAL_DATA_DIR": "data/"}).database_url == "sqlite:///data/portal.sqlite3"
    assert Settings(data_dir="/tmp/x").sqlite_path is not None
    assert str(Settings(data_dir="/tmp/x").sqlite_path) == "/tmp/x/portal.sqlite3"
    # An explicit database URL wins.
    explicit = load_settings(
        {"PORTAL_DATA_DIR": "/srv/portal", "PORTAL_DATABASE_URL": "sqlite:///./db.sqlite3"}
    )
    assert explicit.database_url == "sqlite:///./db.sqlite3"
    assert load_settings({"PORTAL_DATABASE_URL": ""}).database_url == "sqlite:///./var/portal.sqlite3"


def test_migrate_creates_the_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "portal.cli", "migrate"],
        env={"PORTAL_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "portal.sqlite3").is_file()
    assert not (tmp_path / "var").exists()


def test_migrate_says_what_it_did_in_one_line(tmp_path: Path) -> None:
    env = {"PORTAL_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "portal.cli", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp_path,
        )

    first = run()
    assert first.returncode == 0
    [line] = first.stdout.splitlines()
    assert line.startswith("Applied ") and line.endswith("; the database is up to date.")
    assert "already complete" not in first.stdout and first.stderr == ""
    second = run()
    assert second.stdout.strip() == "The database is up to date: no migrations to run."

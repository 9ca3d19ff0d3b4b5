"""Settings: one typed Struct, loaded once from ``PORTAL_*`` environment variables.

Nothing reads the environment at import time: the CLI calls :func:`load_settings` and passes the result
to ``create_app(settings)``; tests construct ``Settings(...)`` directly.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_type_hints
from urllib.parse import urlsplit

import msgspec

PREFIX = "PORTAL_"

#: Durations are whole seconds; the environment may write them as ``90``, ``90s``, ``15m``, ``12h`` or ``7d``.
Seconds = Annotated[int, msgspec.Meta(ge=1, extra={"duration": True})]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
# --- issue 14: links
#: Names that always mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


def _is_origin(value: str) -> bool:
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path or parts.query:
        return False
    if parts.fragment or parts.username or parts.password or "*" in value:
        return False
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_NAMES:
        return False
    return port is None or 0 < port < 65536


# --- end issue 14: links


class SettingsError(Exception):
    """An invalid setting; the message names the environment variable and what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.variable = PREFIX + field.upper()
        self.problem = problem
        super().__init__(f"{self.variable}: {problem}")


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Everything the portal can be configured with. Field ``x`` is read from ``PORTAL_X``."""

    #: ``sqlite:///relative/or/absolute/path`` or ``postgresql://user@host:port/db``. Unset (empty): the
    #: embedded SQLite file ``<data_dir>/portal.sqlite3`` (issue 16).
    database_url: str = ""
    #: ``redis://host:port/db``. Unset: background jobs run inside the web process.
    redis_url: str | None = None
    #: Signs CSRF tokens. Unset: a random key is generated once and kept in ``<data_dir>/secret_key``.
    secret_key: Annotated[str, msgspec.Meta(min_length=32)] = ""
    #: Earlier secret keys (comma-separated): sealed secrets made with them still open, and
    #: ``portal secrets rotate`` re-seals them with the current key.
    previous_secret_keys: list[str] = msgspec.field(default_factory=list)
    #: The URL users reach the portal at; https turns on Secure cookies and HSTS.
    public_url: str = "http://localhost:8000"
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    #: Where SQLite, the dev mail outbox and the generated secret key live.
    data_dir: str = "./var"
    #: The Casbin model and role → permission files.
    policy_dir: str = "./policies"
    log_level: str = "INFO"
    #: Once started, move the objects built at start-up out of the garbage collector's reach (``gc.freeze``):
    #: full collections then walk only what requests allocate, which took the members page's p99 under load
    #: from about 130 to 55 ms (bench/members.py, one worker). Off in the test suite, which builds many apps.
    gc_freeze: bool = True

    brand_name: Annotated[str, msgspec.Meta(min_length=1, max_length=80)] = "Portal"
    brand_logo_url: str | None = None
    brand_favicon_url: str | None = None
    brand_primary_color: str = "#3b4cca"

    session_absolute_timeout: Seconds = 7 * 86400
    session_idle_timeout: Seconds = 86400
    #: How often the background sweep revokes expired sessions in bulk (session policy).
    session_sweep_interval: Seconds = 60
    invitation_ttl: Seconds = 7 * 86400

    #: ``smtp://user:password@host:port`` or ``smtps://...``. Unset: mail is written to ``<data_dir>/outbox``.
    smtp_url: str | None = None
    mail_from: str = "Portal <no-reply@localhost>"

    #: Nameservers for DNS verification (empty: the system resolver's).
    dns_nameservers: list[str] = msgspec.field(default_factory=list)
    dns_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 53
    dns_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    domain_verification_window: Seconds = 72 * 3600
    domain_check_interval: Seconds = 15 * 60
    # --- issue 12: sso
    #: Allowed clock difference with an IdP when checking assertion and ID token times.
    sso_clock_skew: Seconds = 120
    #: How often IdP metadata given by URL is fetched again.
    sso_metadata_refresh_interval: Seconds = 12 * 3600
    #: Let metadata URLs and OIDC issuers point at private or loopback addresses (tests, labs).
    sso_allow_private_addresses: bool = False
    #: A directory whose ``sso/<key>.md`` and ``scim/<key>.md`` files override or add to the widgets' setup guides.
    guides_dir: str | None = None
    # --- end issue 12: sso

    # --- issue 10: oidc
    #: Lifetime of the access tokens (JWT) the OpenID Provider issues.
    oidc_access_token_ttl: Seconds = 5 * 60
    #: Lifetime of ID tokens.
    oidc_id_token_ttl: Seconds = 60 * 60
    #: Longest life of a refresh token (it also dies with the portal session).
    oidc_refresh_token_ttl: Seconds = 30 * 86400
    #: How often back-channel logout tokens are sent (and failed deliveries retried).
    oidc_logout_interval: Seconds = 5
    # --- end issue 10: oidc
    # --- issue 11: api
    #: Requests one API key may make per ``api_rate_window`` (429 with ``Retry-After`` above).
    api_rate_limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 600
    #: The rate limit's window.
    api_rate_window: Seconds = 60
    # --- end issue 11: api

    # --- issue 15: serving
    #: Peers (IPs or CIDRs) whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` ``portal serve --proxy-headers``
    #: believes; a request from any other peer keeps its own address, whatever it sends.
    trusted_proxies: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1", "::1"])
    #: On SIGTERM, how long requests in flight may take to finish before they are cut.
    shutdown_timeout: Seconds = 30
    # --- end issue 15: serving

    # --- issue 11: webhooks
    #: Let webhook endpoint URLs point at private or loopback addresses, and use http:// (tests, labs).
    webhook_allow_private_addresses: bool = False
    #: How often the worker claims webhook deliveries that are due (retries, and any a process left behind).
    webhook_dispatch_interval: Seconds = 5
    #: How long one webhook request may take before it counts as failed.
    webhook_timeout: Seconds = 10
    # --- end issue 11: webhooks

    # --- issue 13: scim
    #: How long a SCIM directory's previous token keeps working after a rotation.
    scim_token_overlap: Seconds = 24 * 3600
    #: Requests per second one SCIM directory may make (IdPs push in bursts; over it: 429 with Retry-After).
    scim_rate_limit: Annotated[int, msgspec.Meta(ge=1)] = 50
    #: Largest ``count`` one page of a SCIM list returns (``ServiceProviderConfig`` says so too).
    scim_max_page_size: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 200
    # --- end issue 13: scim

    # --- issue 14: links
    #: Longest life of a session opened by a setup link (it cannot be extended).
    admin_portal_session_ttl: Seconds = 60 * 60
    #: How long a new setup link can be opened, unless ``--ttl`` (or the API) says otherwise.
    admin_portal_link_ttl: Seconds = 15 * 60
    #: Origins (``https://app.example.com``) allowed to frame the setup-link pages; empty: nobody.
    admin_portal_frame_ancestors: list[str] = msgspec.field(default_factory=list)
    #: Host names besides the public URL's that requests may be addressed to (comma-separated).
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    #: Largest organization logo upload, in bytes.
    brand_logo_max_bytes: Annotated[int, msgspec.Meta(ge=1024, le=5 * 1024 * 1024)] = 256 * 1024
    # --- end issue 14: links

    def __post_init__(self) -> None:
        # --- issue 16: newuser
        if not self.database_url:
            # The data directory holds the default SQLite file, as the settings table says.
            default = f"sqlite:///{self.data_dir.rstrip('/')}/portal.sqlite3"
            msgspec.structs.force_setattr(self, "database_url", default)
        if self.session_idle_timeout > self.session_absolute_timeout:
            raise SettingsError(
                "session_idle_timeout",
                f"{_describe(self.session_idle_timeout)} is longer than PORTAL_SESSION_ABSOLUTE_TIMEOUT "
                f"({_describe(self.session_absolute_timeout)}): every session would end at the absolute "
                "timeout first; make the idle timeout shorter",
            )
        # --- end issue 16: newuser
        scheme = urlsplit(self.database_url).scheme
        if scheme not in {"sqlite", "postgres", "postgresql"}:
            raise SettingsError("database_url", "must start with sqlite:/// or postgresql://")
        if self.redis_url is not None and urlsplit(self.redis_url).scheme not in {"redis", "rediss"}:
            raise SettingsError("redis_url", "must start with redis:// or rediss://")
        public = urlsplit(self.public_url)
        if public.scheme not in {"http", "https"} or not public.hostname:
            raise SettingsError("public_url", "must be an absolute http:// or https:// URL")
        if public.path not in {"", "/"} or public.query or public.fragment:
            raise SettingsError(
                "public_url", "must be an origin without a path (the portal serves /ui/ itself)"
            )
        if not _COLOUR.match(self.brand_primary_color):
            raise SettingsError("brand_primary_color", "must be a hex colour such as #3b4cca")
        if self.smtp_url is not None and urlsplit(self.smtp_url).scheme not in {"smtp", "smtps"}:
            raise SettingsError("smtp_url", "must start with smtp:// or smtps://")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError("log_level", "must be one of DEBUG, INFO, WARNING, ERROR")
        if self.public_url.startswith("https://") and not self.secret_key:
            raise SettingsError("secret_key", "must be set (32+ characters) when the public URL is https")
        # --- domains widget: nameservers are addresses (dnspython would only fail at the first check).
        for address in self.dns_nameservers:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise SettingsError("dns_nameservers", f"{address!r} is not an IP address") from None
        # --- end domains widget
        # --- issue 15: serving
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise SettingsError(
                    "trusted_proxies", f"{network!r} is not an IP address or network (CIDR)"
                ) from None
        # --- end issue 15: serving
        # --- issue 14: links
        for origin in self.admin_portal_frame_ancestors:
            if not _is_origin(origin):
                raise SettingsError(
                    "admin_portal_frame_ancestors",
                    f"{origin!r} is not an origin such as https://app.example.com (scheme, host, optional port;"
                    " http only for loopback)",
                )
        public_host = (urlsplit(self.public_url).hostname or "").lower()
        if self.admin_portal_frame_ancestors and not (self.secure or public_host in LOOPBACK_NAMES):
            raise SettingsError(
                "admin_portal_frame_ancestors",
                "needs an https PORTAL_PUBLIC_URL: browsers keep cookies in a third-party frame only when they"
                " are Secure (loopback development URLs aside)",
            )
        for name in self.allowed_hosts:
            if not _HOST_NAME.match(name):
                raise SettingsError(
                    "allowed_hosts", f"{name!r} is not a host name such as portal.example.com"
                )
        # --- end issue 14: links

    @property
    def secure(self) -> bool:
        """True when the portal is served over https (Secure cookies, HSTS, ``__Host-`` prefix)."""
        return self.public_url.startswith("https://")

    @property
    def origin(self) -> str:
        """The public origin without a trailing slash."""
        return self.public_url.rstrip("/")

    # --- issue 14: links
    @property
    def allowed_host_names(self) -> frozenset[str]:
        """Host names (lowercase, no port) requests may name: the public URL's, ``PORTAL_ALLOWED_HOSTS``, and the
        loopback names when the public URL is itself on loopback (development and tests)."""
        public = (urlsplit(self.public_url).hostname or "").lower()
        names = {public, *(name.lower() for name in self.allowed_hosts)}
        if public in LOOPBACK_NAMES:
            names |= LOOPBACK_NAMES
        return frozenset(names)

    @property
    def loopback(self) -> bool:
        """True when the public URL is on this machine (browsers treat such origins as secure contexts)."""
        return (urlsplit(self.public_url).hostname or "").lower() in LOOPBACK_NAMES

    # --- end issue 14: links

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file for a ``sqlite:///`` database URL, else None."""
        if not self.database_url.startswith("sqlite:"):
            return None
        return Path(self.database_url.removeprefix("sqlite:").removeprefix("///").removeprefix("//"))


def _describe(seconds: int) -> str:
    """A duration the way the environment writes it: ``7d``, ``12h``, ``15m`` or ``90s``."""
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def parse_duration(raw: str) -> int | None:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d`` → seconds; None when it is not a duration (issue 14: CLI ``--ttl``)."""
    match = _DURATION.match(raw)
    return None if match is None else int(match.group(1)) * _UNITS[match.group(2).lower()]


def _parse(field: str, annotation: Any, raw: str) -> Any:
    """Turn one environment string into the field's type; duration and list fields have their own syntax."""
    extra = getattr(annotation, "__metadata__", ())
    if any(getattr(m, "extra", None) == {"duration": True} for m in extra):
        match = _DURATION.match(raw)
        if not match:
            raise SettingsError(
                field, f"{raw!r} is not a duration (use seconds, or a number with s, m, h or d)"
            )
        return int(match.group(1)) * _UNITS[match.group(2).lower()]
    if field in _LISTS:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if raw == "" and field in _OPTIONAL:
        return None
    return raw


_OPTIONAL = {"redis_url", "brand_logo_url", "brand_favicon_url", "smtp_url", "guides_dir"}
#: Comma-separated list settings.
_LISTS = {
    "dns_nameservers",
    "previous_secret_keys",
    "trusted_proxies",
    "admin_portal_frame_ancestors",
    "allowed_hosts",
}


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from ``PORTAL_*`` variables; raise :class:`SettingsError` naming the bad variable."""
    hints = msgspec.structs.fields(Settings)
    known = {f.name for f in hints}
    for name in environ:
        # A typo in a variable name must not silently fall back to a default. PORTAL_TEST_* and
        # PORTAL_BENCH_* belong to the test suite and benchmarks.
        if (
            name.startswith(PREFIX)
            and name[len(PREFIX) :].lower() not in known
            and not name.startswith(("PORTAL_TEST_", "PORTAL_BENCH_"))
        ):
            raise SettingsError(name[len(PREFIX) :].lower(), "is not a known setting")
    annotations = get_type_hints(Settings, include_extras=True)
    values: dict[str, Any] = {}
    for f in hints:
        raw = environ.get(PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _parse(f.name, annotations[f.name], raw)
    # issue 16: an unset public URL follows the port (mails, `portal demo` and passkeys then name the
    # address the portal really answers on).
    if "public_url" not in values and "port" in values:
        values["public_url"] = f"http://localhost:{values['port']}"
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field_match = re.search(r"at `\$\.(\w+)", message)
        field = field_match.group(1) if field_match else "settings"
        problem = message.split(" - at ")[0]
        problem = problem.replace("`", "").replace("Expected", "expected")
        raise SettingsError(field, problem) from None


def ensure_secret_key(settings: Settings) -> Settings:
    """Return settings with a secret key: the configured one, else one generated once into the data dir."""
    if settings.secret_key:
        return settings
    path = Path(settings.data_dir) / "secret_key"
    if path.exists():
        key = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        path.write_text(key + "\n")
        path.chmod(0o600)
    return msgspec.structs.replace(settings, secret_key=key)

"""``portal serve``: uvicorn with uvloop and httptools, in one process or ``--workers N``.

- The listening socket is bound here, once, before anything starts: a port already in use is one plain
  message (:class:`PortInUse`), not a traceback from inside uvicorn.
- Each process builds its app from the environment (:func:`app_from_environment`), so the command line's
  ``--host``/``--port`` travel to worker processes as ``PORTAL_HOST``/``PORTAL_PORT``.
- SIGTERM: the socket is closed (new connections are refused), requests in flight finish, keep-alive
  connections close after their current response; after ``PORTAL_SHUTDOWN_TIMEOUT`` what is left is cut.
  The process then exits 0.
- SIGHUP re-reads the policy in every process (the supervisor passes it on to each worker).
- ``--proxy-headers``: ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed from
  ``PORTAL_TRUSTED_PROXIES`` peers only (uvicorn's middleware takes the right-most untrusted address), so
  ``request.client`` (audit ip, rate limits) is the real client behind a load balancer and a spoofed header
  from anyone else changes nothing.
- Without Redis the in-process cron jobs run in one process only: the one holding an exclusive lock on
  ``<data dir>/crons.lock`` (taken over within seconds by another process if that one dies).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from litestar import Litestar
from uvicorn.supervisors.multiprocess import Multiprocess

from portal.core.settings import Settings

log = logging.getLogger("portal.serve")

#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_SECONDS = 65
#: Seconds a worker process may take to answer the supervisor's health ping before it is replaced.
WORKER_HEALTHCHECK_SECONDS = 30


class PortInUse(Exception):
    """The port is taken by another program (or another portal)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        super().__init__(
            f"port {port} on {host} is already in use (another program, or a portal already running). "
            f"Choose another with --port {port + 1} or PORTAL_PORT={port + 1}, or stop the other program."
        )


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str
    port: int
    workers: int = 1
    proxy_headers: bool = False


def workers_from(value: int | None, environ: Mapping[str, str]) -> int:
    """``--workers``, else ``WEB_CONCURRENCY`` (the Procfile convention), else 1."""
    if value is not None:
        return value
    raw = environ.get("WEB_CONCURRENCY", "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"WEB_CONCURRENCY: {raw!r} is not a number of processes (1 or more)")
    return int(raw)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound (listen() is called by the event loop's server)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise
    sock.set_inheritable(True)
    return sock


def configure_logging(settings: Settings) -> None:
    from portal.core import logs

    logs.configure(settings.log_level)


def app_from_environment() -> Litestar:
    """The app of one serving process, from ``PORTAL_*`` (uvicorn's factory in every process)."""
    from policy import PolicyEngine
    from portal.core.settings import ensure_secret_key, load_settings
    from portal.jobs import make_queue
    from portal.web.app import create_app, reload_policy

    settings = ensure_secret_key(load_settings(os.environ))
    configure_logging(settings)
    policy = PolicyEngine.from_dir(settings.policy_dir)
    queue = make_queue(settings, cron_lock=Path(settings.data_dir) / "crons.lock")
    app = create_app(settings, policy=policy, jobs=queue)

    async def reload_on_sighup() -> None:
        # `kill -HUP <pid>` re-reads the policy files (in the event loop, between requests); a policy with
        # problems is refused and the one in force stays.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_policy, policy)

    app.on_startup.append(reload_on_sighup)
    return app


def uvicorn_config(settings: Settings, options: ServeOptions) -> uvicorn.Config:
    return uvicorn.Config(
        "portal.web.serving:app_from_environment",
        factory=True,
        host=options.host,
        port=options.port,
        workers=options.workers,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        proxy_headers=options.proxy_headers,
        forwarded_allow_ips=list(settings.trusted_proxies),
        timeout_graceful_shutdown=settings.shutdown_timeout,
        # Longer than the idle timeout of the usual load balancers (60 s): otherwise the portal may close
        # an idle keep-alive connection just as the balancer sends a request on it (a 502 for the user).
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        # The supervisor pings each worker process and replaces one that does not answer in time; under a
        # burst of load uvicorn's 5 s could replace a busy (not hung) worker and cut its requests.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        # uvicorn's own lines (worker processes started, replaced, shutting down) at the portal's level.
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
    )


def run(settings: Settings, options: ServeOptions, sock: socket.socket) -> None:
    """Serve on ``sock`` (from :func:`bind_socket`) until SIGTERM or SIGINT."""
    # Every process reads its settings from the environment: make the command line's choices part of it.
    os.environ["PORTAL_HOST"] = options.host
    os.environ["PORTAL_PORT"] = str(options.port)
    if "PORTAL_PUBLIC_URL" not in os.environ:
        os.environ["PORTAL_PUBLIC_URL"] = settings.public_url
    config = uvicorn_config(settings, options)
    # uvicorn re-raises the stop signal once it has shut down gracefully; with this handler that ends the
    # process with status 0 instead of "killed by SIGTERM".
    signal.signal(signal.SIGTERM, lambda *_: None)
    if options.workers > 1:
        Supervisor(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])


class Supervisor(Multiprocess):
    """uvicorn's process supervisor with two changes: SIGHUP is passed on to every worker (each re-reads the
    policy and keeps the old one if the new has problems, instead of being restarted), and on SIGTERM the
    parent's copy of the listening socket is closed first, so new connections are refused while the workers
    finish what they have."""

    def handle_hup(self) -> None:
        log.info("SIGHUP: re-reading the policy in %d worker processes", len(self.processes))
        for process in self.processes:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

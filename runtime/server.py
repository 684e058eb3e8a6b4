"""`dropwire runtime serve`: start the service, then serve HTTP until SIGTERM/SIGINT.

The port is bound first (a taken port ends the process with one line before anything
loads), then the service starts, then the port listens: a model that cannot load ends the
process with a clear error and nothing listening. On a signal the service's ordered shutdown runs
first (pending requests get a clear 503 at once), then uvicorn closes the listener and
waits for the now-answered connections, and the process exits 0.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
from pathlib import Path
from types import FrameType

import uvicorn

from dropwire.runtime.app import create_app
from dropwire.runtime.errors import PortUnavailable
from dropwire.runtime.host import RuntimeHost
from dropwire.runtime.model_source import ModelSource
from dropwire.runtime.settings import RuntimeSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _RuntimeServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: RuntimeHost) -> None:
        super().__init__(config)
        self._service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises the signal after a graceful exit (the process then dies by the
        # signal); a completed ordered shutdown is a normal exit here.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:  # uvicorn logs no address for a socket handed to it
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            self._service.log_listening(f"http://{host}:{self.config.port}")

    async def shutdown(self, sockets=None) -> None:
        await self._service.shutdown()
        await super().shutdown(sockets)


def bind_port(host: str, port: int) -> socket.socket:
    """The runtime's socket, bound but not listening (connections are refused until uvicorn
    listens on it); a port that cannot be bound is one clear error naming the setting."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # As uvicorn binds: a port left in TIME_WAIT by the previous run is free.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        raise PortUnavailable(f"the runtime cannot listen on {host}:{port}: {why} (stop what holds it or set "
                              "DROPWIRE_RUNTIME__PORT)") from None
    return sock


def serve(settings: RuntimeSettings, model_source: ModelSource, *, text_model_dir: Path) -> None:
    logging.basicConfig(format=LOG_FORMAT)  # a no-op where the caller configured logging
    log = logging.getLogger("dropwire.runtime")
    log.setLevel(settings.log_level.upper())
    sock = bind_port(settings.host, settings.port)
    service = RuntimeHost(settings, model_source, log, text_model_dir=text_model_dir)
    try:
        service.open()
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(
        create_app(service, log),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
    )
    _RuntimeServer(config, service).run(sockets=[sock])

"""`dropwire runtime serve`: start the service, then serve HTTP until SIGTERM/SIGINT.

The service starts before the port opens, so a model that cannot load ends the process
with a clear error and nothing listening. On a signal the service's ordered shutdown runs
first (pending requests get a clear 503 at once), then uvicorn closes the listener and
waits for the now-answered connections, and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType

import uvicorn

from dropwire.runtime.app import create_app
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

    async def shutdown(self, sockets=None) -> None:  # noqa: ANN001 (uvicorn's signature)
        await self._service.shutdown()
        await super().shutdown(sockets)


def serve(settings: RuntimeSettings, model_source: ModelSource, *, text_model_dir: Path) -> None:
    logging.basicConfig(format=LOG_FORMAT)  # a no-op where the caller configured logging
    log = logging.getLogger("dropwire.runtime")
    log.setLevel(settings.log_level.upper())
    service = RuntimeHost(settings, model_source, log, text_model_dir=text_model_dir)
    service.open()
    config = uvicorn.Config(
        create_app(service, log),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,  # type: ignore[arg-type]
    )
    # A port that cannot be bound ends the process with uvicorn's error and exit status 1.
    _RuntimeServer(config, service).run()

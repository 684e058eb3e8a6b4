"""The runtime's lifecycle over its services (forecasts and KDE; text generation and
embeddings) and the one device owner they share.

Start: every service's queues, then every model (a failure stops here, before the port
opens), then caches and job kinds, then the device. Shutdown, in order: log a stats
snapshot, stop accepting, close the queues (everything pending fails with a clear error at
once), stop the device, unload the models, flush queues and caches.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path

import msgspec
import torch

from dropwire.runtime.device import DeviceOwner
from dropwire.runtime.errors import ShuttingDown
from dropwire.runtime.forecast_schemas import Stats
from dropwire.runtime.forecast_service import ForecastService
from dropwire.runtime.model_source import ModelSource
from dropwire.runtime.settings import RuntimeSettings
from dropwire.runtime.textgen.serving import TextGenService


class RuntimeHost:
    def __init__(
        self, settings: RuntimeSettings, model_source: ModelSource, log: logging.Logger, *, text_model_dir: Path
    ) -> None:
        self.settings = settings
        self._log = log
        self._accepting = False
        self._shutdown_started = False
        self._started_at = time.monotonic()
        self.device = DeviceOwner([], log, interactive_grace_s=settings.interactive_grace_ms / 1000)
        self.forecasts = ForecastService(settings, model_source, log)
        self.textgen = (
            TextGenService(settings, default_dir=text_model_dir, log=log) if settings.textgen.enabled else None
        )

    @property
    def services(self) -> list[ForecastService | TextGenService]:
        return [self.forecasts, *([self.textgen] if self.textgen else [])]

    def open(self) -> None:
        self._log.info("starting: queues")
        for service in self.services:
            service.open_queues(self.device)
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        for service in self.services:
            service.load_models()
        self._log.info("starting: caches")
        for service in self.services:
            service.open_caches(self.device)
        # What start-up allocated (torch, transformers, the models: ~400k objects) is never
        # garbage: kept out of the collector, a full collection no longer walks it (85-180 ms
        # here, a pause every request in flight would wait for).
        gc.freeze()
        self._log.info("starting: device worker (%s)", ", ".join(service.name for service in self.services))
        self.device.start()
        for service in self.services:
            service.start_accepting()
        self._started_at = time.monotonic()
        self._accepting = True
        self._log.info("ready")

    def log_listening(self, url: str) -> None:
        self._log.info("listening on %s", url)

    async def shutdown(self) -> None:
        """The ordered shutdown; safe to call more than once."""
        if self._shutdown_started or not self._accepting:
            return
        self._shutdown_started = True
        self._log.info("shutdown: stats %s", msgspec.json.encode(self.stats()).decode())
        self._log.info("shutdown: no longer accepting requests")
        self._accepting = False
        for service in self.services:
            service.stop_accepting()
        self._log.info("shutdown: stopping the device worker")
        for service in self.services:
            service.close_queues(ShuttingDown("the runtime is shutting down; this request was not computed"))
        timeout = self.settings.shutdown_timeout_s
        if not await asyncio.to_thread(self.device.stop, timeout):
            self._log.warning("the device worker did not stop within %ss; leaving it behind", timeout)
        self._log.info("shutdown: unloading the model")
        for service in self.services:
            service.unload()
        flushed = "; ".join(service.flush() for service in self.services)
        self._log.info("shutdown: flushed %s; stopped", flushed)

    def ensure_accepting(self) -> None:
        if not self._accepting:
            raise ShuttingDown("the runtime is shutting down and accepts no new requests")

    def stats(self) -> Stats:
        forecasts = self.forecasts.stats()
        return Stats(
            uptime_s=round(time.monotonic() - self._started_at, 3),
            accepting=self._accepting,
            device=self.device.stats(),
            model=forecasts.model,
            data_cache=forecasts.data_cache,
            result_cache=forecasts.result_cache,
            scheduler=forecasts.scheduler,
            forecast_jobs=forecasts.jobs,
            textgen=self.textgen.stats() if self.textgen else None,
        )

"""The forecast runtime's operations, independent of HTTP, and its part of the lifecycle
that host.py runs (queues, model, caches; on shutdown: close, unload, flush).

Registration and deletion run on the event loop thread only, so the data cache and the
scheduler's dataset table change together; the device worker only reads them through the
scheduler's lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from typing import Any

import torch

from dropwire.runtime.caches import BoundedCache
from dropwire.runtime.dataset import Dataset, parse_csv
from dropwire.runtime.device import DeviceOwner
from dropwire.runtime.errors import DatasetGone, DatasetNotFound, InvalidRange, RequestTimedOut, ShuttingDown, UploadTooLarge
from dropwire.runtime.forecast_jobs import ForecastJobs
from dropwire.runtime.forecast_lanes import Scheduler
from dropwire.runtime.forecast_schemas import (
    BackgroundLane,
    DatasetInfo,
    Deleted,
    Forecast,
    ForecastRange,
    ForecastStats,
    Health,
    ModelInfo,
    dataset_info,
    forecast_body,
    range_body,
)
from dropwire.runtime.model import LoadedModel
from dropwire.runtime.model_source import ModelSource, open_model
from dropwire.runtime.pipeline import ForecastPipeline, ForecastResult
from dropwire.runtime.settings import RuntimeSettings


class ForecastService:
    """Forecasts and KDE: their queues, model and caches. The host (host.py) runs the
    lifecycle steps of every service in order and owns the device."""

    name = "forecast"

    def __init__(self, settings: RuntimeSettings, model_source: ModelSource, log: logging.Logger) -> None:
        self.settings = settings
        self._source = model_source
        self._log = log
        self._accepting = False
        self.scheduler: Scheduler | None = None
        self.model: LoadedModel | None = None
        self.data_cache: BoundedCache[str, Dataset] | None = None
        self.result_cache: BoundedCache[tuple[str, int, str], ForecastResult] | None = None
        self.jobs: ForecastJobs | None = None

    # -- lifecycle (called by the host, in this order) ------------------------------------

    def open_queues(self, device: DeviceOwner) -> None:
        s = self.settings
        self.scheduler = Scheduler(batch_size=s.batch_size, background_chunk=s.background_chunk)
        self.scheduler.on_work(device.wake)

    def load_models(self) -> None:
        self._log.info("starting: model (%s)", self._source.describe())
        self.model = open_model(self._source, self.settings.device, self._log)
        self._log.info(
            "model %s loaded on %s (%d parameters, context %d)",
            self.model.version,
            self.model.device,
            self.model.parameters,
            self.model.context_length,
        )

    def open_caches(self, device: DeviceOwner) -> None:
        s = self.settings
        assert self.scheduler is not None and self.model is not None
        self.data_cache = BoundedCache(s.data_cache_max_bytes, on_evict=self._data_evicted)
        self.result_cache = BoundedCache(s.result_cache_max_bytes)
        self.scheduler.attach_results(self.result_cache, self.model.version)
        pipeline = ForecastPipeline(
            self.model,
            horizon=s.horizon,
            num_samples=s.num_samples,
            grid_points=s.grid_points,
            plot_paths=s.plot_paths,
            band_coverages=s.band_coverages,
        )
        self.jobs = ForecastJobs(self.scheduler, pipeline, self._log)
        device.add(self.jobs)

    def start_accepting(self) -> None:
        self._accepting = True

    def stop_accepting(self) -> None:
        self._accepting = False

    def close_queues(self, error: Exception) -> None:
        """Refuse new work; everything pending fails with ``error`` at once."""
        if self.scheduler is not None:
            self.scheduler.close(error)

    def unload(self) -> None:
        if self.jobs is not None:
            self.jobs.unload()
        device = self.model.device if self.model else None
        self.model = None
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()

    def flush(self) -> str:
        datasets = self.scheduler.flush() if self.scheduler else 0
        data = self.data_cache.clear() if self.data_cache else 0
        results = self.result_cache.clear() if self.result_cache else 0
        return f"queues ({datasets} datasets) and caches ({data} datasets, {results} results)"

    def ensure_accepting(self) -> None:
        if not self._accepting:
            raise ShuttingDown("the runtime is shutting down and accepts no new requests")

    # -- operations -----------------------------------------------------------------------

    async def upload(self, content: bytes, *, precompute: bool) -> tuple[DatasetInfo, bool]:
        """Process-and-cache: (info, created). Background precompute starts when asked."""
        self.ensure_accepting()
        dataset = await self._parse(content)
        created = self._store(dataset)
        created = self._scheduler().add_dataset(dataset, background=precompute) or created
        return self.info(dataset.handle), created

    def info(self, handle: str) -> DatasetInfo:
        dataset = self._dataset(handle)
        precompute, remaining = self._scheduler().background_progress(handle)
        return dataset_info(
            dataset,
            precompute=precompute,
            cached_results=self._results().group_size(handle),
            background_remaining=remaining,
        )

    def delete(self, handle: str) -> Deleted:
        scheduler = self._scheduler()
        removed = scheduler.remove_dataset(
            handle, DatasetGone(f"dataset {handle[:12]} was deleted while this request waited", handle=handle)
        )
        self._data().pop(handle)
        if not removed:
            raise DatasetNotFound(f"no dataset with handle {handle!r}", handle=handle)
        return Deleted(handle=handle, deleted=True)

    def pause_background(self, paused: bool) -> BackgroundLane:
        """Hold (or let go on) the background lane: precompute and range fetches."""
        self.ensure_accepting()
        scheduler = self._scheduler()
        scheduler.pause_background(paused)
        stats = scheduler.stats()
        return BackgroundLane(paused=stats.background_paused, datasets=stats.background_datasets,
                              remaining=stats.background_remaining)

    async def forecast(self, handle: str, index: int) -> Forecast:
        dataset = self._dataset(handle)
        dataset.check_index(index)
        return await self._draw(dataset, index)

    async def forecast_range(self, handle: str, start: int, stop: int, wait: float | None) -> ForecastRange:
        """The forecasts of indices start..stop-1 at background priority, once all are
        computed, waiting at most ``wait`` seconds (capped at request_timeout_s)."""
        self.ensure_accepting()
        dataset = self._dataset(handle)
        limit = self.settings.max_range_indices
        if not 0 < stop - start <= limit:
            raise InvalidRange(
                f"start={start}, stop={stop}: a range needs start < stop and at most {limit} indices "
                "(setting runtime.max_range_indices)",
                start=start,
                stop=stop,
                limit=limit,
            )
        dataset.check_index(start)
        dataset.check_index(stop - 1)
        timeout = min(wait or self.settings.request_timeout_s, self.settings.request_timeout_s)
        futures = self._scheduler().watch(handle, range(start, stop))
        results = await wait_all_bounded(
            futures, timeout, what=f"indices {start}..{stop - 1} of dataset {handle[:12]}"
        )
        return range_body(results, dataset, start=start, stop=stop)

    async def quick_draw(self, content: bytes) -> Forecast:
        """Forecast the last index of an upload, then remove everything it added."""
        self.ensure_accepting()
        dataset = await self._parse(content)
        scheduler = self._scheduler()
        known = self._data().get(dataset.handle)
        if known is not None:
            dataset = known  # already uploaded for keeps: share it (it stays afterwards)
        else:
            self._store(dataset)
        scheduler.hold(dataset)
        try:
            return await self._draw(dataset, dataset.last_index)
        finally:
            if scheduler.release(dataset.handle):
                self._data().pop(dataset.handle)

    def health(self) -> Health:
        self.ensure_accepting()
        assert self.model is not None
        return Health(status="ok", model_version=self.model.version, device=str(self.model.device))

    def stats(self) -> ForecastStats:
        model = self.model
        return ForecastStats(
            model=ModelInfo(
                version=model.version if model else "",
                source=model.source if model else "",
                device=str(model.device) if model else "",
                architecture=model.meta.architecture if model else "",
                context_length=model.context_length if model else 0,
                parameters=model.parameters if model else 0,
            ),
            data_cache=self._data().stats(),
            result_cache=self._results().stats(),
            scheduler=self._scheduler().stats(),
            jobs=self._jobs().stats(),
        )

    # -- internals ------------------------------------------------------------------------

    async def _parse(self, content: bytes) -> Dataset:
        if len(content) > self.settings.max_upload_bytes:
            raise _too_large(len(content), self.settings.max_upload_bytes)
        assert self.model is not None
        # Parsing a large CSV is CPU work: off the event loop.
        return await asyncio.to_thread(
            parse_csv, content, context_length=self.model.context_length, max_series=self.settings.max_series
        )

    def _store(self, dataset: Dataset) -> bool:
        data = self._data()
        if data.get(dataset.handle) is not None:
            return False
        if not data.put(dataset.handle, dataset, dataset.nbytes):
            raise UploadTooLarge(
                f"the parsed dataset takes {dataset.nbytes} bytes, more than the whole data cache "
                f"({self.settings.data_cache_max_bytes} bytes, setting runtime.data_cache_max_bytes)"
            )
        return True

    async def _draw(self, dataset: Dataset, index: int) -> Forecast:
        self.ensure_accepting()
        future, cached = self._scheduler().submit(dataset.handle, index)
        result = await wait_bounded(
            future,
            self.settings.request_timeout_s,
            what=f"the forecast of dataset {dataset.handle[:12]} at index {index}",
        )
        return forecast_body(
            result, dataset, source="cache" if cached else result.lane, num_samples=self.settings.num_samples
        )

    def _data_evicted(self, handle: str, _: Dataset) -> None:
        self._scheduler().remove_dataset(
            handle,
            DatasetGone(
                f"dataset {handle[:12]} was evicted from the data cache (setting "
                "runtime.data_cache_max_bytes); upload it again",
                handle=handle,
            ),
        )

    def _dataset(self, handle: str) -> Dataset:
        dataset = self._data().get(handle)
        if dataset is None:
            raise DatasetNotFound(
                f"no dataset with handle {handle!r}: it was never uploaded, or was deleted or evicted",
                handle=handle,
            )
        return dataset

    def _scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise ShuttingDown("the runtime is not started")
        return self.scheduler

    def _jobs(self) -> ForecastJobs:
        if self.jobs is None:
            raise ShuttingDown("the runtime is not started")
        return self.jobs

    def _data(self) -> BoundedCache[str, Dataset]:
        if self.data_cache is None:
            raise ShuttingDown("the runtime is not started")
        return self.data_cache

    def _results(self) -> BoundedCache[tuple[str, int, str], ForecastResult]:
        if self.result_cache is None:
            raise ShuttingDown("the runtime is not started")
        return self.result_cache


async def wait_bounded(future: concurrent.futures.Future, timeout: float, *, what: str) -> Any:
    """Await a future the device worker resolves, for at most ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(_relay(future), timeout)
    except TimeoutError:
        raise RequestTimedOut(
            f"{what} was not ready within {timeout}s (setting runtime.request_timeout_s); try again"
        ) from None


async def wait_all_bounded(futures: list[concurrent.futures.Future], timeout: float, *, what: str) -> list[Any]:
    """Await every future for at most ``timeout`` seconds in all; the first error (in index
    order) wins over a timeout, so a deleted dataset says so rather than timing out."""
    waiters = [_relay(future) for future in futures]
    done, pending = await asyncio.wait(waiters, timeout=timeout)
    for waiter in pending:
        waiter.cancel()
    for waiter in waiters:
        if waiter in done and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]
    if pending:
        raise RequestTimedOut(
            f"{what}: {len(pending)} of {len(waiters)} forecasts were not computed within {timeout}s; "
            "the background lane is busy, ask again (a later request finds what was computed meanwhile)",
            ready=len(done),
            total=len(waiters),
        )
    return [waiter.result() for waiter in waiters]


def _relay(future: concurrent.futures.Future) -> asyncio.Future:
    """An asyncio future of this loop settled with ``future``: the caller's own, so a timeout
    or cancellation never cancels the shared computation other requests wait on."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future = loop.create_future()

    def settle(done: concurrent.futures.Future) -> None:
        if waiter.done():
            return
        error = done.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    def relay(done: concurrent.futures.Future) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, done)

    future.add_done_callback(relay)
    return waiter


def _too_large(size: int, limit: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"the upload is {size} bytes; the limit is {limit} bytes (setting runtime.max_upload_bytes)",
        size=size,
        limit=limit,
    )


def upload_limit_error(limit: int) -> UploadTooLarge:
    """What the HTTP layer answers when the body stream passes the limit mid-way."""
    return UploadTooLarge(
        f"the upload is larger than the limit of {limit} bytes (setting runtime.max_upload_bytes)", limit=limit
    )

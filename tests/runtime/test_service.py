"""The service in-process: bounded waits, eviction from the data cache, ordered shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import pytest

from dropwire.runtime.errors import DatasetNotFound, RequestTimedOut, ShuttingDown
from dropwire.runtime.forecast_service import wait_bounded
from dropwire.runtime.host import RuntimeHost
from dropwire.runtime.model_source import ModelSource
from dropwire.runtime.synthetic import generated_csv
from tests.runtime.conftest import LOG_FOR_TESTS, small_settings


def test_a_wait_times_out_clearly_without_cancelling_the_shared_computation() -> None:
    shared: concurrent.futures.Future = concurrent.futures.Future()

    async def scenario() -> None:
        with pytest.raises(RequestTimedOut, match=r"the forecast of x was not ready within 0.05s"):
            await wait_bounded(shared, 0.05, what="the forecast of x")
        assert not shared.cancelled()  # another waiter may still get it
        shared.set_result(42)
        assert await wait_bounded(shared, 1.0, what="the forecast of x") == 42

    asyncio.run(scenario())


def service_for(tiny_model: Path, tmp_path: Path, **overrides: object) -> RuntimeHost:
    settings = small_settings(model_path=str(tiny_model), **overrides)
    source = ModelSource.from_settings(settings, default_path=tmp_path / "unused.pt", tracking_uri="")
    service = RuntimeHost(settings, source, LOG_FOR_TESTS, text_model_dir=tmp_path / "unused-textgen")
    service.open()
    return service


def test_eviction_from_the_data_cache_forgets_the_dataset_and_its_work(tiny_model: Path, tmp_path: Path) -> None:
    first_csv, second_csv = generated_csv(3000, seed=41), generated_csv(3000, seed=42)
    # Room for one of these datasets (~180 kB parsed), not two.
    service = service_for(tiny_model, tmp_path, data_cache_max_bytes=250_000)

    async def scenario() -> None:
        try:
            await checks()
        finally:
            await service.shutdown()

    async def checks() -> None:
        first, _ = await service.forecasts.upload(first_csv, precompute=True)
        second, _ = await service.forecasts.upload(second_csv, precompute=False)
        with pytest.raises(DatasetNotFound, match="deleted or evicted"):
            service.forecasts.info(first.handle)
        assert service.stats().data_cache.evictions == 1
        assert service.stats().scheduler.background_remaining == 0  # its precompute went with it
        forecast = await service.forecasts.forecast(second.handle, second.last_index)
        assert forecast.source == "interactive"

    asyncio.run(scenario())


def test_shutdown_fails_waiting_requests_and_refuses_new_ones(tiny_model: Path, tmp_path: Path) -> None:
    service = service_for(tiny_model, tmp_path, num_samples=3000, horizon=24, batch_size=1)

    async def scenario() -> None:
        try:
            await checks()
        finally:
            await service.shutdown()  # a no-op after the one under test

    async def checks() -> None:
        info, _ = await service.forecasts.upload(generated_csv(400, seed=43), precompute=False)
        waiting = [asyncio.create_task(service.forecasts.forecast(info.handle, index)) for index in range(100, 140)]
        while service.stats().scheduler.interactive_queued < 30:
            await asyncio.sleep(0.005)
        await service.shutdown()
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), timeout=30)
        refused = [o for o in outcomes if isinstance(o, ShuttingDown)]
        # Each request either got its own index's forecast or was refused; nothing else.
        assert refused and all(isinstance(o, ShuttingDown) or o.index == index
                               for index, o in zip(range(100, 140), outcomes, strict=False)), outcomes
        with pytest.raises(ShuttingDown):
            await service.forecasts.upload(generated_csv(50, seed=44), precompute=False)
        stats = service.stats()
        assert not stats.accepting and not stats.device.alive
        assert (stats.data_cache.entries, stats.result_cache.entries, stats.scheduler.datasets) == (0, 0, 0)
        assert service.forecasts.model is None

    asyncio.run(scenario())

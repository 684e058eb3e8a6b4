"""The device owner running the forecast job kind with the real model, pipeline and scheduler: LIFO order on the device,
background batches pausing for clicks between device steps, stale batches abandoned, and
forecasts that do not depend on which lane or batch computed them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dropwire.runtime.caches import BoundedCache
from dropwire.runtime.device import DeviceOwner
from dropwire.runtime.errors import ComputeFailed, DatasetGone, ShuttingDown
from dropwire.runtime.forecast_jobs import ForecastJobs
from dropwire.runtime.forecast_lanes import Job, Lane, Scheduler
from dropwire.runtime.model import LoadedModel, load_model
from dropwire.runtime.pipeline import ForecastPipeline
from tests.conftest import wait_for
from tests.runtime.conftest import LOG_FOR_TESTS, SMALL, dataset


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> LoadedModel:
    torch.set_num_threads(1)
    return load_model(tiny_model, torch.device("cpu"))


def pipeline_for(model: LoadedModel) -> ForecastPipeline:
    return ForecastPipeline(
        model,
        horizon=SMALL["horizon"],
        num_samples=SMALL["num_samples"],
        grid_points=SMALL["grid_points"],
        plot_paths=SMALL["plot_paths"],
        band_coverages=(0.5, 0.9),
    )


class GatedPipeline(ForecastPipeline):
    """The real pipeline, holding the first background batch after its first device step
    until the test opens the gate: a deterministic moment with a batch on the device."""

    def __init__(self, model: LoadedModel) -> None:
        base = pipeline_for(model)
        super().__init__(model, horizon=base.horizon, num_samples=base.num_samples, grid_points=base.grid_points,
                         plot_paths=base.plot_paths, band_coverages=(0.5, 0.9))
        self.holding = threading.Event()
        self.gate = threading.Event()
        self._held = False

    def forecast(self, jobs: list[Job]):
        steps = super().forecast(jobs)
        if jobs[0].lane is Lane.BACKGROUND and not self._held:
            self._held = True
            next(steps)
            self.holding.set()
            assert self.gate.wait(30), "the test never opened the gate"
            yield
        return (yield from steps)


class ForecastDevice:
    """The device owner with the forecast kind alone, as the runtime wires them."""

    def __init__(self, scheduler: Scheduler, pipeline: ForecastPipeline) -> None:
        self.jobs = ForecastJobs(scheduler, pipeline, LOG_FOR_TESTS)
        self.owner = DeviceOwner([self.jobs], LOG_FOR_TESTS)
        scheduler.on_work(self.owner.wake)

    def start(self) -> None:
        self.owner.start()

    def stop(self, timeout: float) -> bool:
        return self.owner.stop(timeout)


@pytest.fixture
def device(model: LoadedModel) -> Iterator[tuple[Scheduler, BoundedCache, GatedPipeline, ForecastDevice]]:
    scheduler = Scheduler(batch_size=1, background_chunk=4)
    cache: BoundedCache = BoundedCache(10**9)
    scheduler.attach_results(cache, model.version)
    pipeline = GatedPipeline(model)
    worker = ForecastDevice(scheduler, pipeline)
    yield scheduler, cache, pipeline, worker
    pipeline.gate.set()
    scheduler.close(ShuttingDown("test over"))
    worker.stop(10)


def completion_order(futures: dict[int, object]) -> list[int]:
    order: list[int] = []
    lock = threading.Lock()
    for index, future in futures.items():
        future.add_done_callback(lambda _, index=index: (lock.acquire(), order.append(index), lock.release()))
    return order


def test_the_device_answers_the_most_recent_click_first(device) -> None:
    scheduler, _, _, worker = device
    data = dataset(rows=60)
    scheduler.add_dataset(data, background=False)
    clicks = [20, 35, 50, 12, 41]
    futures = {index: scheduler.submit(data.handle, index)[0] for index in clicks}  # queued before the device runs
    order = completion_order(futures)
    worker.start()
    for future in futures.values():
        future.result(timeout=30)
    assert order == list(reversed(clicks))
    assert worker.jobs.stats().batches_interactive == len(clicks)


def test_a_click_runs_between_two_steps_of_a_background_batch(device) -> None:
    scheduler, _, pipeline, worker = device
    data = dataset(rows=200)
    scheduler.add_dataset(data, background=True)
    worker.start()
    assert pipeline.holding.wait(30)  # a background chunk is now part-way through on the device
    in_flight = scheduler.stats().in_flight
    assert in_flight == 4
    click, _ = scheduler.submit(data.handle, data.last_index)
    events: list[str] = []
    click.add_done_callback(lambda _: events.append(f"click with {scheduler.stats().in_flight} background in flight"))
    pipeline.gate.set()
    result = click.result(timeout=30)
    assert result.lane == "interactive"
    assert events == ["click with 4 background in flight"]  # the chunk was still unfinished
    assert worker.owner.stats().preemptions == 1


def test_a_background_batch_is_abandoned_when_its_dataset_is_deleted(device) -> None:
    scheduler, cache, pipeline, worker = device
    data = dataset(rows=200)
    scheduler.add_dataset(data, background=True)
    worker.start()
    assert pipeline.holding.wait(30)
    scheduler.remove_dataset(data.handle, DatasetGone("deleted"))
    pipeline.gate.set()
    wait_for(lambda: worker.jobs.stats().abandoned == 1, timeout=30, what="the stale batch to be abandoned")
    stats = scheduler.stats()
    assert stats.stale_dropped == 4 and stats.computed_background == 0
    assert cache.stats().entries == 0
    assert scheduler.next_batch(0.0) is None  # and nothing more of it is ever taken


def test_a_forecast_does_not_depend_on_its_batch_or_lane(model: LoadedModel) -> None:
    pipeline = pipeline_for(model)
    data = dataset(rows=80, series=2, seed=5)

    def run(jobs: list[Job]):
        steps = pipeline.forecast(jobs)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    with torch.inference_mode():
        alone = run([Job(data, 40, 1, Lane.INTERACTIVE)])[0]
        batched = run([Job(data, 30, 1, Lane.BACKGROUND), Job(data, 40, 1, Lane.BACKGROUND), Job(data, 79, 1, Lane.BACKGROUND)])
    together = batched[1]
    assert (alone.index, together.index, together.lane) == (40, 40, "background")
    for a, b in zip(alone.series, together.series, strict=False):
        for name in ("mean", "std", "quantiles", "paths", "grid", "density"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5, err_msg=name)
    first = alone.series[0]
    assert first.density.shape == (SMALL["horizon"], SMALL["grid_points"])
    assert first.quantiles.shape == (len(pipeline.levels), SMALL["horizon"])
    assert np.all(np.diff(first.quantiles, axis=0) >= 0)  # bands are nested
    # Each horizon step's density integrates to ~1 over its grid.
    mass = np.trapezoid(first.density, first.grid, axis=1)
    np.testing.assert_allclose(mass, 1.0, atol=0.02)


class FailingOncePipeline(ForecastPipeline):
    """The real pipeline, with a device error injected into its first batch."""

    failed = False

    def forecast(self, jobs: list[Job]):
        if not self.failed:
            self.failed = True
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return (yield from super().forecast(jobs))


def test_a_failed_batch_answers_its_waiters_and_the_worker_goes_on(model: LoadedModel) -> None:
    scheduler = Scheduler(batch_size=1, background_chunk=1)
    scheduler.attach_results(BoundedCache(10**9), model.version)
    base = pipeline_for(model)
    pipeline = FailingOncePipeline(model, horizon=base.horizon, num_samples=base.num_samples,
                                   grid_points=base.grid_points, plot_paths=base.plot_paths, band_coverages=(0.5,))
    worker = ForecastDevice(scheduler, pipeline)
    data = dataset(rows=40)
    scheduler.add_dataset(data, background=False)
    failed, _ = scheduler.submit(data.handle, 20)
    worker.start()
    try:
        error = failed.exception(timeout=30)
        assert isinstance(error, ComputeFailed) and "illegal memory access" in error.message
        assert scheduler.submit(data.handle, 21)[0].result(timeout=30).index == 21
        retried, cached = scheduler.submit(data.handle, 20)  # a failure is not cached: it is retried
        assert not cached and retried.result(timeout=30).index == 20
        assert worker.owner.stats().alive and scheduler.stats().failed == 1
    finally:
        scheduler.close(ShuttingDown("test over"))
        worker.stop(10)

"""Forecasts as a job kind of the device owner: batches from the forecast scheduler, run by
the forecast pipeline one device step at a time.

A background batch yields between device steps, so the device owner can run interactive
work in between; it is abandoned when its dataset was deleted meanwhile.
"""

from __future__ import annotations

import logging

import msgspec

from dropwire.runtime.device import Lane, Work
from dropwire.runtime.errors import ComputeFailed, NonFiniteForecast
from dropwire.runtime.forecast_lanes import Batch, Scheduler
from dropwire.runtime.pipeline import ForecastPipeline


class ForecastJobStats(msgspec.Struct, frozen=True):
    batches_interactive: int
    batches_background: int
    abandoned: int


class ForecastJobs:
    name = "forecast"

    def __init__(self, scheduler: Scheduler, pipeline: ForecastPipeline, log: logging.Logger) -> None:
        self._scheduler = scheduler
        self._pipeline: ForecastPipeline | None = pipeline
        self._log = log
        self._batches = {Lane.INTERACTIVE: 0, Lane.BACKGROUND: 0}
        self._abandoned = 0

    def take(self, lane: Lane) -> Work | None:
        if self._pipeline is None:
            return None
        batch = self._scheduler.next_interactive() if lane is Lane.INTERACTIVE else self._scheduler.next_background()
        return self._compute(batch) if batch is not None else None

    def interactive_waiting(self) -> bool:
        return self._scheduler.interactive_waiting()

    def unload(self) -> None:
        """After the device stopped: let go of the pipeline (and so of the model)."""
        self._pipeline = None

    def stats(self) -> ForecastJobStats:
        return ForecastJobStats(
            batches_interactive=self._batches[Lane.INTERACTIVE],
            batches_background=self._batches[Lane.BACKGROUND],
            abandoned=self._abandoned,
        )

    def _compute(self, batch: Batch) -> Work:
        jobs = self._scheduler.drop_stale(batch.jobs)
        if not jobs:
            return
        self._batches[batch.lane] += 1
        assert self._pipeline is not None
        try:
            steps = self._pipeline.forecast(jobs)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    results = done.value
                    break
                yield
                if batch.lane is Lane.BACKGROUND and self._scheduler.abandon_if_stale(jobs):
                    self._abandoned += 1
                    return
            # A job whose samples went non-finite fails alone; the others of its batch finish.
            done = [(job, result) for job, result in zip(jobs, results, strict=False) if not isinstance(result, NonFiniteForecast)]
            self._scheduler.finish([job for job, _ in done], [result for _, result in done])
            for job, result in zip(jobs, results, strict=False):
                if isinstance(result, NonFiniteForecast):
                    self._scheduler.fail([job], result)
        except Exception as exc:
            # The batch's waiters get an error now (not a timeout later); the device goes on.
            self._log.exception("forecast batch of %d failed", len(jobs))
            self._scheduler.fail(jobs, ComputeFailed(f"forecast computation failed: {exc}"))

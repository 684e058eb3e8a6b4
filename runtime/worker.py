"""The one owner of the device: a thread that takes batches from the scheduler and runs them.

A background batch runs as a sequence of device steps; between two steps the worker runs
any interactive work that arrived, so a click waits for at most one step of background
work, and it abandons the batch if its dataset was deleted meanwhile.
"""

from __future__ import annotations

import logging
import threading

import msgspec
import torch

from dropwire.runtime.errors import ComputeFailed, NonFiniteForecast
from dropwire.runtime.pipeline import ForecastPipeline
from dropwire.runtime.scheduler import Batch, Job, Lane, Scheduler

# How long an idle worker sleeps before it looks at its stop flag again.
IDLE_WAIT_S = 0.5


class WorkerStats(msgspec.Struct, frozen=True):
    alive: bool
    batches_interactive: int
    batches_background: int
    preemptions: int
    abandoned: int


class DeviceWorker:
    def __init__(self, scheduler: Scheduler, pipeline: ForecastPipeline, log: logging.Logger) -> None:
        self._scheduler = scheduler
        self._pipeline: ForecastPipeline | None = pipeline
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropwire-device", daemon=True)
        self._batches = {Lane.INTERACTIVE: 0, Lane.BACKGROUND: 0}
        self._preemptions = 0
        self._abandoned = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Ask the thread to stop after its current device step; True when it has, and then
        the worker lets go of the pipeline (and so of the model)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._pipeline = None
        return True

    def stats(self) -> WorkerStats:
        return WorkerStats(
            alive=self._thread.is_alive(),
            batches_interactive=self._batches[Lane.INTERACTIVE],
            batches_background=self._batches[Lane.BACKGROUND],
            preemptions=self._preemptions,
            abandoned=self._abandoned,
        )

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                batch = self._scheduler.next_batch(IDLE_WAIT_S)
                if batch is not None:
                    self._compute(batch)

    def _compute(self, batch: Batch) -> None:
        jobs = self._scheduler.drop_stale(batch.jobs)
        if not jobs:
            return
        self._batches[batch.lane] += 1
        assert self._pipeline is not None, "the pipeline is only released after the thread ended"
        try:
            steps = self._pipeline.forecast(jobs)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    results = done.value
                    break
                if self._stop.is_set():
                    return  # shutting down: the scheduler has already failed these jobs
                if batch.lane is Lane.BACKGROUND and not self._yield_to_interactive(jobs):
                    self._abandoned += 1
                    return
            done = [(job, result) for job, result in zip(jobs, results) if not isinstance(result, NonFiniteForecast)]
            self._scheduler.finish([job for job, _ in done], [result for _, result in done])
            for job, result in zip(jobs, results):
                if isinstance(result, NonFiniteForecast):
                    self._scheduler.fail([job], result)
        except Exception as exc:
            # The batch's waiters get an error now (not a timeout later); the worker goes on.
            self._log.exception("forecast batch of %d failed", len(jobs))
            self._scheduler.fail(jobs, ComputeFailed(f"forecast computation failed: {exc}"))

    def _yield_to_interactive(self, background: list[Job]) -> bool:
        """Run waiting interactive work; False when the background jobs went stale meanwhile."""
        while not self._stop.is_set() and self._scheduler.interactive_waiting():
            batch = self._scheduler.next_interactive()
            if batch is None:
                break
            self._preemptions += 1
            self._compute(batch)
        return not self._scheduler.abandon_if_stale(background)

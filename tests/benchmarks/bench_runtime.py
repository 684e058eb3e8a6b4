"""The forecast runtime, each figure against a baseline measured in the same run:

- KDE: 64 horizons x 1,000 samples x 256 grid points, torch (this device) vs
  scipy.stats.gaussian_kde on the same grids.
- Priority: interactive p99 latency with a background backlog of 10^5 indices against the
  same with no backlog (the real scheduler and device worker, production forecast shape),
  and what one FIFO queue holding every index (the replaced design) gives instead.
- Throughput: background indices per second with no interactive load.

Runs on CUDA when present, else CPU. On a CPU shared with other work torch runs one
intra-op thread (runtime.torch_threads=1); the figures say so.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from scipy.stats import gaussian_kde

from dropwire.runtime.caches import BoundedCache
from dropwire.runtime.dataset import Dataset, parse_csv
from dropwire.runtime.device import DeviceOwner
from dropwire.runtime.forecast_jobs import ForecastJobs
from dropwire.runtime.forecast_lanes import Job, Lane, Scheduler
from dropwire.runtime.kde import density_grid
from dropwire.runtime.model import LoadedModel, load_model, resolve_device
from dropwire.runtime.pipeline import ForecastPipeline
from dropwire.runtime.settings import RuntimeSettings
from dropwire.runtime.synthetic import generated_csv
from dropwire.runtime.training import train_default_model

SETTINGS = RuntimeSettings(torch_threads=1)  # production forecast shape and scheduling
BACKLOG = 100_000
CLICKS = 200
FIFO_AHEAD = 150
THROUGHPUT_SECONDS = 8.0
LOG = logging.getLogger("bench.runtime")


def main() -> None:
    device = resolve_device(SETTINGS.device)
    if device.type == "cpu":
        torch.set_num_threads(SETTINGS.torch_threads)
    print(f"device: {device}; torch intra-op threads: {torch.get_num_threads()}")
    bench_kde(device)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "default-forecaster.pt"
        started = time.perf_counter()
        train_default_model(path, steps=SETTINGS.default_model_train_steps, seed=SETTINGS.seed)
        print(f"\ndefault model trained on generated data in {time.perf_counter() - started:.1f} s (CPU)")
        model = load_model(path, device)
        bench_priority_and_throughput(model)


# -- KDE -------------------------------------------------------------------------------------


def bench_kde(device: torch.device) -> None:
    rows, n, points = 64, 1000, 256
    samples = np.random.default_rng(0).standard_t(5, size=(rows, n)) * 2.0 + 10.0
    tensor = torch.tensor(samples, dtype=torch.float32, device=device)
    grid, density = density_grid(tensor, points)  # warm-up
    ours = []
    for _ in range(30):
        started = time.perf_counter()
        grid, density = density_grid(tensor, points)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ours.append(time.perf_counter() - started)
    grids = grid.double().cpu().numpy()
    theirs = []
    worst = 0.0
    for _ in range(3):
        started = time.perf_counter()
        reference = [gaussian_kde(samples[row])(grids[row]) for row in range(rows)]
        theirs.append(time.perf_counter() - started)
    values = density.double().cpu().numpy()
    for row in range(rows):
        worst = max(worst, float(np.abs(reference[row] - values[row]).max() / reference[row].max()))
    t_ours, t_theirs = statistics.median(ours), statistics.median(theirs)
    print(f"\nKDE {rows} horizons x {n} samples x {points} grid points (medians):")
    print(f"  scipy.stats.gaussian_kde : {t_theirs * 1e3:9.2f} ms")
    print(f"  {'torch binned+FFT (' + device.type + ')':<24} : {t_ours * 1e3:9.2f} ms")
    print(f"  speed-up                 : {t_theirs / t_ours:9.1f}x   (target >= 100x)")
    print(f"  max |difference| / peak  : {worst:.2e}   (tested bound 1e-3)")


# -- priority and throughput -----------------------------------------------------------------


def device_runtime(model: LoadedModel) -> tuple[Scheduler, DeviceOwner]:
    scheduler = Scheduler(batch_size=SETTINGS.batch_size, background_chunk=SETTINGS.background_chunk)
    scheduler.attach_results(BoundedCache(SETTINGS.result_cache_max_bytes), model.version)
    worker = DeviceOwner([ForecastJobs(scheduler, pipeline_for(model), LOG)], LOG)
    scheduler.on_work(worker.wake)
    worker.start()
    return scheduler, worker


def pipeline_for(model: LoadedModel) -> ForecastPipeline:
    return ForecastPipeline(
        model,
        horizon=SETTINGS.horizon,
        num_samples=SETTINGS.num_samples,
        grid_points=SETTINGS.grid_points,
        plot_paths=SETTINGS.plot_paths,
        band_coverages=SETTINGS.band_coverages,
    )


def clicks(scheduler: Scheduler, data: Dataset, seed: int, count: int = CLICKS) -> list[float]:
    """Latencies of interactive requests for distinct indices, one after another, spaced by
    a few random milliseconds so they land anywhere in the background's device steps."""
    rng = np.random.default_rng(seed)
    indices = rng.choice(np.arange(data.first_index, data.last_index + 1), size=count, replace=False)
    latencies = []
    for index in indices:
        started = time.perf_counter()
        future, _ = scheduler.submit(data.handle, int(index))
        future.result(timeout=120)
        latencies.append(time.perf_counter() - started)
        time.sleep(rng.uniform(0.0, 0.005))
    return latencies


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def bench_priority_and_throughput(model: LoadedModel) -> None:
    backlog = parse_csv(generated_csv(BACKLOG + model.context_length - 1, seed=2),
                        context_length=model.context_length, max_series=1)
    assert backlog.index_count == BACKLOG

    scheduler, worker = device_runtime(model)
    clicks(scheduler, parse_and_add(scheduler, model, seed=1), seed=10, count=20)  # warm-up
    idle = clicks(scheduler, parse_and_add(scheduler, model, seed=3), seed=11)
    scheduler.add_dataset(backlog, background=True)
    time.sleep(0.5)  # the background lane is busy
    busy = clicks(scheduler, parse_and_add(scheduler, model, seed=4), seed=12)
    remaining = scheduler.stats().background_remaining
    worker_stats = worker.stats()
    print(f"\nInteractive latency, {CLICKS} clicks (horizon {SETTINGS.horizon}, {SETTINGS.num_samples} samples, "
          f"background chunk {SETTINGS.background_chunk}):")
    print(f"  {'no backlog':<22} : p50 {np.median(idle) * 1e3:7.1f} ms   p99 {p99(idle) * 1e3:7.1f} ms")
    print(f"  {f'backlog of {BACKLOG:,}':<22} : p50 {np.median(busy) * 1e3:7.1f} ms   p99 {p99(busy) * 1e3:7.1f} ms   "
          f"({BACKLOG - remaining:,} background indices done meanwhile, "
          f"{worker_stats.preemptions} background pauses)")
    print(f"  p99 ratio              : {p99(busy) / p99(idle):7.2f}x   (target <= 1.5x)")

    # Throughput: the backlog alone, no interactive load.
    before = scheduler.stats().computed_background
    time.sleep(THROUGHPUT_SECONDS)
    rate = (scheduler.stats().computed_background - before) / THROUGHPUT_SECONDS
    scheduler.remove_dataset(backlog.handle, RuntimeError("benchmark over"))
    scheduler.close(RuntimeError("benchmark over"))
    worker.stop(30)
    print(f"\nBackground throughput, no interactive load: {rate:,.1f} indices/s "
          f"({rate * SETTINGS.horizon * SETTINGS.num_samples:,.0f} sampled values/s)")

    fifo = fifo_latency(model, backlog)
    projected = fifo / FIFO_AHEAD * BACKLOG
    print(f"\nOne FIFO queue holding every index (the replaced design), a click behind {FIFO_AHEAD} queued indices:")
    print(f"  measured latency       : {fifo * 1e3:9.1f} ms   ({fifo / p99(idle):,.0f}x the idle p99)")
    print(f"  {f'behind {BACKLOG:,}':<22} : ~{projected:,.0f} s projected from that ({projected / p99(idle):,.0f}x)")


def parse_and_add(scheduler: Scheduler, model: LoadedModel, seed: int) -> Dataset:
    data = parse_csv(generated_csv(CLICKS * 4 + model.context_length, seed=seed),
                     context_length=model.context_length, max_series=1)
    scheduler.add_dataset(data, background=False)
    return data


def fifo_latency(model: LoadedModel, backlog: Dataset) -> float:
    """The replaced design's shape: every index enqueued up front in one FIFO queue, the
    same pipeline draining it in batches; a click joins the tail."""
    pipeline = pipeline_for(model)
    queue: deque[tuple[Job, float]] = deque(
        (Job(backlog, backlog.first_index + k, 1, Lane.BACKGROUND), 0.0) for k in range(FIFO_AHEAD)
    )
    click = Job(backlog, backlog.last_index, 1, Lane.INTERACTIVE)
    queue.append((click, time.perf_counter()))
    done = threading.Event()
    finished_at = 0.0

    def drain() -> None:
        nonlocal finished_at
        with torch.inference_mode():
            while queue:
                batch = [queue.popleft()[0] for _ in range(min(SETTINGS.batch_size, len(queue)))]
                steps = pipeline.forecast(batch)
                for _ in steps:
                    pass
                if click in batch:
                    finished_at = time.perf_counter()
        done.set()

    started = queue[-1][1]
    thread = threading.Thread(target=drain)
    thread.start()
    done.wait(600)
    thread.join()
    return finished_at - started


if __name__ == "__main__":
    main()

"""One batch of forecasts on the device: sample paths from the model, then KDE and bands.

``forecast(jobs)`` is a generator that yields between device steps (each autoregressive
step, each KDE chunk) and returns the results; the worker uses the yields to let
interactive work in ahead of a background batch. The noise of each forecast is seeded by
(dataset, index, model version), so a forecast is the same whichever lane or batch
computed it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from dropwire.runtime import kde
from dropwire.runtime.errors import NonFiniteForecast
from dropwire.runtime.model import LoadedModel

if TYPE_CHECKING:
    from dropwire.runtime.forecast_lanes import Job

# Rows (series x horizon steps) of density and quantile work per device step of a batch.
KDE_ROWS_PER_STEP = 32


@dataclass(frozen=True, eq=False)
class SeriesResult:
    mean: np.ndarray  # [horizon]
    std: np.ndarray  # [horizon]
    quantiles: np.ndarray  # [levels, horizon]
    paths: np.ndarray  # [plot_paths, horizon]
    grid: np.ndarray  # [horizon, grid_points]
    density: np.ndarray  # [horizon, grid_points]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.mean, self.std, self.quantiles, self.paths, self.grid, self.density))


@dataclass(frozen=True, eq=False)
class ForecastResult:
    handle: str
    index: int
    model_version: str
    lane: str
    levels: tuple[float, ...]
    series: tuple[SeriesResult, ...]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.series) + 256


def quantile_levels(band_coverages: Sequence[float]) -> tuple[float, ...]:
    levels = {0.5}
    for coverage in band_coverages:
        levels.update(((1 - coverage) / 2, (1 + coverage) / 2))
    return tuple(sorted(round(level, 6) for level in levels))


class ForecastPipeline:
    def __init__(
        self,
        model: LoadedModel,
        *,
        horizon: int,
        num_samples: int,
        grid_points: int,
        plot_paths: int,
        band_coverages: Sequence[float],
    ) -> None:
        self.model = model
        self.horizon = horizon
        self.num_samples = num_samples
        self.grid_points = grid_points
        self.plot_paths = min(plot_paths, num_samples)
        self.levels = quantile_levels(band_coverages)
        self._levels_tensor = torch.tensor(self.levels, device=model.device)

    def forecast(self, jobs: list[Job]) -> Generator[None, None, list[ForecastResult | NonFiniteForecast]]:
        """One result per job, or the error of a job whose samples went NaN or infinite."""
        device = self.model.device
        module = self.model.module
        context = self.model.context_length
        n, horizon = self.num_samples, self.horizon
        windows = [job.dataset.scaled[job.index - context + 1 : job.index + 1].T for job in jobs]
        per_job = [w.shape[0] for w in windows]  # series of each job
        rows = sum(per_job)
        # One buffer holds each path's context followed by its draws; step k reads the
        # window [k, k + context) and writes column context + k (no per-step copies).
        trajectory = torch.empty(rows * n, context + horizon, device=device)
        trajectory[:, :context] = torch.cat(windows).to(device).repeat_interleave(n, dim=0)
        noise = torch.cat([self._noise(job, series) for job, series in zip(jobs, per_job, strict=False)])
        for step in range(horizon):
            mu, sigma = module(trajectory[:, step : step + context])
            trajectory[:, context + step] = mu + sigma * noise[:, step]
            yield
        paths = trajectory[:, context:]
        # KDE in standardized space: the estimate is affine-equivariant (Scott's bandwidth
        # scales with the spread), so unscaling the grid and density afterwards is exact.
        samples = paths.reshape(rows, n, horizon).transpose(1, 2).reshape(rows * horizon, n)
        finite = torch.isfinite(samples).all(dim=1)
        if not bool(finite.all()):
            # The other jobs of the batch go on: the bad rows' samples are blanked for the KDE.
            samples = torch.where(finite[:, None], samples, torch.zeros((), device=device, dtype=samples.dtype))
        parts: dict[str, list[torch.Tensor]] = {"grid": [], "density": [], "quantiles": [], "mean": [], "std": []}
        for start in range(0, rows * horizon, KDE_ROWS_PER_STEP):
            chunk = samples[start : start + KDE_ROWS_PER_STEP]
            grid, density = kde.density_grid(chunk, self.grid_points)
            parts["grid"].append(grid)
            parts["density"].append(density)
            parts["quantiles"].append(torch.quantile(chunk, self._levels_tensor, dim=1).T)
            parts["mean"].append(chunk.mean(dim=1))
            parts["std"].append(chunk.std(dim=1))
            yield
        host = {name: torch.cat(tensors).double().cpu().numpy() for name, tensors in parts.items()}
        host["paths"] = paths.reshape(rows, n, horizon)[:, : self.plot_paths].double().cpu().numpy()
        scaled_finite = finite.cpu().numpy().reshape(rows, horizon)
        return [self._refusal(job, result, scaled_finite[row : row + len(result.series)]) or result
                for job, result, row in zip(jobs, self._unscale(jobs, per_job, host), np.cumsum([0, *per_job]), strict=False)]

    @staticmethod
    def _refusal(job: Job, result: ForecastResult, scaled_finite: np.ndarray) -> NonFiniteForecast | None:
        """The error of a job whose samples (``scaled_finite`` [series, horizon]) or unscaled
        results are NaN or infinite somewhere, naming its first such series and step."""
        finite = scaled_finite & np.stack([
            np.isfinite(s.grid).all(axis=1) & np.isfinite(s.density).all(axis=1) & np.isfinite(s.quantiles).all(axis=0)
            for s in result.series])
        if finite.all():
            return None
        series, step = (int(v) for v in np.argwhere(~finite)[0])
        name = job.dataset.series_names[series]
        return NonFiniteForecast(
            f"dataset {job.dataset.handle}, index {job.index}: the forecast samples of series {name!r} at step "
            f"{step + 1} of the horizon are NaN or infinite, so no density can be estimated; the series' values are "
            "likely too large to scale (near the float64 limit of 1.8e308)",
            handle=job.dataset.handle, index=job.index, series=name, step=step + 1)

    def _noise(self, job: Job, series: int) -> torch.Tensor:
        digest = hashlib.sha256(f"{job.dataset.handle}:{job.index}:{self.model.version}".encode()).digest()
        generator = torch.Generator(device=self.model.device)
        generator.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        return torch.randn(series * self.num_samples, self.horizon, generator=generator, device=self.model.device)

    def _unscale(self, jobs: list[Job], per_job: list[int], host: dict[str, np.ndarray]) -> list[ForecastResult]:
        h, levels = self.horizon, len(self.levels)
        quantiles = host["quantiles"].reshape(-1, h, levels)
        mean = host["mean"].reshape(-1, h)
        std = host["std"].reshape(-1, h)
        grid = host["grid"].reshape(-1, h, self.grid_points)
        density = host["density"].reshape(-1, h, self.grid_points)
        results = []
        row = 0
        for job, count in zip(jobs, per_job, strict=False):
            series = []
            for s in range(count):
                loc, scale = job.dataset.mean[s], job.dataset.scale[s]
                series.append(
                    SeriesResult(
                        mean=(loc + scale * mean[row]).astype(np.float32),
                        std=(scale * std[row]).astype(np.float32),
                        quantiles=(loc + scale * quantiles[row].T).astype(np.float32),
                        paths=(loc + scale * host["paths"][row]).astype(np.float32),
                        grid=(loc + scale * grid[row]).astype(np.float32),
                        density=(density[row] / scale).astype(np.float32),
                    )
                )
                row += 1
            results.append(
                ForecastResult(
                    handle=job.dataset.handle,
                    index=job.index,
                    model_version=self.model.version,
                    lane=job.lane.value,
                    levels=self.levels,
                    series=tuple(series),
                )
            )
        return results

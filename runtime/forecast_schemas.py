"""The runtime's HTTP bodies (errors use dropwire.functions.kit.errors.ErrorBody, the product's one shape)."""

from __future__ import annotations

import msgspec

from dropwire.runtime.caches import CacheStats
from dropwire.runtime.dataset import Dataset
from dropwire.runtime.device import DeviceStats
from dropwire.runtime.forecast_jobs import ForecastJobStats
from dropwire.runtime.forecast_lanes import SchedulerStats
from dropwire.runtime.pipeline import ForecastResult
from dropwire.runtime.textgen.jobs import TextGenStats


class DatasetInfo(msgspec.Struct, frozen=True):
    handle: str
    rows: int
    series: list[str]
    start: str
    end: str
    step: str
    first_index: int
    last_index: int
    precompute: bool
    cached_results: int
    background_remaining: int


class Deleted(msgspec.Struct, frozen=True):
    handle: str
    deleted: bool


class BackgroundLaneChange(msgspec.Struct, frozen=True):
    paused: bool


class BackgroundLane(msgspec.Struct, frozen=True):
    paused: bool
    # Datasets whose precompute has indices left, and how many in all.
    datasets: int
    remaining: int


class Band(msgspec.Struct, frozen=True):
    coverage: float
    lower: list[float]
    upper: list[float]


class SeriesForecast(msgspec.Struct, frozen=True):
    name: str
    history: list[float]
    # Observed values after the origin, where the data has them (for backtesting by eye).
    actual: list[float]
    mean: list[float]
    std: list[float]
    median: list[float]
    bands: list[Band]
    sample_paths: list[list[float]]
    # Per horizon step: the points the density is evaluated at, and the density there.
    density_grid: list[list[float]]
    density: list[list[float]]


class Forecast(msgspec.Struct, frozen=True):
    handle: str
    index: int
    origin: str
    history_timestamps: list[str]
    timestamps: list[str]
    horizon: int
    num_samples: int
    model_version: str
    # "cache", or the lane that computed it: "interactive" / "background".
    source: str
    series: list[SeriesForecast]


class SeriesSummary(msgspec.Struct, frozen=True):
    name: str
    mean: list[float]
    std: list[float]
    # One list per quantile level of the range (its ``levels``), each over the horizon steps.
    quantiles: list[list[float]]


class ForecastSummary(msgspec.Struct, frozen=True):
    index: int
    origin: str
    timestamps: list[str]
    # The lane that computed it: "interactive" / "background".
    lane: str
    series: list[SeriesSummary]


class ForecastRange(msgspec.Struct, frozen=True):
    """A batch consumer's view of indices start..stop-1: numbers only, no paths or densities."""

    handle: str
    start: int
    stop: int
    model_version: str
    horizon: int
    levels: list[float]
    forecasts: list[ForecastSummary]


class ModelInfo(msgspec.Struct, frozen=True):
    version: str
    source: str
    device: str
    architecture: str
    context_length: int
    parameters: int


class Health(msgspec.Struct, frozen=True):
    status: str
    model_version: str
    device: str


class ForecastStats(msgspec.Struct, frozen=True):
    model: ModelInfo
    data_cache: CacheStats
    result_cache: CacheStats
    scheduler: SchedulerStats
    jobs: ForecastJobStats


class Stats(msgspec.Struct, frozen=True):
    uptime_s: float
    accepting: bool
    # The one device owner, shared by every job kind.
    device: DeviceStats
    # Forecast and KDE jobs (their fields at the top level, as before text generation came).
    model: ModelInfo
    data_cache: CacheStats
    result_cache: CacheStats
    scheduler: SchedulerStats
    forecast_jobs: ForecastJobStats
    # Text generation and embeddings; None when runtime.textgen.enabled is false.
    textgen: TextGenStats | None


def dataset_info(dataset: Dataset, *, precompute: bool, cached_results: int, background_remaining: int) -> DatasetInfo:
    return DatasetInfo(
        handle=dataset.handle,
        rows=dataset.rows,
        series=list(dataset.series_names),
        start=dataset.timestamps[0].isoformat(),
        end=dataset.timestamps[-1].isoformat(),
        step=dataset.step.describe(),
        first_index=dataset.first_index,
        last_index=dataset.last_index,
        precompute=precompute,
        cached_results=cached_results,
        background_remaining=background_remaining,
    )


def forecast_body(result: ForecastResult, dataset: Dataset, *, source: str, num_samples: int) -> Forecast:
    index, context = result.index, dataset.context_length
    horizon = result.series[0].mean.shape[0]
    history = slice(index - context + 1, index + 1)
    actual = slice(index + 1, min(index + 1 + horizon, dataset.rows))
    median_at = result.levels.index(0.5)
    series = []
    for column, (name, s) in enumerate(zip(dataset.series_names, result.series, strict=False)):
        bands = []
        for low in range(median_at):
            high = len(result.levels) - 1 - low
            bands.append(
                Band(
                    coverage=round(result.levels[high] - result.levels[low], 6),
                    lower=s.quantiles[low].tolist(),
                    upper=s.quantiles[high].tolist(),
                )
            )
        series.append(
            SeriesForecast(
                name=name,
                history=dataset.values[history, column].tolist(),
                actual=dataset.values[actual, column].tolist(),
                mean=s.mean.tolist(),
                std=s.std.tolist(),
                median=s.quantiles[median_at].tolist(),
                bands=bands,
                sample_paths=s.paths.tolist(),
                density_grid=s.grid.tolist(),
                density=s.density.tolist(),
            )
        )
    return Forecast(
        handle=result.handle,
        index=index,
        origin=dataset.timestamps[index].isoformat(),
        history_timestamps=[t.isoformat() for t in dataset.timestamps[history]],
        timestamps=[t.isoformat() for t in dataset.future_timestamps(index, horizon)],
        horizon=horizon,
        num_samples=num_samples,
        model_version=result.model_version,
        source=source,
        series=series,
    )


def range_body(results: list[ForecastResult], dataset: Dataset, *, start: int, stop: int) -> ForecastRange:
    horizon = results[0].series[0].mean.shape[0]
    forecasts = [
        ForecastSummary(
            index=result.index,
            origin=dataset.timestamps[result.index].isoformat(),
            timestamps=[t.isoformat() for t in dataset.future_timestamps(result.index, horizon)],
            lane=result.lane,
            series=[
                SeriesSummary(name=name, mean=s.mean.tolist(), std=s.std.tolist(), quantiles=s.quantiles.tolist())
                for name, s in zip(dataset.series_names, result.series, strict=False)
            ],
        )
        for result in results
    ]
    return ForecastRange(
        handle=dataset.handle,
        start=start,
        stop=stop,
        model_version=results[0].model_version,
        horizon=horizon,
        levels=list(results[0].levels),
        forecasts=forecasts,
    )

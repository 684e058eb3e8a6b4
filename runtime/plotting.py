"""The fan chart PNG: history, quantile bands, median, a few sample paths, and the kernel
density of each horizon step drawn sideways at its step (a ridge per step, behind the bands),
over the dataset's timestamps.

Rendered with matplotlib's object API (no pyplot global state), one figure at a time.
"""

from __future__ import annotations

import io
import threading
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from dropwire.runtime.forecast_schemas import Forecast

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_render_lock = threading.Lock()
# Width of the widest density ridge, in horizon steps.
RIDGE_WIDTH = 0.8


def fan_chart_png(forecast: Forecast) -> bytes:
    with _render_lock:
        buffer = io.BytesIO()
        fan_chart(forecast).savefig(buffer, format="png")
        return buffer.getvalue()


def fan_chart(forecast: Forecast) -> Figure:
    """The chart as a matplotlib Figure, one panel per series."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = len(forecast.series)
    figure = Figure(figsize=(10, 3.4 * count), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(count, 1, squeeze=False)[:, 0]
    past, ahead, step = _time_axis(forecast)
    for ax, series in zip(axes, forecast.series, strict=False):
        _draw_series(ax, series, forecast, past, ahead, step)
        _label_time(ax, dated=_dated(forecast))
    return figure


def _dated(forecast: Forecast) -> bool:
    return bool(forecast.history_timestamps) and len(forecast.timestamps) == forecast.horizon


def _time_axis(forecast: Forecast) -> tuple[np.ndarray, np.ndarray, float]:
    """x positions of the history and of the horizon steps, and one step's width: matplotlib
    date numbers from the dataset's timestamps, or steps from the origin where it has none."""
    from matplotlib.dates import date2num

    if _dated(forecast):
        past = date2num([datetime.fromisoformat(t) for t in forecast.history_timestamps])
        ahead = date2num([datetime.fromisoformat(t) for t in forecast.timestamps])
        step = float(ahead[0] - past[-1]) if len(ahead) else 1.0
        return np.asarray(past), np.asarray(ahead), step
    history = max(len(s.history) for s in forecast.series)
    return np.arange(-history + 1, 1, dtype=float), np.arange(1, forecast.horizon + 1, dtype=float), 1.0


def _draw_series(ax, series, forecast: Forecast, past: np.ndarray, ahead: np.ndarray,
                 step: float) -> None:
    # Drawn first and as outlines, the densities stay behind the bands instead of hiding them.
    for index, (x, grid, values) in enumerate(zip(ahead, series.density_grid, series.density, strict=False)):
        values = np.asarray(values)
        ridge = x + RIDGE_WIDTH * step * values / (values.max() or 1.0)
        ax.fill_betweenx(grid, x, ridge, color="tab:orange", alpha=0.12, linewidth=0, zorder=1)
        ax.plot(ridge, grid, color="tab:orange", linewidth=0.6, alpha=0.8, zorder=1,
                label="density at each step (KDE)" if index == 0 else None)
    ax.plot(past[-len(series.history):], series.history, color="black", linewidth=1.2, label="history", zorder=3)
    shades = np.linspace(0.15, 0.35, len(series.bands))
    for band, alpha in zip(series.bands, shades, strict=False):
        ax.fill_between(ahead, band.lower, band.upper, color="tab:blue", alpha=alpha, linewidth=0, zorder=2,
                        label=f"{band.coverage:.0%} band")
    for index, path in enumerate(series.sample_paths):
        ax.plot(ahead, path, color="tab:blue", alpha=0.3, linewidth=0.6, zorder=2,
                label="sample paths" if index == 0 else None)
    ax.plot(ahead, series.median, color="tab:blue", linewidth=1.6, label="median", zorder=3)
    if series.actual:
        ax.plot(ahead[: len(series.actual)], series.actual, "o", color="black", markersize=3, label="actual", zorder=4)
    # Frame the history and the widest band; the density grids reach further into the tails.
    shown = np.concatenate([series.history, series.bands[0].lower, series.bands[0].upper, series.actual]
                           if series.bands else [series.history, series.median, series.actual])
    margin = 0.1 * (np.ptp(shown) or 1.0)
    ax.set_ylim(shown.min() - margin, shown.max() + margin)
    ax.set_xlim(past[-len(series.history)] - 0.5 * step, ahead[-1] + (RIDGE_WIDTH + 0.2) * step)
    ax.axvline(ahead[0] - 0.5 * step, color="grey", linewidth=0.6, linestyle=":", label="forecast origin")
    ax.set_title(f"{series.name}: {forecast.horizon} steps after {forecast.origin} (index {forecast.index})")
    ax.set_ylabel(series.name)
    ax.legend(loc="upper left", fontsize=7, ncols=2, framealpha=0.8)


def _label_time(ax, dated: bool) -> None:
    if not dated:
        ax.set_xlabel("steps from the forecast origin")
        return
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel("time")

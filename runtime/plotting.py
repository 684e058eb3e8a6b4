"""The fan chart PNG: history, quantile bands, median, a few sample paths, and the kernel
density of each horizon step drawn sideways at its step (a ridge per step).

Rendered with matplotlib's object API (no pyplot global state), one figure at a time.
"""

from __future__ import annotations

import io
import threading

import numpy as np

from dropwire.runtime.schemas import Forecast

_render_lock = threading.Lock()
# Width of the widest density ridge, in horizon steps.
RIDGE_WIDTH = 0.8


def fan_chart_png(forecast: Forecast) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with _render_lock:
        count = len(forecast.series)
        figure = Figure(figsize=(10, 3.2 * count), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(count, 1, squeeze=False)[:, 0]
        for ax, series in zip(axes, forecast.series):
            _draw_series(ax, series, forecast)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()


def _draw_series(ax, series, forecast: Forecast) -> None:  # noqa: ANN001 (matplotlib Axes)
    past = np.arange(-len(series.history) + 1, 1)
    ahead = np.arange(1, forecast.horizon + 1)
    ax.plot(past, series.history, color="black", linewidth=1.2, label="history")
    shades = np.linspace(0.15, 0.35, len(series.bands))
    for band, alpha in zip(series.bands, shades):
        ax.fill_between(ahead, band.lower, band.upper, color="tab:blue", alpha=alpha, linewidth=0,
                        label=f"{band.coverage:.0%} band")
    for path in series.sample_paths:
        ax.plot(ahead, path, color="tab:blue", alpha=0.25, linewidth=0.6)
    ax.plot(ahead, series.median, color="tab:blue", linewidth=1.6, label="median")
    for step, (grid, values) in enumerate(zip(series.density_grid, series.density), start=1):
        values = np.asarray(values)
        ax.fill_betweenx(grid, step, step + RIDGE_WIDTH * values / (values.max() or 1.0), color="tab:orange",
                         alpha=0.35, linewidth=0)
    if series.actual:
        ax.plot(ahead[: len(series.actual)], series.actual, "o", color="black", markersize=3, label="actual")
    # Frame the history and the widest band; the density grids reach further into the tails.
    shown = np.concatenate([series.history, series.bands[0].lower, series.bands[0].upper, series.actual]
                           if series.bands else [series.history, series.median, series.actual])
    margin = 0.1 * (np.ptp(shown) or 1.0)
    ax.set_ylim(shown.min() - margin, shown.max() + margin)
    ax.axvline(0.5, color="grey", linewidth=0.6, linestyle=":")
    ax.set_title(f"{series.name}: {forecast.horizon} steps after {forecast.origin} (index {forecast.index})")
    ax.set_xlabel("steps from the forecast origin")
    ax.legend(loc="upper left", fontsize=7)

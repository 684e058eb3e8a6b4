"""Generated time series: the default model's training data, and demo/test/benchmark uploads.

Each series is a level, a trend, one or two seasonal waves and AR(1) noise, which is the
shape of most operational metrics; all randomness comes from the seed given.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

SEASONAL_PERIODS = (7, 12, 24, 48)


def generated_series(count: int, length: int, seed: int) -> np.ndarray:
    """``count`` series of ``length`` points, float64 [count, length]."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    out = np.empty((count, length))
    for row in range(count):
        level = rng.normal(0.0, 5.0)
        trend = rng.normal(0.0, 0.02)
        seasonal = np.zeros(length)
        for period in rng.choice(SEASONAL_PERIODS, size=rng.integers(1, 3), replace=False):
            seasonal += rng.uniform(0.5, 3.0) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        phi, sigma = rng.uniform(0.3, 0.9), rng.uniform(0.1, 1.0)
        noise = np.empty(length)
        noise[0] = rng.normal(0.0, sigma)
        shocks = rng.normal(0.0, sigma, size=length)
        for i in range(1, length):
            noise[i] = phi * noise[i - 1] + shocks[i]
        out[row] = level + trend * t + seasonal + noise
    return out


def generated_csv(rows: int, series: int = 1, seed: int = 0, start: datetime = datetime(2024, 1, 1)) -> bytes:
    """An hourly CSV upload: a ``timestamp`` column and ``series`` value columns."""
    values = generated_series(series, rows, seed)
    header = "timestamp," + ",".join(f"series_{k}" for k in range(series))
    lines = [header]
    for i in range(rows):
        stamp = (start + timedelta(hours=i)).isoformat()
        lines.append(stamp + "," + ",".join(f"{values[k, i]:.6g}" for k in range(series)))
    return ("\n".join(lines) + "\n").encode()

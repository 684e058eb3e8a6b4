"""The fan chart of a real forecast: every element named in the legend, the densities behind
the bands, a y-axis label, and the dataset's timestamps on the x axis."""

from __future__ import annotations

from datetime import datetime

import httpx
import msgspec
from matplotlib.collections import FillBetweenPolyCollection
from matplotlib.dates import ConciseDateFormatter, num2date

from dropwire.runtime.forecast_schemas import Forecast
from dropwire.runtime.plotting import fan_chart
from dropwire.runtime.synthetic import generated_csv


def test_the_fan_chart_explains_itself_over_the_datasets_timestamps(client: httpx.Client) -> None:
    handle = client.post("/datasets", content=generated_csv(60, series=2, seed=21), params={"precompute": False},
                         headers={"content-type": "text/csv"}).json()["handle"]
    forecast = msgspec.convert(client.get(f"/datasets/{handle}/forecasts/40").json(), Forecast)
    figure = fan_chart(forecast)
    assert len(figure.axes) == 2
    for ax, series in zip(figure.axes, forecast.series, strict=False):
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert {"density at each step (KDE)", "history", "median", "sample paths", "actual", "forecast origin",
                "90% band", "80% band", "50% band"} <= set(labels)
        assert ax.get_ylabel() == series.name
        assert isinstance(ax.xaxis.get_major_formatter(), ConciseDateFormatter) and ax.get_xlabel() == "time"
        # The x axis spans the history's first timestamp to the horizon's last.
        low, high = (num2date(x).replace(tzinfo=None) for x in ax.get_xlim())
        assert low < datetime.fromisoformat(forecast.history_timestamps[0])
        assert high > datetime.fromisoformat(forecast.timestamps[-1])
        fills = [c for c in ax.collections if isinstance(c, FillBetweenPolyCollection)]
        bands = [c for c in fills if c.get_label().endswith("band")]
        ridges = [c for c in fills if not c.get_label().endswith("band")]
        assert len(bands) == 3 and len(ridges) == forecast.horizon
        assert max(r.get_zorder() for r in ridges) < min(b.get_zorder() for b in bands)
        assert max(r.get_alpha() for r in ridges) < min(b.get_alpha() for b in bands)
    client.delete(f"/datasets/{handle}")

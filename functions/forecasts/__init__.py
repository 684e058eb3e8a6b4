"""Forecast precomputation: `forecasts/<name>.csv` dropped into the bucket is forecast on the
runtime at background priority (handlers); the forecaster itself lives in the runtime."""

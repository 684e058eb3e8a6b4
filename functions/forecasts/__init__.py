"""Forecast precomputation: `forecasts/<name>.csv` dropped into the bucket is forecast on the
runtime at background priority (handlers); the forecaster itself lives in the runtime."""


# The domain as a plug-in (functions/platform/domain.py): catalog.py lists it.
from dropwire.functions.platform.domain import Domain

DOMAIN = Domain("forecasts", handlers="dropwire.functions.forecasts.handlers")

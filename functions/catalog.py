"""The product's functions, and the HTTP API the gateway mounts beside them: what `dropwire
emulate` serves by default (settings.functions)."""

from __future__ import annotations

from functions import evaluation_api, evaluation_flow, forecasts
from functions.platform import FunctionRegistry

functions = FunctionRegistry()
forecasts.register(functions)
evaluation_flow.register(functions)
functions.http_api(evaluation_api.build_router)

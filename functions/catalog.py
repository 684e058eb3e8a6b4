"""The product's functions: what `dropwire emulate` serves by default (settings.functions)."""

from __future__ import annotations

from functions import evaluation_flow, forecasts
from functions.platform import FunctionRegistry

functions = FunctionRegistry()
forecasts.register(functions)
evaluation_flow.register(functions)

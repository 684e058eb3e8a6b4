"""The product's functions, and the HTTP API the gateway mounts beside them: what `dropwire
emulate` serves by default (settings.functions)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from dropwire.functions.batches import handlers as batches_handlers
from dropwire.functions.curation import handlers as curation_handlers
from dropwire.functions.evaluation import handlers as evaluation_handlers
from dropwire.functions.forecasts import handlers as forecast_handlers
from dropwire.functions.platform.registry import FunctionRegistry
from dropwire.functions.training_analysis import handlers as training_handlers
from dropwire.functions.workflow import handlers as workflow_handlers

if TYPE_CHECKING:
    from dropwire.functions.platform.api_ports import ApiFactory


def _api(module: str) -> ApiFactory:
    """The `build_router` of an API module, imported when the gateway builds it: every handler
    process loads this catalog too, and has no use for the routers (Litestar, the API code)."""

    def build_router(ports):
        return importlib.import_module(module).build_router(ports)

    build_router.__qualname__ = f"{module}.build_router"
    return build_router


functions = FunctionRegistry()
forecast_handlers.register(functions)
evaluation_handlers.register(functions)
batches_handlers.register(functions)
functions.http_api(_api("dropwire.functions.evaluation.api"))
training_handlers.register(functions)
functions.http_api(_api("dropwire.functions.training_analysis.api"))
functions.http_api(_api("dropwire.functions.batches.api"))
curation_handlers.register(functions)
workflow_handlers.register(functions)
functions.http_api(_api("dropwire.functions.workflow.api"))
functions.http_api(_api("dropwire.functions.quota.api"))

"""The product's functions, and the HTTP API the gateway mounts beside them: what `dropwire
emulate` serves by default (settings.functions)."""

from __future__ import annotations

from dropwire.functions.batches import api as batches_api
from dropwire.functions.batches import handlers as batches_handlers
from dropwire.functions.curation import handlers as curation_handlers
from dropwire.functions.evaluation import api as evaluation_api
from dropwire.functions.evaluation import handlers as evaluation_handlers
from dropwire.functions.forecasts import handlers as forecast_handlers
from dropwire.functions.platform.registry import FunctionRegistry
from dropwire.functions.quota import api as quota_api
from dropwire.functions.workflow import api as workflow_api
from dropwire.functions.workflow import handlers as workflow_handlers
from dropwire.functions.training_analysis import api as training_api
from dropwire.functions.training_analysis import handlers as training_handlers

functions = FunctionRegistry()
forecast_handlers.register(functions)
evaluation_handlers.register(functions)
batches_handlers.register(functions)
functions.http_api(evaluation_api.build_router)
training_handlers.register(functions)
functions.http_api(training_api.build_router)
functions.http_api(batches_api.build_router)
curation_handlers.register(functions)
workflow_handlers.register(functions)
functions.http_api(workflow_api.build_router)
functions.http_api(quota_api.build_router)

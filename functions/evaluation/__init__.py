"""Model evaluation (seed 1): the workflow handlers fired by files in the bucket (handlers),
its HTTP API under /api (api), the use-case and model state machines (states), and the pure
evaluation core (core: config, readers, quality check, metrics, report, MLflow)."""


# The domain as a plug-in (functions/platform/domain.py): catalog.py lists it.
from dropwire.functions.evaluation import states as _states
from dropwire.functions.platform.domain import Domain

DOMAIN = Domain("evaluation", handlers="dropwire.functions.evaluation.handlers", api="dropwire.functions.evaluation.api",
                machines=_states.MACHINES)

"""Model evaluation (seed 1): the workflow handlers fired by files in the bucket (handlers),
its HTTP API under /api (api), the use-case and model state machines (states), and the pure
evaluation core (core: config, readers, quality check, metrics, report, MLflow)."""

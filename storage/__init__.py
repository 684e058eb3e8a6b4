"""Persistence only: DuckDB state store and migrations, durable queue, history, dead letters,
Parquet results, object store access. Nothing here imports a handler."""

"""Settings of training analysis (the ``training`` section of the product's settings:
``DROPWIRE_TRAINING__MAX_CONCURRENT_ANALYSES=4``)."""

from __future__ import annotations

import msgspec


class TrainingAnalysisSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Analyses the API runs at once (sync and async together); more are answered 429.
    max_concurrent_analyses: int = 10
    # Retry-After of a 429 (too many analyses) and of a 503 (MLflow unreachable).
    busy_retry_after_seconds: int = 5
    mlflow_retry_after_seconds: int = 30
    # How long the tracking server may take to answer before it counts as unreachable.
    mlflow_timeout_seconds: float = 10.0
    # A sync request waits this long for its analysis, then answers 202 and the client polls:
    # under the client's 60 s request timeout, so a slow analysis is never requested twice.
    sync_wait_seconds: float = 50.0
    # The knowledge-base answer cache.
    knowledge_cache_ttl_seconds: float = 24 * 3600.0
    knowledge_cache_max_entries: int = 1000

    def __post_init__(self) -> None:
        if self.max_concurrent_analyses < 1 or self.knowledge_cache_max_entries < 1:
            raise ValueError("training.max_concurrent_analyses and training.knowledge_cache_max_entries must be at least 1")
        if self.sync_wait_seconds <= 0 or self.mlflow_timeout_seconds <= 0 or self.knowledge_cache_ttl_seconds <= 0:
            raise ValueError("training.sync_wait_seconds, mlflow_timeout_seconds and knowledge_cache_ttl_seconds must be positive")

"""The store's sections of the settings (queue, database); the emulator's Settings composes them."""

from __future__ import annotations

import re

import msgspec

_SIZE = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$", re.IGNORECASE)


class DatabaseSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # DuckDB's memory limit (its buffer cache of the file, and working memory past which it
    # spills to temporary files). DuckDB's own default is 80% of the machine's memory, so
    # the cache grew with every large batch the control plane recorded (1.07x a 200 MB file).
    memory_limit: str = "64MB"
    # DuckDB's worker threads; 0 keeps DuckDB's default (one per core).
    threads: int = 0

    def __post_init__(self) -> None:
        if not _SIZE.match(self.memory_limit.strip()):
            raise ValueError(f"database.memory_limit must be a size like '64MB' or '1GiB', got {self.memory_limit!r}")
        if self.threads < 0:
            raise ValueError("database.threads must be 0 (DuckDB's default) or more")

    def duckdb_config(self) -> dict[str, str]:
        config = {"memory_limit": self.memory_limit}
        if self.threads:
            config["threads"] = str(self.threads)
        return config


class QueueSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Worker threads in this process; 0 lets an emulator leave the work to `dropwire worker`s.
    workers: int = 4
    # A worker claims about claim_batch_seconds of work at once, judged by the recent mean task
    # duration: one long task, or up to max_prefetch short ones (so short tasks share group
    # commits: every claim waits for a durable commit, ~5-25 ms here, so the cap bounds what a
    # worker can take per commit; 256 gave 1.1-1.7x the no-op throughput of 64 in one run).
    # Claimed tasks it has not started are released on stop.
    max_prefetch: int = 256
    claim_batch_seconds: float = 0.1
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    max_attempts: int = 5
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    # How long after it was queued a task may wait for its prerequisite (e.g. a config whose
    # use case has not landed yet): re-run when that commits, else re-checked with the
    # backoff above; past this it is refused with the handler's message.
    wait_max_seconds: float = 600.0
    # Largest number of operations one group commit takes.
    max_batch: int = 2000
    # Longest the writer sleeps before looking for expired leases and due tasks.
    reap_interval_seconds: float = 0.2

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError("queue.workers must be 0 or more")
        if self.max_prefetch < 1 or self.max_attempts < 1 or self.max_batch < 1:
            raise ValueError("queue.max_prefetch, max_attempts and max_batch must be at least 1")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("queue.heartbeat_seconds must be shorter than queue.lease_seconds")
        if self.wait_max_seconds < 0:
            raise ValueError("queue.wait_max_seconds must be 0 or more (0: a missing prerequisite is refused at once)")

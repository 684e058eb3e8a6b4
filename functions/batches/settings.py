"""The batches domain's settings (section `batches` of the product's settings:
DROPWIRE_BATCHES__<FIELD>). Handlers and the API get them as `config["batches"]`."""

from __future__ import annotations

from typing import Any

import msgspec

MB = 1024 * 1024


class BatchSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # OpenAI's limits: an input file holds at most this many lines and bytes.
    max_lines: int = 50_000
    max_bytes: int = 200 * MB
    # Lines per queued chunk task (the seed used 5,000).
    chunk_lines: int = 5_000
    # Windows a batch may ask for; the first is the default of file-dropped batches.
    completion_windows: list[str] = msgspec.field(default_factory=lambda: ["24h"])
    # Where lines run: an OpenAI-compatible base URL (empty: the runtime's own /v1), and
    # per-model upstreams as "model=base_url" (e.g. "gpt-4o-mini=https://api.example/v1").
    base_url: str = ""
    upstreams: list[str] = []
    upstream_api_token: str = ""
    # Models a batch may name; empty: whatever GET {base_url}/models lists, plus the upstreams'.
    models: list[str] = []
    # A chunk holds a worker at most about this long, then the rest of it is queued again.
    slice_seconds: float = 15.0
    # Lines of one chunk in flight at once, and how often finished lines are saved (a kill -9
    # computes again at most what was not saved). Each save is one group commit of the store,
    # whose fixed cost, not the lines, was most of the control plane's work at 32 lines a save.
    concurrency: int = 8
    save_every_lines: int = 256
    save_every_seconds: float = 0.25
    # One line's HTTP call: timeout, then retries on 408/429/5xx and connection errors with
    # backoff between half and all of base·2^(n−1), capped, or what Retry-After says.
    request_timeout_seconds: float = 120.0
    max_attempts: int = 4
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    # The metered service (section quota.services) each line acquires its budget from.
    quota_service: str = "batch-upstream"
    # A worker whose last beat is older than this is shown as not alive.
    heartbeat_alive_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("chunk_lines", "max_lines", "max_bytes", "concurrency", "save_every_lines", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"batches.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("slice_seconds", "save_every_seconds", "request_timeout_seconds", "heartbeat_alive_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"batches.{name} must be more than 0 seconds, got {getattr(self, name)}")
        if self.retry_base_seconds < 0 or self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError(f"batches.retry_base_seconds ({self.retry_base_seconds}) must be >= 0 and at most "
                             f"batches.retry_max_seconds ({self.retry_max_seconds})")
        if not self.completion_windows or any(window_seconds(w) is None for w in self.completion_windows):
            raise ValueError(f"batches.completion_windows must be durations like '24h' or '90s', got {self.completion_windows}")
        for entry in self.upstreams:
            model, _, url = entry.partition("=")
            if not model or "://" not in url:
                raise ValueError(f"batches.upstreams entries are 'model=base_url', got {entry!r}")

    def upstream_urls(self) -> dict[str, str]:
        return dict(entry.split("=", 1) for entry in self.upstreams)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> float | None:
    """'24h' -> 86400.0; None for anything that is not <number><s|m|h|d>."""
    number, unit = window[:-1], window[-1:]
    if unit not in _UNITS or not number.isdigit() or int(number) <= 0:
        return None
    return float(int(number) * _UNITS[unit])


def batch_settings(config: dict[str, Any]) -> BatchSettings:
    return msgspec.convert(config.get("batches", {}), BatchSettings)

"""The runtime's section of the settings; the emulator's Settings composes it.

Every field reads ``DROPWIRE_RUNTIME__<FIELD>``. Paths left empty derive from the product's
data directory; the caller resolves them (the runtime never imports the emulator).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Positive = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Coverage = Annotated[float, msgspec.Meta(gt=0, lt=1)]

MIB = 1024 * 1024


class RuntimeSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8765
    # "auto" picks CUDA when present, else CPU.
    device: str = "auto"
    # Intra-op CPU threads of torch; 0 keeps torch's default (all cores). On a CPU shared
    # with other work, 1 avoids threads spinning against each other.
    torch_threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    log_level: str = "info"

    # Which model to serve, first match wins: a registered MLflow model (name, and version or
    # empty for the latest), else a state_dict file (meta JSON beside it), else the default
    # model under the data dir, trained on generated data on first start.
    model_name: str = ""
    model_version: str = ""
    model_path: str = ""
    # Where `dropwire runtime train` logs and registers.
    registered_model_name: str = "dropwire-forecaster"
    mlflow_experiment: str = "dropwire-forecaster"
    # Optimiser steps of the default model; a few seconds on one CPU core.
    default_model_train_steps: Positive = 600
    seed: int = 0

    # Forecast shape: steps ahead, sample paths per series, density grid points per step.
    horizon: Positive = 24
    num_samples: Annotated[int, msgspec.Meta(ge=2)] = 1000
    grid_points: Annotated[int, msgspec.Meta(ge=2)] = 256
    # Sample paths kept in a result for the plot (the rest only feed the density and bands).
    plot_paths: Annotated[int, msgspec.Meta(ge=0)] = 20
    # Central quantile bands of the fan chart, as coverages.
    band_coverages: tuple[Coverage, ...] = (0.5, 0.8, 0.9)

    # Scheduling. A background batch yields to interactive work between device steps, so a
    # click waits for at most one step of it.
    batch_size: Positive = 16
    background_chunk: Positive = 4
    request_timeout_s: PositiveFloat = 30.0
    # Most indices one background range request may wait for.
    max_range_indices: Positive = 256
    shutdown_timeout_s: PositiveFloat = 10.0

    # Caches, bounded by the bytes of what they hold.
    data_cache_max_bytes: Positive = 512 * MIB
    result_cache_max_bytes: Positive = 512 * MIB

    # Input limits.
    max_upload_bytes: Positive = 50 * MIB
    max_series: Positive = 32

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")

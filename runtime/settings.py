"""The runtime's section of the settings; the emulator's Settings composes it.

Every field reads ``DROPWIRE_RUNTIME__<FIELD>``. Paths left empty derive from the product's
data directory; the caller resolves them (the runtime never imports the emulator).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Positive = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Coverage = Annotated[float, msgspec.Meta(gt=0, lt=1)]

MIB = 1024 * 1024


class TextModelSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One served language model: a local Hugging Face model directory."""

    # The id clients send as "model" (and GET /v1/models lists).
    name: str
    path: str
    # generate: /v1/chat/completions and /v1/completions; embed: /v1/embeddings.
    task: Literal["generate", "embed"] = "generate"
    # vllm: vLLM's engine (the optional extra `vllm`, CUDA only); transformers otherwise.
    backend: Literal["transformers", "vllm"] = "transformers"

    def __post_init__(self) -> None:
        if not self.name or not self.path:
            raise ValueError("each runtime.textgen.models entry needs a name and a path")
        if self.backend == "vllm" and self.task != "generate":
            raise ValueError(f"model {self.name!r}: the vllm backend serves task 'generate' only")


class TextGenSettings(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Text generation and embeddings (OpenAI-compatible /v1 endpoints) on the runtime."""

    enabled: bool = True
    # The models served. Empty: the embedded test models (a tiny causal LM and its embedding
    # twin), built and trained under the data dir at first start; not a real language model.
    # From the environment as JSON: '[{"name": "m", "path": "/models/m"}]'.
    models: list[TextModelSettings] = []
    # Weights' dtype on the device; "auto" keeps the dtype the model directory declares.
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = "float32"
    # Optimiser steps of the embedded test model (a few seconds on one CPU core).
    default_model_train_steps: Positive = 150
    # Sequences decoded together per lane (the padded KV-cache batch).
    max_batch_sequences: Positive = 16
    # Decode steps of one background device step: an interactive request waits at most that.
    background_decode_steps: Positive = 4
    # Background sequences one prefill admits: a prefill of many newcomers is the longest
    # background step, which an interactive request arriving meanwhile waits for.
    background_admit_sequences: Positive = 4
    # Inputs embedded together in one device step.
    max_embedding_batch: Positive = 32
    # max_tokens when a request gives none (capped by what the context leaves).
    default_max_tokens: Positive = 256
    max_choices: Positive = 8
    # Longest wait for a generation; a request past it stops consuming the device.
    request_timeout_s: PositiveFloat = 300.0
    # An upstream's rate limit, as OpenAI answers it: at most this many POST /v1 requests per
    # rate_limit_window_s (sliding), each answer with x-ratelimit-* headers, past it 429 with
    # Retry-After. 0: no limit.
    rate_limit_requests: Annotated[int, msgspec.Meta(ge=0)] = 0
    rate_limit_window_s: PositiveFloat = 60.0


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
    # After interactive work the device waits this long before background work: a client's
    # next request (or its neighbour's) then starts at once, on a CPU the background isn't
    # using. Costs background throughput only while interactive requests keep coming (about
    # half with a client calling back to back); 0 turns it off.
    interactive_grace_ms: Annotated[float, msgspec.Meta(ge=0)] = 3.0
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

    textgen: TextGenSettings = msgspec.field(default_factory=TextGenSettings)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")

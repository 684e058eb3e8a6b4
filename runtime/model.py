"""The forecaster: an autoregressive MLP with a Gaussian head, and its on-disk form.

On disk a model is a state_dict file (``NAME.pt``, read with ``weights_only=True`` so nothing
is unpickled) and a metadata file beside it (``NAME.json``) holding what is needed to rebuild
the module. The model works on standardized values: each series is scaled by its dataset's
own mean and standard deviation (the data cache's scaler) before it reaches the model.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec
import torch
from torch import nn
from torch.nn import functional as F

from dropwire.runtime.errors import ModelLoadError

ARCHITECTURE = "ar-mlp-gaussian"
# Keeps the predicted spread away from zero, where the likelihood would blow up.
MIN_SIGMA = 1e-3


class ModelMeta(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    architecture: Literal["ar-mlp-gaussian"] = ARCHITECTURE
    context_length: int
    hidden_size: int
    num_layers: int
    scaling: Literal["per-series-standardize"] = "per-series-standardize"
    trained_on: str
    train_steps: int
    final_loss: float
    seed: int
    created_at: str = msgspec.field(default_factory=lambda: datetime.now(UTC).isoformat())


class Forecaster(nn.Module):
    """Maps the last ``context_length`` standardized values to a Gaussian for the next one."""

    def __init__(self, context_length: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = context_length
        for _ in range(num_layers):
            # ReLU: on CPU, GELU's erf cost as much as the matrix products of this small net.
            layers += [nn.Linear(width, hidden_size), nn.ReLU()]
            width = hidden_size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2)

    def forward(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.body(window))
        # Predicting the change from the last value keeps an untrained model near persistence.
        mu = window[:, -1] + out[:, 0]
        sigma = F.softplus(out[:, 1]) + MIN_SIGMA
        return mu, sigma


def build(meta: ModelMeta) -> Forecaster:
    return Forecaster(meta.context_length, meta.hidden_size, meta.num_layers)


@dataclass(frozen=True)
class LoadedModel:
    module: Forecaster
    meta: ModelMeta
    # Part of every result cache key: a different model never answers from old results.
    version: str
    source: str
    device: torch.device

    @property
    def context_length(self) -> int:
        return self.meta.context_length

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"runtime.device is {name!r} but CUDA is not available on this machine")
    return device


def meta_path_for(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def save_model(module: Forecaster, meta: ModelMeta, weights_path: Path) -> None:
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}
    # Write then rename, so a crash never leaves a half-written model behind.
    tmp_weights = weights_path.with_suffix(".pt.tmp")
    tmp_meta = weights_path.with_suffix(".json.tmp")
    torch.save(state, tmp_weights)
    tmp_meta.write_bytes(msgspec.json.format(msgspec.json.encode(meta)))
    tmp_meta.replace(meta_path_for(weights_path))
    tmp_weights.replace(weights_path)


def load_model(weights_path: Path, device: torch.device, *, version: str | None = None, source: str = "") -> LoadedModel:
    """Rebuild the module from its metadata and load the state_dict; every failure is a
    ModelLoadError naming the file and what is wrong with it."""
    meta_path = meta_path_for(weights_path)
    if not weights_path.is_file():
        raise ModelLoadError(f"model file {weights_path} does not exist")
    if not meta_path.is_file():
        raise ModelLoadError(f"model metadata {meta_path} does not exist (it must sit beside {weights_path.name})")
    try:
        meta = msgspec.json.decode(meta_path.read_bytes(), type=ModelMeta)
    except msgspec.DecodeError as exc:
        raise ModelLoadError(f"model metadata {meta_path} is not valid: {exc}") from None
    raw = weights_path.read_bytes()
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise ModelLoadError(f"model file {weights_path} is not a readable state_dict: {exc}".splitlines()[0]) from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"model file {weights_path} holds a {type(state).__name__}, expected a state_dict")
    module = build(meta)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise ModelLoadError(
            f"model file {weights_path} does not match its metadata ({ARCHITECTURE}, context "
            f"{meta.context_length}, hidden {meta.hidden_size}, layers {meta.num_layers}): "
            f"{' '.join(line.strip() for line in first[:2])}"
        ) from None
    module.to(device).eval()
    return LoadedModel(
        module=module,
        meta=meta,
        version=version or f"sha256:{hashlib.sha256(raw).hexdigest()[:16]}",
        source=source or str(weights_path),
        device=device,
    )

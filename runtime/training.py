"""Training the forecaster: on generated data (the default model) or on an uploaded CSV.

Gaussian negative log-likelihood of the next standardized value given the last
``context_length``, on random windows of every series. Deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dropwire.runtime.errors import TrainingError
from dropwire.runtime.model import Forecaster, ModelMeta, save_model
from dropwire.runtime.synthetic import generated_series

DEFAULT_CONTEXT_LENGTH = 32
DEFAULT_HIDDEN_SIZE = 64
DEFAULT_NUM_LAYERS = 2
BATCH_SIZE = 512
LEARNING_RATE = 3e-3
# Generated data of the default model: enough variety to generalise, small enough to be quick.
DEFAULT_TRAIN_SERIES = 64
DEFAULT_TRAIN_LENGTH = 512


@dataclass(frozen=True)
class TrainedModel:
    module: Forecaster
    meta: ModelMeta
    losses: list[float]  # mean loss of each logging interval


def train(
    series: Sequence[np.ndarray],
    *,
    context_length: int,
    hidden_size: int,
    num_layers: int,
    steps: int,
    seed: int,
    trained_on: str,
    learning_rate: float = LEARNING_RATE,
    log_every: int = 100,
    on_progress: Callable[[int, float], None] | None = None,
) -> TrainedModel:
    """Train on standardized 1-D series (each at least ``context_length + 1`` long)."""
    windows = [
        np.lib.stride_tricks.sliding_window_view(np.asarray(s, dtype=np.float32), context_length + 1)
        for s in series
        if len(s) > context_length
    ]
    if not windows:
        raise TrainingError(
            f"no training windows: every series needs more than {context_length} points (the context length)"
        )
    data = torch.from_numpy(np.concatenate(windows))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    module = Forecaster(context_length, hidden_size, num_layers)
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    losses: list[float] = []
    running = 0.0
    for step in range(1, steps + 1):
        batch = data[torch.randint(len(data), (BATCH_SIZE,), generator=generator)]
        mu, sigma = module(batch[:, :-1])
        loss = (0.5 * ((batch[:, -1] - mu) / sigma) ** 2 + torch.log(sigma)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            interval = log_every if step % log_every == 0 else step % log_every
            losses.append(running / interval)
            running = 0.0
            if on_progress:
                on_progress(step, losses[-1])
    if not np.isfinite(losses[-1]):
        raise TrainingError(f"training diverged (loss {losses[-1]}); try fewer steps or other data")
    module.eval()
    meta = ModelMeta(
        context_length=context_length,
        hidden_size=hidden_size,
        num_layers=num_layers,
        trained_on=trained_on,
        train_steps=steps,
        final_loss=float(losses[-1]),
        seed=seed,
    )
    return TrainedModel(module=module, meta=meta, losses=losses)


def standardize(series: np.ndarray) -> np.ndarray:
    std = series.std()
    return (series - series.mean()) / (std if std > 0 else 1.0)


def train_default_model(
    weights_path: Path,
    *,
    steps: int,
    seed: int,
    context_length: int = DEFAULT_CONTEXT_LENGTH,
    hidden_size: int = DEFAULT_HIDDEN_SIZE,
    num_layers: int = DEFAULT_NUM_LAYERS,
) -> TrainedModel:
    """Train on generated series and save as state_dict + metadata at ``weights_path``."""
    raw = generated_series(DEFAULT_TRAIN_SERIES, DEFAULT_TRAIN_LENGTH, seed)
    trained = train(
        [standardize(row) for row in raw],
        context_length=context_length,
        hidden_size=hidden_size,
        num_layers=num_layers,
        steps=steps,
        seed=seed,
        trained_on=f"generated:{DEFAULT_TRAIN_SERIES}x{DEFAULT_TRAIN_LENGTH}:seed={seed}",
    )
    save_model(trained.module, trained.meta, weights_path)
    return trained

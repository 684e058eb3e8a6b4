"""Which model the runtime serves, and loading it (the start-up step that may fail).

First match wins: a registered MLflow model (``runtime.model_name``), else a state_dict
file (``runtime.model_path``), else the default model under the data dir, trained on
generated data when it does not exist yet. A configured model that cannot be loaded is an
error, never a silent fallback to the default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dropwire.runtime.model import LoadedModel, load_model, resolve_device
from dropwire.runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class ModelSource:
    registered_name: str
    registered_version: str
    tracking_uri: str
    path: Path | None
    default_path: Path
    default_train_steps: int
    seed: int

    @classmethod
    def from_settings(cls, settings: RuntimeSettings, *, default_path: Path, tracking_uri: str) -> ModelSource:
        """``default_path`` and ``tracking_uri`` are resolved by the caller from the data dir."""
        return cls(
            registered_name=settings.model_name,
            registered_version=settings.model_version,
            tracking_uri=tracking_uri,
            path=Path(settings.model_path).expanduser() if settings.model_path else None,
            default_path=default_path,
            default_train_steps=settings.default_model_train_steps,
            seed=settings.seed,
        )

    def describe(self) -> str:
        if self.registered_name:
            return f"registered model {self.registered_name!r} version {self.registered_version or 'latest'}"
        if self.path is not None:
            return f"model file {self.path}"
        return f"default model {self.default_path}"


def open_model(source: ModelSource, device_name: str, log: logging.Logger) -> LoadedModel:
    device = resolve_device(device_name)
    if source.registered_name:
        from dropwire.runtime.model_registry import fetch_registered

        weights, version = fetch_registered(
            tracking_uri=source.tracking_uri, name=source.registered_name, version=source.registered_version
        )
        label = f"{source.registered_name}/{version}"
        return load_model(weights, device, version=label, source=f"mlflow:{label}")
    if source.path is not None:
        return load_model(source.path, device)
    if not source.default_path.exists():
        from dropwire.runtime.training import train_default_model

        log.info("no default model at %s yet: training one on generated data", source.default_path)
        trained = train_default_model(source.default_path, steps=source.default_train_steps, seed=source.seed)
        log.info("default model trained: final loss %.4f", trained.meta.final_loss)
    return load_model(source.default_path, device)

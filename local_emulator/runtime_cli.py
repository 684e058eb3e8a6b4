"""`dropwire runtime ...`: serve the forecast runtime, train and register a model, make the
default model. The runtime's modules are imported inside each command: they pull in torch,
which would slow down every other `dropwire` command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dropwire.functions.kit.errors import DropwireError
from dropwire.local_emulator.cli_context import console, current_settings

if TYPE_CHECKING:
    from dropwire.local_emulator.settings import Settings

runtime_app = typer.Typer(
    help="The forecast runtime: serve it, train and register a model, make the default model.",
    no_args_is_help=True,
)


class DataFileError(DropwireError):
    code = "data_file"


def _model_source(settings: Settings):
    from dropwire.runtime.model_source import ModelSource

    return ModelSource.from_settings(
        settings.runtime, default_path=settings.default_model_path, tracking_uri=settings.mlflow_uri
    )


@runtime_app.command("serve")
def serve() -> None:
    """Serve the runtime over HTTP until SIGTERM/SIGINT (exits 1 if the model cannot load)."""
    from dropwire.runtime.server import serve as run_server

    settings = current_settings()
    run_server(settings.runtime, _model_source(settings), text_model_dir=settings.default_text_model_path)


@runtime_app.command("serve-ray")
def serve_ray(
    ray_address: str = typer.Option("", help="Ray cluster address (host:port); default: executor.ray_address."),
    replicas: int = typer.Option(1, min=1, help="Replicas, each with its own two lanes."),
    cpus: float = typer.Option(1.0, min=0, help="CPUs per replica."),
    gpus: float = typer.Option(0.0, min=0, help="GPUs per replica."),
) -> None:
    """Deploy the runtime on a Ray cluster with Ray Serve (same HTTP contract, on runtime.host and
    runtime.port), until SIGTERM/SIGINT; then the deployment is removed."""
    import ray

    from dropwire.local_emulator.control_plane import stop_on_signals
    from dropwire.runtime import ray_serve

    settings = current_settings()
    address = ray_address or settings.executor.ray_address
    try:
        ray.init(address=address, namespace="dropwire", configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise DropwireError(f"the Ray cluster at {address} does not answer: {str(exc).splitlines()[0]}") from None
    stop = stop_on_signals()
    try:
        url = ray_serve.deploy(settings.runtime, _model_source(settings), text_model_dir=settings.default_text_model_path,
                               replicas=replicas, cpus_per_replica=cpus,
                               gpus_per_replica=gpus)
        console.print(f"runtime on Ray Serve at {url} ({replicas} replica(s)). Ctrl-C removes it.", highlight=False)
        stop.wait()
        ray_serve.undeploy()
    finally:
        ray.shutdown()


@runtime_app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="Time-series CSV: a timestamp column and value columns."),
    steps: int = typer.Option(1500, min=1, help="Optimiser steps."),
    context_length: int = typer.Option(32, min=2, help="Past values the model sees."),
    hidden_size: int = typer.Option(64, min=1),
    num_layers: int = typer.Option(2, min=1),
    name: str = typer.Option("", help="Registered model name (default: runtime.registered_model_name)."),
) -> None:
    """Train the forecaster on a CSV, log the run to MLflow and register a model version."""
    from dropwire.runtime.dataset import parse_csv
    from dropwire.runtime.model_registry import log_and_register
    from dropwire.runtime.training import train as train_model

    settings = current_settings()
    rt = settings.runtime
    if not data.is_file():
        raise DataFileError(f"--data {data} is not a file")
    dataset = parse_csv(data.read_bytes(), context_length=context_length + 1, max_series=rt.max_series)
    log_every = max(1, steps // 20)
    trained = train_model(
        [dataset.scaled[:, k].numpy() for k in range(len(dataset.series_names))],
        context_length=context_length,
        hidden_size=hidden_size,
        num_layers=num_layers,
        steps=steps,
        seed=rt.seed,
        trained_on=f"file:{data.name}:sha256={dataset.handle}",
        log_every=log_every,
        on_progress=lambda step, loss: console.print(f"step {step:>6}  nll {loss:.4f}", highlight=False),
    )
    settings.data_path.mkdir(parents=True, exist_ok=True)
    model_name = name or rt.registered_model_name
    run_id, version = log_and_register(
        trained,
        tracking_uri=settings.mlflow_uri,
        artifact_location=settings.mlflow_artifact_location,
        experiment=rt.mlflow_experiment,
        model_name=model_name,
        params={
            "architecture": trained.meta.architecture,
            "context_length": context_length,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "steps": steps,
            "seed": rt.seed,
            "data": data.name,
            "data_sha256": dataset.handle,
            "rows": dataset.rows,
            "series": len(dataset.series_names),
        },
        log_every=log_every,
    )
    console.print(
        f"registered {model_name!r} version {version} (run {run_id}, final nll {trained.meta.final_loss:.4f}).\n"
        f"Serve it with DROPWIRE_RUNTIME__MODEL_NAME={model_name} DROPWIRE_RUNTIME__MODEL_VERSION={version}",
        highlight=False,
    )


@runtime_app.command("make-default-model")
def make_default_model(
    force: bool = typer.Option(False, "--force", help="Retrain even if it exists."),
) -> None:
    """Train the default model on generated data (a few seconds on CPU) under the data dir."""
    from dropwire.runtime.training import train_default_model

    settings = current_settings()
    path = settings.default_model_path
    if path.exists() and not force:
        console.print(f"default model already at {path} (use --force to retrain)", highlight=False)
        return
    trained = train_default_model(path, steps=settings.runtime.default_model_train_steps, seed=settings.runtime.seed)
    console.print(f"default model written to {path} (final nll {trained.meta.final_loss:.4f})", highlight=False)

"""MLflow: log a trained forecaster as a run and a registered model version; fetch one back.

The artifacts are the state_dict and its metadata JSON (not a pickled model), so loading a
registered version never unpickles anything. mlflow is imported here only, on use: it is
slow to import and serving a file-based model does not need it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dropwire.runtime.errors import ModelLoadError, TrainingError
from dropwire.runtime.model import meta_path_for, save_model
from dropwire.runtime.training import TrainedModel

ARTIFACT_DIR = "forecaster"
WEIGHTS_FILE = "forecaster.pt"


def log_and_register(
    trained: TrainedModel,
    *,
    tracking_uri: str,
    artifact_location: str | None,
    experiment: str,
    model_name: str,
    params: dict[str, object],
    log_every: int,
) -> tuple[str, str]:
    """Log the run and register its artifacts as a new version: (run id, version)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from dropwire.functions.kit.tracking import tracking_client

    client = tracking_client(tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found
            else client.create_experiment(experiment, artifact_location=artifact_location)
        )
        mlflow.set_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory() as folder, mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_params(params)
            for position, loss in enumerate(trained.losses, start=1):
                mlflow.log_metric("train_nll", loss, step=min(position * log_every, trained.meta.train_steps))
            weights = Path(folder) / WEIGHTS_FILE
            save_model(trained.module, trained.meta, weights)
            mlflow.log_artifact(str(weights), ARTIFACT_DIR)
            mlflow.log_artifact(str(meta_path_for(weights)), ARTIFACT_DIR)
            source = mlflow.get_artifact_uri(ARTIFACT_DIR)
        try:
            client.create_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(model_name, source=source, run_id=run.info.run_id)
    except MlflowException as exc:
        raise TrainingError(f"MLflow at {tracking_uri} refused the model: {exc.message}") from None
    return run.info.run_id, str(version.version)


def fetch_registered(*, tracking_uri: str, name: str, version: str) -> tuple[Path, str]:
    """Download a registered version's artifacts: (local weights path, resolved version)."""
    import mlflow
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from dropwire.functions.kit.tracking import tracking_client

    client = tracking_client(tracking_uri)
    try:
        if version:
            found = client.get_model_version(name, version)
        else:
            versions = client.search_model_versions(
                f"name='{name}'", order_by=["version_number DESC"], max_results=1
            )
            if not versions:
                raise ModelLoadError(f"registered model {name!r} has no versions in MLflow at {tracking_uri}")
            found = versions[0]
        local = mlflow.artifacts.download_artifacts(artifact_uri=found.source, tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise ModelLoadError(
            f"cannot load registered model {name!r} version {version or 'latest'} from MLflow at "
            f"{tracking_uri}: {exc.message}"
        ) from None
    return Path(local) / WEIGHTS_FILE, str(found.version)

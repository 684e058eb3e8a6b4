"""One MLflow run per evaluation: who was evaluated against which config, the metrics per
field, and the Excel report as an artifact.

MLflow 3.x refuses the plain-folder (``file:``) tracking store unless MLFLOW_ALLOW_FILE_STORE
is set, so the local default is a SQLite store, ``sqlite:///<data_dir>/mlflow/mlflow.db``,
with artifacts in ``<data_dir>/mlflow/artifacts``; both come from ``local_tracking_store``.
Any other tracking URI (an MLflow server) works by passing it instead.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from fsspec.implementations.local import LocalFileSystem

from dropwire.functions.evaluation.core.metrics import EvaluationMetrics
from dropwire.functions.kit.tracking import tracking_client
from dropwire.functions.platform.objects import url_to_fs

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow's limit for one log_batch call.
MAX_METRICS_PER_BATCH = 1000


class TrackingStore(msgspec.Struct, frozen=True, kw_only=True):
    tracking_uri: str
    # Where a new experiment keeps artifacts; None lets the tracking server decide. A SQLite
    # store without it would put them in ./mlartifacts of whatever the working directory is.
    artifact_location: str | None = None


def local_tracking_store(data_dir: str | os.PathLike) -> TrackingStore:
    """The MLflow store under the product's data directory, usable without a server."""
    root = Path(data_dir).expanduser().resolve() / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return TrackingStore(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "artifacts").as_uri())


def metric_key(*parts: str) -> str:
    """MLflow keys allow letters, digits, _ - . / and space; anything else in a field name becomes _."""
    return "/".join(re.sub(r"[^\w\-. ]", "_", p) for p in parts)


def log_evaluation_run(
    store: TrackingStore,
    experiment_name: str,
    *,
    use_case: str,
    model_name: str,
    model_version: str,
    config_hash: str,
    metrics: EvaluationMetrics,
    report_url: str | None = None,
    storage_options: dict[str, dict] | None = None,
) -> str:
    """Log one finished run and return its id."""
    # Imported here: mlflow takes ~2 s to import, which every quality-check handler importing
    # this package would otherwise pay.
    from mlflow.entities import Metric, Param, RunTag

    client = tracking_client(store.tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(experiment_name, artifact_location=store.artifact_location)
    )
    run = client.create_run(experiment_id, run_name=f"{model_name}-{model_version}",
                            tags={"dropwire.use_case": use_case, "dropwire.model": model_name})
    run_id = run.info.run_id
    try:
        params = {"use_case": use_case, "model_name": model_name, "model_version": model_version,
                  "config_hash": config_hash, "records": str(metrics.records), "fields": str(len(metrics.fields))}  # fmt: skip
        values: dict[str, float] = {"records_all_matched": metrics.records_all_matched}
        for scope, summary in (("micro", metrics.micro), ("macro", metrics.macro)):
            values |= {metric_key(scope, name): getattr(summary, name) for name in ("accuracy", "precision", "recall", "f1")}
        for m in metrics.fields:
            values |= {metric_key("field", m.field, name): float(getattr(m, name))
                       for name in ("accuracy", "precision", "recall", "f1", "tp", "fp", "fn", "tn")}  # fmt: skip
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()], tags=[RunTag("dropwire.config_hash", config_hash)])
        logged = [Metric(key, value, run.info.start_time, 0) for key, value in values.items()]
        for start in range(0, len(logged), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=logged[start : start + MAX_METRICS_PER_BATCH])
        if report_url:
            _log_artifact(client, run_id, report_url, storage_options)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def _log_artifact(client: MlflowClient, run_id: str, url: str, storage_options: dict[str, dict] | None) -> None:
    fs, path = url_to_fs(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        client.log_artifact(run_id, path)
        return
    # MLflow uploads from a local file; a report in object storage is copied down first.
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        fs.get(path, local)
        client.log_artifact(run_id, local)

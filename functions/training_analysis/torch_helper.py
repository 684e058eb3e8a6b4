"""For plain torch training loops: log metrics to an MLflow run as training goes, describe the
datasets, and at the end log the analysis artifacts and ask for the analysis.

    recorder = TrainingRecorder(tracking_uri, experiment="my-model", params={"lr": 0.01})
    for epoch in range(epochs):
        ...
        recorder.log(epoch, train_loss=train_loss, val_loss=val_loss)
    recorder.describe_datasets(train=train_dataset, val=val_dataset)
    result = recorder.finish(TrainingAnalysisClient("http://127.0.0.1:8700"))

Training never fails because analysis is unavailable, unless the client's fallback is strict."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

from dropwire.functions.training_analysis.client import AnalysisError, TrainingAnalysisClient, print_summary
from dropwire.functions.training_analysis.core.artifacts import log_artifacts, split_stats_from_dataset, write_artifacts
from dropwire.functions.training_analysis.core.model import AnalysisResult, DatasetSplit

log = logging.getLogger("dropwire.training_analysis")
# MLflow's limit for one log_batch call.
FLUSH_POINTS = 1000


class TrainingRecorder:
    def __init__(self, tracking_uri: str, *, run_id: str | None = None, experiment: str = "dropwire-training",
                 artifact_location: str | None = None, params: dict[str, Any] | None = None, run_name: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.mlflow = MlflowClient(tracking_uri=tracking_uri)
        if run_id is None:
            found = self.mlflow.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.mlflow.create_experiment(experiment, artifact_location)
            run_id = self.mlflow.create_run(experiment_id, run_name=run_name).info.run_id
        self.run_id = run_id
        self.params = dict(params or {})
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.splits: dict[str, DatasetSplit] = {}
        self._pending: list = []
        for name, value in self.params.items():
            self.mlflow.log_param(run_id, name, value)

    def log(self, step: int, **metrics: float) -> None:
        """Record the metrics of a step; they reach MLflow in batches (one round trip per
        FLUSH_POINTS points, and the rest at finish), so logging costs the loop next to nothing."""
        from mlflow.entities import Metric

        stamp = _now_ms()
        for name, value in metrics.items():
            value = float(value)
            self.history.setdefault(name, []).append((int(step), value))
            self._pending.append(Metric(key=name, value=value, timestamp=stamp, step=int(step)))
        if len(self._pending) >= FLUSH_POINTS:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._pending), FLUSH_POINTS):
            self.mlflow.log_batch(self.run_id, metrics=self._pending[start:start + FLUSH_POINTS])
        self._pending = []

    def describe_datasets(self, **splits: Any) -> None:
        """Per split, a dataset of (features, label) items or a DatasetSplit already computed."""
        for name, data in splits.items():
            self.splits[name] = data if isinstance(data, DatasetSplit) else split_stats_from_dataset(data)

    def log_analysis_artifacts(self) -> None:
        with tempfile.TemporaryDirectory(prefix="dropwire-artifacts-") as tmp:
            write_artifacts(tmp, history=self.history, params=self.params, splits=self.splits or None)
            log_artifacts(self.tracking_uri, self.run_id, tmp)

    def finish(self, client: TrainingAnalysisClient | None = None, *, mode: str = "sync",
               analysis_options: dict | None = None, log_artifacts: bool = True) -> AnalysisResult | str | None:
        """End the run (artifacts logged first) and ask for the analysis: the result (sync), the
        request id (async), or None when there is no client or analysis is unavailable."""
        self.flush()
        if log_artifacts:
            self.log_analysis_artifacts()
        self.mlflow.set_terminated(self.run_id)
        if client is None:
            return None
        return request_analysis(client, self.run_id, self.tracking_uri, mode=mode, analysis_options=analysis_options)


def request_analysis(client: TrainingAnalysisClient, run_id: str, tracking_uri: str, *, mode: str = "sync",
                     analysis_options: dict | None = None) -> AnalysisResult | str | None:
    """Ask for the analysis; only a strict client lets a failure reach the training code."""
    try:
        if mode == "async":
            return client.analyze_async(run_id, tracking_uri, analysis_options)
        result = client.analyze(run_id, tracking_uri, analysis_options)
        print_summary(result)
        return result
    except AnalysisError as exc:
        if client.fallback == "strict":
            raise
        log.warning("training analysis of run %s failed: %s; training goes on", run_id, exc)
        return None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)

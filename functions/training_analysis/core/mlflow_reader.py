"""Reading one run from MLflow (any tracking URI): params, every step of every metric, and
the artifacts analysis knows when present (training_artifacts/, dataset/, deepchecks/),
downloaded to a temporary folder that is removed before returning. An unreachable server and
an unknown run are errors of their own (503 and 404 over HTTP)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import httpx
import msgspec
import polars as pl
import yaml

from dropwire.functions.kit.errors import DropwireError, NotFound
from dropwire.functions.training_analysis.core.model import DatasetArtifact, MetricSeries, RunData

METRICS_CSV = "training_artifacts/metrics.csv"
PARAMS_YAML = "training_artifacts/params.yaml"
DATASET_JSON = "dataset/dataset.json"
DEEPCHECKS_DIR = "deepchecks"
EXPECTED = (METRICS_CSV, PARAMS_YAML, DATASET_JSON, DEEPCHECKS_DIR + "/")


class MlflowUnavailable(DropwireError):
    http_status = 503
    code = "MLFLOW_CONNECTION_ERROR"


class RunNotFound(NotFound):
    code = "RUN_NOT_FOUND"


class ArtifactInvalid(DropwireError):
    code = "ARTIFACT_INVALID"


class TrackingUriInvalid(DropwireError):
    code = "VALIDATION_ERROR"


# What MLflow 3 reads a run from: a tracking server, a database store, Databricks. A bare word
# or a path is its file store, which it refuses unless MLFLOW_ALLOW_FILE_STORE is set.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc")
ACCEPTED_FORMS = "http://host:port or https://... (a tracking server), sqlite:///path/mlflow.db, postgresql://..., mysql://..., " \
                 "mssql://... or databricks"


def check_tracking_uri(tracking_uri: str) -> None:
    """TrackingUriInvalid (a 400) for a URI no MLflow store answers: checked before an
    analysis is queued, since retrying it cannot help."""
    scheme = urlparse(tracking_uri).scheme.split("+")[0].lower()
    if scheme in TRACKING_SCHEMES or tracking_uri in ("databricks", "databricks-uc"):
        return
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
        return
    said = ("a bare word or path is MLflow's file store, which MLflow 3 refuses" if scheme in ("", "file")
            else f"scheme {scheme!r} is no MLflow store")
    raise TrackingUriInvalid(f"Invalid request: field 'mlflow_tracking_uri' is {tracking_uri!r}: {said}; expected "
                             f"{ACCEPTED_FORMS}", field="mlflow_tracking_uri", constraint=f"one of {ACCEPTED_FORMS}",
                             provided=tracking_uri)


def unavailable(tracking_uri: str, timeout: float, cause: str) -> MlflowUnavailable:
    return MlflowUnavailable(f"Unable to connect to MLflow tracking server at {tracking_uri}: {cause}",
                             tracking_uri=tracking_uri, timeout=timeout,
                             suggestion="Check MLflow server is running and accessible")


def probe(tracking_uri: str, timeout: float) -> None:
    """Fail fast when the tracking server does not answer (MLflow's own client retries for minutes)."""
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        try:
            httpx.get(tracking_uri.rstrip("/") + "/health", timeout=timeout)
        except httpx.TransportError as exc:
            raise unavailable(tracking_uri, timeout, f"{type(exc).__name__}: {exc}") from None
    elif scheme == "sqlite":
        path = Path(tracking_uri.removeprefix("sqlite:///").removeprefix("sqlite://"))
        if not tracking_uri.startswith("sqlite:///:memory:") and not path.exists():
            raise RunNotFound(f"no MLflow store at {tracking_uri} (the database file does not exist)", tracking_uri=tracking_uri)


def read_run(tracking_uri: str, run_id: str, *, timeout: float = 10.0) -> RunData:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    check_tracking_uri(tracking_uri)
    probe(tracking_uri, timeout)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
        return _read(client, tracking_uri, run_id, run)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower():
            raise RunNotFound(f"run {run_id!r} does not exist in the MLflow store at {tracking_uri}",
                              run_id=run_id, tracking_uri=tracking_uri) from None
        if "Max retries" in str(exc) or "Connection" in str(exc):
            raise unavailable(tracking_uri, timeout, str(exc).splitlines()[0]) from None
        raise


def _read(client, tracking_uri: str, run_id: str, run) -> RunData:
    present = _list(client, run_id)
    with tempfile.TemporaryDirectory(prefix="dropwire-analysis-") as tmp:
        wanted = [p for p in present if p in (METRICS_CSV, PARAMS_YAML, DATASET_JSON)
                  or (p.startswith(DEEPCHECKS_DIR + "/") and p.endswith(".json"))]
        files = {p: Path(client.download_artifacts(run_id, p, tmp)).read_bytes() for p in wanted}
    return run_from_files(run_id, tracking_uri, files, params=dict(run.data.params),
                          history=None if METRICS_CSV in files else lambda: _histories(client, run_id, run))


def _list(client, run_id: str) -> list[str]:
    paths = []
    for top in ("training_artifacts", "dataset", DEEPCHECKS_DIR):
        stack = [top]
        while stack:
            for info in client.list_artifacts(run_id, stack.pop()):
                (stack.append(info.path) if info.is_dir else paths.append(info.path))
    return paths


def _histories(client, run_id: str, run) -> dict[str, MetricSeries]:
    out = {}
    for key in sorted(run.data.metrics):
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        out[key] = MetricSeries(name=key, steps=[m.step for m in points], values=[float(m.value) for m in points])
    return out


def run_from_files(run_id: str, tracking_uri: str, files: dict[str, bytes], *, params: dict[str, str] | None = None,
                   history=None) -> RunData:
    """A run from its artifact files by path (from MLflow, or a folder dropped in the bucket);
    `history` supplies the metrics when there is no metrics.csv."""
    params = dict(params or {})
    if PARAMS_YAML in files:
        try:
            loaded = yaml.safe_load(files[PARAMS_YAML]) or {}
        except yaml.YAMLError as exc:
            raise ArtifactInvalid(f"{PARAMS_YAML}: not valid YAML: {exc}", artifact=PARAMS_YAML) from None
        if not isinstance(loaded, dict):
            raise ArtifactInvalid(f"{PARAMS_YAML}: expected a mapping of parameter names to values", artifact=PARAMS_YAML)
        params = {str(k): str(v) for k, v in loaded.items()} | params
    metrics = read_metrics_csv(files[METRICS_CSV]) if METRICS_CSV in files else (history() if history else {})
    dataset = None
    if DATASET_JSON in files:
        try:
            dataset = msgspec.json.decode(files[DATASET_JSON], type=DatasetArtifact)
        except msgspec.DecodeError as exc:
            raise ArtifactInvalid(f"{DATASET_JSON}: {exc}", artifact=DATASET_JSON) from None
    checks = {}
    for path, data in files.items():
        if path.startswith(DEEPCHECKS_DIR + "/"):
            try:
                checks[path] = msgspec.json.decode(data)
            except msgspec.DecodeError as exc:
                raise ArtifactInvalid(f"{path}: not valid JSON: {exc}", artifact=path) from None
    present = sorted(files)
    missing = [p for p in EXPECTED if not any(f == p or (p.endswith("/") and f.startswith(p)) for f in present)]
    return RunData(run_id=run_id, tracking_uri=tracking_uri, metrics=metrics, params=params, dataset=dataset,
                   deepchecks=checks, artifacts=present, missing=missing)


def read_metrics_csv(data: bytes) -> dict[str, MetricSeries]:
    """training_artifacts/metrics.csv: one row per point, columns metric, step, value."""
    try:
        frame = pl.read_csv(io.BytesIO(data), schema_overrides={"metric": pl.Utf8, "step": pl.Int64, "value": pl.Float64})
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise ArtifactInvalid(f"{METRICS_CSV}: {exc}", artifact=METRICS_CSV) from None
    missing = {"metric", "step", "value"} - set(frame.columns)
    if missing:
        raise ArtifactInvalid(f"{METRICS_CSV}: missing column(s) {sorted(missing)}; expected metric, step, value",
                              artifact=METRICS_CSV)
    out = {}
    for (name,), group in frame.sort("step").group_by(["metric"], maintain_order=True):
        out[name] = MetricSeries(name=name, steps=group["step"].to_list(), values=group["value"].fill_null(float("nan")).to_list())
    return out

"""The artifacts training code logs beside its metrics, in the layout the analysis reads:
training_artifacts/metrics.csv (metric, step, value), training_artifacts/params.yaml and
dataset/dataset.json (per split: size, class counts, per-feature statistics, example hashes)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import yaml

from dropwire.functions.training_analysis.core.mlflow_reader import DATASET_JSON, METRICS_CSV, PARAMS_YAML
from dropwire.functions.training_analysis.core.model import DatasetArtifact, DatasetSplit


def split_stats(features: Any, labels: Any | None = None, *, max_features: int = 64) -> DatasetSplit:
    """Statistics of one split from its feature matrix (anything numpy can read: a tensor, an
    array) and labels; each example's hash covers its features and label."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = None if labels is None else np.asarray(labels).reshape(len(x), -1)
    counts: dict[str, int] = {}
    # Class counts only for class labels: integer or boolean, one per example (not regression targets).
    if y is not None and y.shape[1] == 1 and (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        values, numbers = np.unique(y[:, 0], return_counts=True)
        counts = {str(v.item() if hasattr(v, "item") else v): int(n) for v, n in zip(values, numbers, strict=False)}
    features_stats = {f"f{i}": {"mean": float(x[:, i].mean()), "std": float(x[:, i].std()), "min": float(x[:, i].min()),
                                "max": float(x[:, i].max())} for i in range(min(x.shape[1], max_features))} if len(x) else {}
    hashes = [hashlib.blake2b(row.tobytes() + (b"" if y is None else y[i].tobytes()), digest_size=12).hexdigest()
              for i, row in enumerate(x)]
    return DatasetSplit(size=len(x), class_counts=counts, features=features_stats, hashes=hashes)


def split_stats_from_dataset(dataset: Iterable) -> DatasetSplit:
    """Statistics of a map-style dataset of (features, label) items (e.g. a torch TensorDataset)."""
    xs, ys = [], []
    for item in dataset:
        x, y = item[0], item[1]
        xs.append(np.asarray(x, dtype=np.float64).reshape(-1))
        ys.append(np.asarray(y).reshape(-1))
    return split_stats(np.stack(xs), np.stack(ys)) if xs else DatasetSplit(size=0)


def metrics_csv(history: dict[str, list[tuple[int, float]]]) -> bytes:
    rows = [(name, int(step), float(value)) for name, points in sorted(history.items()) for step, value in points]
    frame = pl.DataFrame(rows, schema={"metric": pl.Utf8, "step": pl.Int64, "value": pl.Float64}, orient="row")
    out = io.BytesIO()
    frame.write_csv(out)
    return out.getvalue()


def write_artifacts(directory: str | Path, *, history: dict[str, list[tuple[int, float]]] | None = None,
                    params: dict[str, Any] | None = None, splits: dict[str, DatasetSplit] | None = None) -> list[Path]:
    """Write what is given under `directory` in the layout above; the paths written."""
    root = Path(directory)
    written = []
    for relative, data in ((METRICS_CSV, metrics_csv(history) if history else None),
                           (PARAMS_YAML, yaml.safe_dump({k: _plain(v) for k, v in params.items()}).encode() if params else None),
                           (DATASET_JSON, msgspec.json.encode(DatasetArtifact(splits=splits)) if splits else None)):
        if data is None:
            continue
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def log_artifacts(tracking_uri: str, run_id: str, directory: str | Path) -> None:
    """Log every folder under `directory` to the run, under the same folder names."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for folder in sorted(Path(directory).iterdir()):
        if folder.is_dir():
            client.log_artifacts(run_id, str(folder), folder.name)


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)

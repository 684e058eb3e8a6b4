"""Training-run analysis: a run with 10^5 logged metric points across 20 metrics and every
artifact (metrics.csv, params.yaml, dataset.json with example hashes, a Deepchecks result) in
a real MLflow store; the time to read it, analyse it and build the report with its plots,
against the same analysis fed from MLflow's own metric histories (the baseline, measured in
the same run). Then knowledge-base query p99, cold (every query new to the cache) and cached.

Targets (issue 16): analysis < 2 s, cached query < 10 ms; the seed's: < 70 s and < 2 s."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dropwire.functions.training_analysis.core.artifacts import split_stats
from dropwire.functions.training_analysis.core.knowledge import KnowledgeBase, KnowledgeQuery, shipped
from dropwire.functions.training_analysis.core.mlflow_reader import read_run
from dropwire.functions.training_analysis.core.model import AnalysisOptions
from dropwire.functions.training_analysis.core.pipeline import run_analysis
from dropwire.functions.training_analysis.core.report import build_report
from dropwire.functions.training_analysis.torch_helper import TrainingRecorder

METRICS = 20
STEPS = 5_000  # x 20 metrics = 10^5 points
REPEAT = 3
DEEPCHECKS = {"name": "Train Test Validation", "results": [
    {"check": {"name": "Feature Drift"}, "conditions_results": [{"Status": "FAIL", "Condition": "drift score < 0.2",
                                                                  "More Info": "Found 1 drifted feature"}]}]}


def make_run(root: Path, *, artifacts: bool) -> tuple[str, str]:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    recorder = TrainingRecorder(uri, experiment="bench", artifact_location=(root / "artifacts").as_uri(),
                                params={"lr": 0.1, "optimizer": "sgd", "batch_size": 64})
    rng = np.random.default_rng(0)
    steps = np.arange(STEPS)
    curves = {"train_loss": 2.0 * np.exp(-steps / 800) + 0.05 + 0.02 * rng.standard_normal(STEPS),
              "val_loss": 2.0 * np.exp(-steps / 800) + 0.1 + np.maximum(0, steps - 3000) / 4000,
              "grad_norm": 1.0 + 0.1 * rng.standard_normal(STEPS), "lr": np.full(STEPS, 0.1)}
    for i in range(METRICS - len(curves)):
        curves[f"extra_{i}"] = rng.standard_normal(STEPS).cumsum()
    for step in range(STEPS):
        recorder.log(step, **{name: float(values[step]) for name, values in curves.items()})
    if artifacts:
        x = rng.standard_normal((12_000, 16))
        y = (rng.random(12_000) < 0.1).astype(np.int64)
        recorder.describe_datasets(train=split_stats(x[:10_000], y[:10_000]), val=split_stats(x[10_000:] + 0.3, y[10_000:]))
        recorder.mlflow.log_dict(recorder.run_id, DEEPCHECKS, "deepchecks/train_test_validation.json")
    recorder.finish(log_artifacts=artifacts)
    return uri, recorder.run_id


def analyse(uri: str, run_id: str, knowledge: KnowledgeBase) -> tuple[float, int]:
    started = time.perf_counter()
    run = read_run(uri, run_id)
    options = AnalysisOptions()
    result = run_analysis(run, options, request_id="bench", knowledge=knowledge)
    build_report(result, run, options)
    points = sum(len(s.values) for s in run.metrics.values())
    return time.perf_counter() - started, points


def p99(samples: list[float]) -> float:
    return float(np.percentile(samples, 99))


def main() -> None:
    knowledge = KnowledgeBase()
    with tempfile.TemporaryDirectory() as tmp:
        full_root, bare_root = Path(tmp) / "full", Path(tmp) / "bare"
        full_root.mkdir(), bare_root.mkdir()
        started = time.perf_counter()
        full = make_run(full_root, artifacts=True)
        bare = make_run(bare_root, artifacts=False)
        print(f"two runs of {METRICS} metrics x {STEPS} steps logged in {time.perf_counter() - started:.1f}s")
        ours = [analyse(*full, knowledge) for _ in range(REPEAT)]
        baseline = [analyse(*bare, knowledge) for _ in range(REPEAT)]
    assert ours[0][1] == baseline[0][1] == METRICS * STEPS, (ours[0][1], baseline[0][1])
    mine, theirs = statistics.median(t for t, _ in ours), statistics.median(t for t, _ in baseline)
    print(f"analysis (read + analyse + report), {METRICS * STEPS} points, all artifacts: median {mine:.3f}s "
          f"max {max(t for t, _ in ours):.3f}s   target < 2 s (seed: < 70 s)")
    print(f"baseline: same analysis from MLflow's metric histories (no metrics.csv): median {theirs:.3f}s "
          f"-> ours {theirs / mine:.1f}x faster")

    queries = [f"{entry.title} {tag}" for entry in shipped().entries for tag in entry.tags]
    cold_kb = KnowledgeBase()
    cold, cached = [], []
    for query in queries:
        started = time.perf_counter()
        cold_kb.query(KnowledgeQuery(query=query, max_results=5))
        cold.append(time.perf_counter() - started)
    for _ in range(5):
        for query in queries:
            started = time.perf_counter()
            cold_kb.query(KnowledgeQuery(query=query, max_results=5))
            cached.append(time.perf_counter() - started)
    stats = cold_kb.stats()
    print(f"knowledge query p99 over {len(queries)} queries: cold {p99(cold) * 1000:.2f} ms (target < 2 s), "
          f"cached {p99(cached) * 1000:.3f} ms (target < 10 ms); cold/cached {p99(cold) / p99(cached):.0f}x; "
          f"hit rate {stats.hit_rate:.0%} (seed target > 70%)")

"""Real torch runs in a real MLflow store, read back and diagnosed: each gets the findings its
training earned, the healthy one none at warning level, and every result says what it could
not check. A slow analyzer gives a partial result with everything that finished."""

from __future__ import annotations

import socket
import threading

import pytest

from dropwire.functions.training_analysis.core.knowledge import KnowledgeBase
from dropwire.functions.training_analysis.core.mlflow_reader import MlflowUnavailable, RunNotFound, read_run
from dropwire.functions.training_analysis.core.model import AgentResult, AnalysisOptions
from dropwire.functions.training_analysis.core.pipeline import artifact_analyzers, run_analysis
from dropwire.functions.training_analysis.core.report import build_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def knowledge() -> KnowledgeBase:
    return KnowledgeBase()


def analyse(mlflow_runs, knowledge, name: str, **options):
    where, made = mlflow_runs
    run = read_run(where.uri, made[name])
    return run, run_analysis(run, AnalysisOptions(**options), request_id=f"test-{name}", knowledge=knowledge)


def warnings_and_up(result) -> set[str]:
    return {a.rule_id for a in result.all_analyses() if a.findings.severity != "info"}


def test_healthy_run_has_no_warning_level_finding(mlflow_runs, knowledge):
    run, result = analyse(mlflow_runs, knowledge, "healthy")
    assert result.status == "completed" and result.warnings == []
    assert warnings_and_up(result) == set(), result.all_analyses()
    assert {"training_artifacts/metrics.csv", "training_artifacts/params.yaml", "dataset/dataset.json",
            "deepchecks/data_integrity.json"} <= set(run.artifacts)
    assert run.params["optimizer"] == "adam" and len(run.metrics["train_loss"].values) == 25
    assert [r.status for r in result.agent_results] == ["completed"] * 5
    assert "No issue at warning level" in result.summary


def test_overfitting_run_is_caught_with_its_numbers_and_best_checkpoint(mlflow_runs, knowledge):
    run, result = analyse(mlflow_runs, knowledge, "overfitting")
    overfit = next(a for a in result.all_analyses() if a.rule_id == "TRAIN.OVERFITTING")
    val = run.metrics["val_loss"]
    best = val.steps[val.values.index(min(val.values))]
    assert overfit.best_checkpoint_step == best == overfit.findings.step
    assert overfit.findings.evidence["ratio"] > 1.2 and overfit.findings.evidence["val_min"] == pytest.approx(min(val.values))
    assert overfit.findings.evidence["train_end"] < overfit.findings.evidence["train_at_val_min"]
    assert result.actions and "TRAIN.OVERFITTING" in result.actions[0].addresses
    assert result.actions[0].sources, "the advice cites the knowledge base"


def test_diverging_run_is_critical(mlflow_runs, knowledge):
    _, result = analyse(mlflow_runs, knowledge, "diverging")
    divergence = next(a for a in result.all_analyses() if a.rule_id == "TRAIN.DIVERGENCE")
    assert divergence.findings.severity == "critical" and divergence.findings.evidence["ratio"] > 1.5
    assert "INTEGRATION.EXPLODING_GRADIENTS" in result.rule_ids()
    assert "learning rate" in result.actions[0].action.lower()


def test_tiny_validation_split_and_class_imbalance(mlflow_runs, knowledge):
    _, result = analyse(mlflow_runs, knowledge, "tiny_imbalanced")
    found = {a.rule_id: a for a in result.all_analyses()}
    assert found["DATA.CLASS_IMBALANCE"].findings.evidence["ratio"] >= 5
    assert found["DATA.TINY_VALIDATION"].findings.evidence["val_size"] == 15
    assert "INTEGRATION.MINORITY_UNMEASURED" in found


def test_missing_artifacts_give_warnings_and_the_training_analysis_from_metrics(mlflow_runs, knowledge):
    run, result = analyse(mlflow_runs, knowledge, "missing_artifacts")
    assert result.status == "completed"
    assert "Deepchecks artifacts not found - skipping data quality analysis" in result.warnings
    assert "Dataset metadata not found - skipping dataset analysis" in result.warnings
    assert len(run.metrics["val_loss"].steps) == 25, "metric histories come from MLflow itself"
    statuses = {r.agent_name: r.status for r in result.agent_results}
    assert statuses["TrainingArtifactsAnalyzer"] == "completed" and statuses["DatasetArtifactsAnalyzer"] == "skipped"
    assert {n.check for n in result.not_checked} >= {"dataset", "data quality"}
    assert warnings_and_up(result) == set()


def test_what_could_not_be_checked_is_said(mlflow_runs, knowledge):
    _, result = analyse(mlflow_runs, knowledge, "healthy", val_loss_metric="no_such_metric")
    reasons = {n.check: n.reason for n in result.not_checked}
    assert "no overfitting check ran" in reasons["overfitting"]


def test_a_slow_analyzer_gives_a_partial_result(mlflow_runs, knowledge):
    where, made = mlflow_runs
    run = read_run(where.uri, made["overfitting"])
    release = threading.Event()

    def slow(_run, _options) -> AgentResult:
        release.wait(30)
        return AgentResult(agent_name="Slow", status="completed")

    analyzers, _ = artifact_analyzers(AnalysisOptions())
    try:
        result = run_analysis(run, AnalysisOptions(agent_timeout_seconds=1.0, total_timeout_seconds=5.0),
                              request_id="slow", knowledge=knowledge, analyzers={**analyzers, "Slow": slow})
    finally:
        release.set()
    assert result.status == "partial"
    assert "Slow did not complete" in result.warnings
    statuses = {r.agent_name: r.status for r in result.agent_results}
    assert statuses["Slow"] == "timed_out" and statuses["TrainingArtifactsAnalyzer"] == "completed"
    assert "TRAIN.OVERFITTING" in result.rule_ids(), "what finished is kept"
    assert result.summary.startswith("Partial analysis")


def test_report_marks_the_findings_on_png_plots(mlflow_runs, knowledge):
    run, result = analyse(mlflow_runs, knowledge, "overfitting")
    report = build_report(result, run, AnalysisOptions())
    assert report.suffix == ".md" and "TRAIN.OVERFITTING" in report.text and "![loss.png](plots/loss.png)" in report.text
    assert set(report.plots) == {"loss.png", "optimizer.png"}
    assert all(png.startswith(b"\x89PNG") for png in report.plots.values())
    html = build_report(result, run, AnalysisOptions(report_format="html"))
    assert html.suffix == ".html" and html.text.startswith("<!doctype html>")


def test_unknown_run_and_unreachable_server_are_errors_of_their_own(mlflow_runs):
    where, _ = mlflow_runs
    with pytest.raises(RunNotFound, match="does not exist"):
        read_run(where.uri, "0" * 32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: connections are refused
        with pytest.raises(MlflowUnavailable) as raised:
            read_run(closed, "abc", timeout=2)
    assert raised.value.http_status == 503 and raised.value.details["tracking_uri"] == closed
    assert raised.value.details["suggestion"]

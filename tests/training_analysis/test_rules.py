"""The training-curve rules over all inputs: each fires on the shape it names, cites its
numbers, and stays quiet on a healthy curve."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dropwire.functions.training_analysis.core.model import AnalysisOptions, MetricSeries, RunData
from dropwire.functions.training_analysis.core.training import analyze_training


def run_of(**curves: list[float]) -> RunData:
    return RunData(run_id="r", tracking_uri="sqlite:///x.db", metrics={
        name: MetricSeries(name=name, steps=list(range(len(values))), values=[float(v) for v in values])
        for name, values in curves.items()})


def rules(**curves: list[float]) -> dict[str, object]:
    return {a.rule_id: a for a in analyze_training(run_of(**curves), AnalysisOptions()).analysis}


def severe(found: dict) -> set[str]:
    return {rule for rule, a in found.items() if a.findings.severity != "info"}


@settings(max_examples=200, deadline=None)
@given(start=st.floats(0.5, 10), floor=st.floats(0.01, 0.3), rate=st.floats(0.05, 0.5), n=st.integers(8, 300),
       gap=st.floats(1.0, 1.15))
def test_a_healthy_converging_run_gets_no_warning(start, floor, rate, n, gap):
    steps = np.arange(n)
    train = floor * start + (start - floor * start) * np.exp(-rate * steps)
    val = gap * train
    assert severe(rules(train_loss=list(train), val_loss=list(val), grad_norm=list(1 + 0 * steps))) == set()


@settings(max_examples=100, deadline=None)
@given(n=st.integers(6, 200), blowup=st.floats(1.6, 1e6))
def test_an_end_far_above_the_lowest_is_divergence(n, blowup):
    # The end holds for a few points: the rule smooths over ~2% of the curve, so one noisy batch is no divergence.
    train = list(np.linspace(2.0, 1.0, n)) + [1.0 * blowup] * max(2, n // 25)
    found = rules(train_loss=train)
    assert "TRAIN.DIVERGENCE" in found
    assert found["TRAIN.DIVERGENCE"].findings.evidence["ratio"] > 1.5


@settings(max_examples=100, deadline=None)
@given(rise=st.floats(1.25, 5), points=st.integers(4, 60))
def test_validation_rising_past_1_2x_its_minimum_while_train_falls_is_overfitting(rise, points):
    half = points // 2
    val = list(np.linspace(1.0, 0.5, half)) + list(np.linspace(0.5, 0.5 * rise, points - half))
    train = list(np.linspace(1.0, 0.1, points))
    found = rules(train_loss=train, val_loss=val)
    assert "TRAIN.OVERFITTING" in found
    assert found["TRAIN.OVERFITTING"].best_checkpoint_step == int(np.argmin(val))


def test_fewer_than_four_eval_points_cannot_show_overfitting():
    result = analyze_training(run_of(train_loss=[3, 2, 1, 0.5, 0.2], val_loss=[1, 0.5, 2]), AnalysisOptions())
    assert "TRAIN.OVERFITTING" not in {a.rule_id for a in result.analysis}
    assert any("at least 4" in n.reason for n in result.not_checked)


def test_nan_is_critical_with_the_step_it_appeared():
    found = rules(train_loss=[2.0, 1.5, 1.2, math.nan, math.nan])
    assert found["TRAIN.NONFINITE"].findings.severity == "critical" and found["TRAIN.NONFINITE"].findings.step == 3


def test_slow_steady_progress_is_a_learning_rate_too_low():
    assert "TRAIN.LR_TOO_LOW" in rules(train_loss=list(np.linspace(1.0, 0.9, 50)))


def test_a_high_flat_loss_is_underfitting():
    assert "TRAIN.UNDERFITTING" in rules(train_loss=[1.0, 0.95, 0.93] + [0.93] * 40)


def test_a_bouncing_loss_is_a_learning_rate_too_high():
    found = rules(train_loss=[1.0, 0.5, 1.0, 0.5, 1.0, 0.5, 1.0, 0.5, 1.0, 0.5])
    assert "TRAIN.LR_TOO_HIGH" in found and found["TRAIN.LR_TOO_HIGH"].findings.evidence["sign_flip_share"] == 1.0


def test_a_gradient_spike_is_unstable_but_a_shrinking_norm_is_not():
    assert "TRAIN.GRADIENT_UNSTABLE" in rules(train_loss=[1, 0.5], grad_norm=[1.0] * 10 + [50.0] + [1.0] * 5)
    assert "TRAIN.GRADIENT_UNSTABLE" not in rules(train_loss=[1, 0.5], grad_norm=list(np.geomspace(10, 1e-6, 100)))


def test_missing_metrics_are_said():
    result = analyze_training(run_of(accuracy=[0.5, 0.6]), AnalysisOptions())
    checks = {n.check: n.reason for n in result.not_checked}
    assert "training curve" in checks and "accuracy" in checks["training curve"]
    assert "no overfitting check ran" in checks["overfitting"] and "gradient stability" in checks

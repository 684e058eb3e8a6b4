"""The training-curve analyzer: non-finite values, divergence, overfitting, underfitting,
plateaus, learning rate too high (oscillation) or too low, unstable gradients. Each rule has a
stable id and cites the numbers that fired it; what could not be checked is said."""

from __future__ import annotations

import math

import numpy as np

from dropwire.functions.training_analysis.core.model import (
    AgentResult,
    Analysis,
    AnalysisOptions,
    Findings,
    MetricSeries,
    NotChecked,
    Recommendations,
    RunData,
)

NAME = "TrainingArtifactsAnalyzer"
TRAIN_LOSS = ("train_loss", "train/loss", "training_loss", "loss_train", "train_loss_epoch", "loss")
VAL_LOSS = ("val_loss", "val/loss", "valid_loss", "validation_loss", "eval_loss", "eval/loss", "test_loss", "val_loss_epoch")
GRAD_NORM_MARKERS = ("grad_norm", "gradient_norm", "grad/norm", "grad_2.0_norm")
LR_MARKERS = ("lr", "learning_rate")

# DESIGN.md's facts: overfit when eval loss exceeds 1.2x its own minimum while train loss
# still falls, with at least 4 eval points; divergence when the end loss exceeds 1.5x the lowest.
OVERFIT_RATIO = 1.2
MIN_EVAL_POINTS = 4
DIVERGENCE_RATIO = 1.5
# Underfitting / LR too low: the train loss fell by less than this share of its start.
SMALL_IMPROVEMENT = 0.2
# Plateau: the last quarter of the curve moved by less than this share of the whole drop.
PLATEAU_SHARE = 0.02
# Oscillation: most consecutive changes flip sign and are large against the loss level.
OSCILLATION_FLIPS = 0.6
OSCILLATION_AMPLITUDE = 0.25
MIN_POINTS = 5
GRAD_SPIKE_RATIO = 10.0
GRAD_WINDOW = 5


def find_metric(metrics: dict[str, MetricSeries], override: str | None, candidates: tuple[str, ...]) -> MetricSeries | None:
    if override:
        return metrics.get(override)
    lowered = {name.lower(): series for name, series in metrics.items()}
    return next((lowered[c] for c in candidates if c in lowered), None)


def find_marked(metrics: dict[str, MetricSeries], markers: tuple[str, ...]) -> MetricSeries | None:
    for name in sorted(metrics):
        low = name.lower()
        if any(low == m or low.startswith(m) or low.endswith("/" + m) or m in low.split("-") for m in markers):
            return metrics[name]
    return None


def analyze_training(run: RunData, options: AnalysisOptions) -> AgentResult:
    train = find_metric(run.metrics, options.train_loss_metric, TRAIN_LOSS)
    val = find_metric(run.metrics, options.val_loss_metric, VAL_LOSS)
    grad = find_marked(run.metrics, GRAD_NORM_MARKERS)
    found: list[Analysis] = []
    skipped: list[NotChecked] = []
    if train is None:
        skipped.append(NotChecked(check="training curve", reason=f"no training loss metric (looked for {', '.join(TRAIN_LOSS)}; "
                                                                  f"the run has {', '.join(sorted(run.metrics)) or 'none'})"))
    if val is None:
        skipped.append(NotChecked(check="overfitting", reason="no validation loss metric: no overfitting check ran"))
    best = _best_step(val) if val is not None else None

    broken = [s for s in (train, val) if s is not None and _first_nonfinite(s) is not None]
    for series in broken:
        step = _first_nonfinite(series)
        found.append(Analysis(
            rule_id="TRAIN.NONFINITE",
            findings=Findings(description=f"{series.name} became non-finite (NaN or inf) at step {step}", severity="critical",
                              evidence={"first_nonfinite_step": step, "last_finite_value": _last_finite(series)},
                              metric=series.name, step=step),
            recommendations=Recommendations(action="Lower the learning rate, clip gradients and check inputs for NaN/inf",
                                            rationale="Non-finite losses end learning; every later step is wasted."),
            best_checkpoint_step=best if best is not None else _best_step(series)))

    if train is not None:
        found += _divergence(train, best, already_nonfinite=train in broken)
        if not any(a.rule_id in ("TRAIN.NONFINITE", "TRAIN.DIVERGENCE") for a in found):
            found += _slow_or_stuck(train)
            found += _oscillation(train)
    if val is not None:
        if train is None:
            skipped.append(NotChecked(check="overfitting", reason="no training loss to compare the validation loss with"))
        else:
            overfit, why = _overfitting(train, val)
            found += overfit
            if why:
                skipped.append(NotChecked(check="overfitting", reason=why))
    if grad is None:
        skipped.append(NotChecked(check="gradient stability", reason="no gradient-norm metric logged (e.g. grad_norm)"))
    else:
        found += _gradients(grad)
    return AgentResult(agent_name=NAME, status="completed", analysis=found, not_checked=skipped)


def _arrays(series: MetricSeries) -> tuple[np.ndarray, np.ndarray]:
    steps = np.asarray(series.steps, dtype=np.int64)
    values = np.asarray(series.values, dtype=np.float64)
    return steps, values


def _smooth(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A moving average over about 2% of the points (each at its window's last step), so
    per-batch noise is not taken for a trend."""
    window = max(1, len(values) // 50)
    if window == 1:
        return steps, values
    return steps[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid")


def _first_nonfinite(series: MetricSeries) -> int | None:
    steps, values = _arrays(series)
    bad = ~np.isfinite(values)
    return int(steps[np.argmax(bad)]) if bad.any() else None


def _last_finite(series: MetricSeries) -> float | None:
    _, values = _arrays(series)
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else None


def _best_step(series: MetricSeries) -> int | None:
    steps, values = _arrays(series)
    finite = np.isfinite(values)
    if not finite.any():
        return None
    return int(steps[finite][np.argmin(values[finite])])


def _divergence(train: MetricSeries, best: int | None, *, already_nonfinite: bool) -> list[Analysis]:
    steps, values = _arrays(train)
    finite = np.isfinite(values)
    if finite.sum() < 2:
        return []
    steps, values = _smooth(steps[finite], values[finite])
    lowest_at = int(np.argmin(values))
    end, lowest = float(values[-1]), float(values[lowest_at])
    first = float(values[0])
    ratio = end / lowest if lowest > 0 else math.inf
    if ratio <= DIVERGENCE_RATIO:
        return []
    # Worse than where it started, or on its way to NaN: training is lost, not merely noisy.
    severity = "critical" if end > first or already_nonfinite else "warning"
    return [Analysis(
        rule_id="TRAIN.DIVERGENCE",
        findings=Findings(description=f"{train.name} diverged: it ended at {end:.4g}, {ratio:.1f}x its lowest {lowest:.4g} "
                                      f"(step {int(steps[lowest_at])}); the threshold is {DIVERGENCE_RATIO}x",
                          severity=severity, metric=train.name, step=int(steps[lowest_at]),
                          evidence={"end_loss": end, "lowest_loss": lowest, "ratio": round(ratio, 3), "first_loss": first,
                                    "threshold_ratio": DIVERGENCE_RATIO}),
        recommendations=Recommendations(action="Lower the learning rate (try 3-10x smaller) or add warm-up and gradient clipping",
                                        rationale="A loss that climbs back above its lowest point means the steps overshoot."),
        best_checkpoint_step=best if best is not None else int(steps[lowest_at]))]


def _overfitting(train: MetricSeries, val: MetricSeries) -> tuple[list[Analysis], str | None]:
    steps, values = _arrays(val)
    finite = np.isfinite(values)
    steps, values = steps[finite], values[finite]
    if len(values) < MIN_EVAL_POINTS:
        return [], f"only {len(values)} validation point(s); the overfitting rule needs at least {MIN_EVAL_POINTS}"
    min_at = int(np.argmin(values))
    lowest, end = float(values[min_at]), float(values[-1])
    ratio = end / lowest if lowest > 0 else math.inf
    train_steps, train_values = _arrays(train)
    keep = np.isfinite(train_values)
    train_steps, train_values = train_steps[keep], train_values[keep]
    before = train_values[train_steps <= steps[min_at]]
    after = train_values[train_steps >= steps[min_at]]
    if not before.size or after.size < 2:
        return [], None
    train_at_min, train_end = float(before[-1]), float(after[-1])
    train_falls = train_end < train_at_min
    if not (ratio > OVERFIT_RATIO and train_falls):
        return [], None
    return [Analysis(
        rule_id="TRAIN.OVERFITTING",
        findings=Findings(description=f"{val.name} rose to {end:.4g}, {ratio:.2f}x its minimum {lowest:.4g} at step "
                                      f"{int(steps[min_at])}, while {train.name} kept falling ({train_at_min:.4g} -> {train_end:.4g})",
                          severity="warning", metric=val.name, step=int(steps[min_at]),
                          evidence={"val_min": lowest, "val_end": end, "ratio": round(ratio, 3), "threshold_ratio": OVERFIT_RATIO,
                                    "train_at_val_min": train_at_min, "train_end": train_end, "eval_points": len(values)}),
        recommendations=Recommendations(action=f"Keep the checkpoint of step {int(steps[min_at])}, add early stopping on "
                                               f"{val.name}, and regularise (weight decay, dropout, augmentation, more data)",
                                        rationale="The model is fitting the training set's noise past the validation minimum."),
        best_checkpoint_step=int(steps[min_at]))], None


def _slow_or_stuck(train: MetricSeries) -> list[Analysis]:
    steps, values = _arrays(train)
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
    if len(values) < MIN_POINTS:
        return []
    first, end = float(values[0]), float(values[-1])
    drop = first - end
    tail = values[int(len(values) * 0.75):]
    tail_move = float(tail[0] - tail[-1])
    evidence = {"first_loss": first, "end_loss": end, "relative_improvement": round(drop / abs(first), 4) if first else None,
                "last_quarter_drop": tail_move}
    if first > 0 and drop < SMALL_IMPROVEMENT * first:
        still_falling = tail_move > PLATEAU_SHARE * max(abs(drop), 1e-12) and tail_move > 0 and drop > 0
        if still_falling:
            return [Analysis(
                rule_id="TRAIN.LR_TOO_LOW",
                findings=Findings(description=f"{train.name} fell only {drop / first:.0%} ({first:.4g} -> {end:.4g}) and is "
                                              "still falling steadily: the learning rate looks too low", severity="warning",
                                  metric=train.name, evidence=evidence),
                recommendations=Recommendations(action="Raise the learning rate (try 3-10x) or train for more steps",
                                                rationale="Steady but slow progress means each step is too small."))]
        return [Analysis(
            rule_id="TRAIN.UNDERFITTING",
            findings=Findings(description=f"{train.name} fell only {max(drop, 0) / first:.0%} ({first:.4g} -> {end:.4g}) and "
                                          "stopped improving: the model is not learning the task", severity="warning",
                              metric=train.name, evidence=evidence),
            recommendations=Recommendations(action="Increase model capacity, check labels and features, or tune the learning rate",
                                            rationale="A high, flat training loss means the model cannot fit even the training set."))]
    if drop > 0 and abs(tail_move) < PLATEAU_SHARE * drop:
        plateau_from = int(steps[int(len(values) * 0.75)])
        return [Analysis(
            rule_id="TRAIN.PLATEAU",
            findings=Findings(description=f"{train.name} has plateaued since about step {plateau_from} (the last quarter moved "
                                          f"{abs(tail_move):.3g}, under {PLATEAU_SHARE:.0%} of the total drop {drop:.3g})",
                              severity="info", metric=train.name, step=plateau_from, evidence=evidence),
            recommendations=Recommendations(action="Stop earlier (early stopping) or decay the learning rate at the plateau",
                                            rationale="Steps after a plateau cost time without improving the model."))]
    return []


def _oscillation(train: MetricSeries) -> list[Analysis]:
    _, values = _arrays(train)
    values = values[np.isfinite(values)]
    if len(values) < MIN_POINTS:
        return []
    diffs = np.diff(values)
    flips = float(np.mean(np.sign(diffs[1:]) != np.sign(diffs[:-1]))) if len(diffs) > 1 else 0.0
    level = float(np.median(np.abs(values))) or 1e-12
    amplitude = float(np.median(np.abs(diffs))) / level
    half = len(values) // 2
    net_gain = float(np.mean(values[:half]) - np.mean(values[half:])) / level
    if flips < OSCILLATION_FLIPS or amplitude < OSCILLATION_AMPLITUDE or net_gain > amplitude:
        return []
    return [Analysis(
        rule_id="TRAIN.LR_TOO_HIGH",
        findings=Findings(description=f"{train.name} oscillates: {flips:.0%} of its changes flip direction, each about "
                                      f"{amplitude:.0%} of the loss level, with little net progress", severity="warning",
                          metric=train.name, evidence={"sign_flip_share": round(flips, 3), "relative_amplitude": round(amplitude, 3),
                                                       "net_relative_gain": round(net_gain, 3)}),
        recommendations=Recommendations(action="Lower the learning rate or use a schedule (cosine, step decay), or raise the batch size",
                                        rationale="Steps that overshoot the minimum make the loss bounce instead of fall."))]


def _gradients(grad: MetricSeries) -> list[Analysis]:
    """A spike is a point far above the median of the points just before it (gradient norms
    start large and shrink as a run converges, which is no spike)."""
    steps, values = _arrays(grad)
    finite = np.isfinite(values)
    nonfinite = int((~finite).sum())
    steps, values = steps[finite], values[finite]
    worst, worst_at, before = 0.0, None, None
    for i in range(GRAD_WINDOW, len(values)):
        median = float(np.median(values[i - GRAD_WINDOW:i]))
        ratio = values[i] / median if median > 0 else 0.0
        if ratio > worst:
            worst, worst_at, before = float(ratio), i, median
    if worst < GRAD_SPIKE_RATIO and not nonfinite:
        return []
    at = int(steps[worst_at]) if worst_at is not None else None
    said = (f"peak {values[worst_at]:.4g} at step {at} is {worst:.1f}x the median {before:.4g} of the {GRAD_WINDOW} points "
            f"before it" if worst >= GRAD_SPIKE_RATIO else "")
    return [Analysis(
        rule_id="TRAIN.GRADIENT_UNSTABLE",
        findings=Findings(description=f"{grad.name} is unstable: " + "; ".join(
                              x for x in (said, f"{nonfinite} value(s) are non-finite" if nonfinite else "") if x),
                          severity="warning", metric=grad.name, step=at if worst >= GRAD_SPIKE_RATIO else None,
                          evidence={"spike_ratio": round(worst, 3), "spike_ratio_threshold": GRAD_SPIKE_RATIO,
                                    "window": GRAD_WINDOW, "nonfinite_points": nonfinite}),
        recommendations=Recommendations(action="Clip gradients (e.g. max norm 1.0), lower the learning rate, or add normalisation layers",
                                        rationale="Gradient spikes make updates erratic and precede divergence."))]

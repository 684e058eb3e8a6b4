"""The dataset analyzer, over dataset/dataset.json: class imbalance, train/validation
overlap (shared example hashes), a tiny validation split, and shift between the splits
(class proportions and per-feature means)."""

from __future__ import annotations

import math

from dropwire.functions.training_analysis.core.model import (
    AgentResult,
    Analysis,
    DatasetSplit,
    Findings,
    NotChecked,
    Recommendations,
    RunData,
)

NAME = "DatasetArtifactsAnalyzer"
TRAIN_SPLITS = ("train", "training")
VAL_SPLITS = ("val", "valid", "validation", "eval", "test")
IMBALANCE_RATIO = 5.0
# A validation split this small cannot tell a real change from noise.
TINY_VAL_EXAMPLES = 100
TINY_VAL_SHARE = 0.05
OVERLAP_WARNING_SHARE = 0.01
# Standardised mean difference between the splits, and total variation of class proportions.
FEATURE_SHIFT = 0.5
CLASS_SHIFT = 0.2


def _split(splits: dict[str, DatasetSplit], names: tuple[str, ...]) -> tuple[str, DatasetSplit | None]:
    for name in names:
        if name in splits:
            return name, splits[name]
    return "", None


def analyze_dataset(run: RunData) -> AgentResult:
    if run.dataset is None:
        return AgentResult(agent_name=NAME, status="skipped",
                           not_checked=[NotChecked(check="dataset", reason="dataset/dataset.json not found in the run's artifacts")])
    splits = run.dataset.splits
    train_name, train = _split(splits, TRAIN_SPLITS)
    val_name, val = _split(splits, VAL_SPLITS)
    found: list[Analysis] = []
    skipped: list[NotChecked] = []
    if train is None:
        skipped.append(NotChecked(check="class imbalance", reason=f"no training split (looked for {', '.join(TRAIN_SPLITS)})"))
    elif not train.class_counts:
        skipped.append(NotChecked(check="class imbalance", reason=f"split {train_name!r} has no class counts"))
    else:
        found += _imbalance(train_name, train)
    if val is None or train is None:
        skipped.append(NotChecked(check="validation split", reason="needs both a training and a validation split"))
        return AgentResult(agent_name=NAME, status="completed", analysis=found, not_checked=skipped)
    found += _tiny(val_name, val, train)
    if train.hashes and val.hashes:
        found += _overlap(train_name, train, val_name, val)
    else:
        skipped.append(NotChecked(check="train/validation overlap", reason="example hashes missing for a split"))
    found += _shift(train_name, train, val_name, val)
    return AgentResult(agent_name=NAME, status="completed", analysis=found, not_checked=skipped)


def _imbalance(name: str, split: DatasetSplit) -> list[Analysis]:
    counts = {label: n for label, n in split.class_counts.items()}
    largest = max(counts, key=counts.__getitem__)
    smallest = min(counts, key=counts.__getitem__)
    ratio = counts[largest] / max(counts[smallest], 1)
    if ratio < IMBALANCE_RATIO:
        return []
    return [Analysis(
        rule_id="DATA.CLASS_IMBALANCE",
        findings=Findings(description=f"split {name!r} is imbalanced: class {largest!r} has {counts[largest]} examples, class "
                                      f"{smallest!r} {counts[smallest]} ({ratio:.1f}x; the threshold is {IMBALANCE_RATIO}x)",
                          severity="warning",
                          evidence={"largest_class": largest, "largest_count": counts[largest], "smallest_class": smallest,
                                    "smallest_count": counts[smallest], "ratio": round(ratio, 2), "threshold_ratio": IMBALANCE_RATIO}),
        recommendations=Recommendations(action="Weight the loss by class (or resample), and judge the model by per-class recall, "
                                               "F1 or balanced accuracy rather than accuracy",
                                        rationale="A model can score well by predicting the majority class."))]


def _tiny(name: str, val: DatasetSplit, train: DatasetSplit) -> list[Analysis]:
    share = val.size / max(val.size + train.size, 1)
    if val.size >= TINY_VAL_EXAMPLES and share >= TINY_VAL_SHARE:
        return []
    return [Analysis(
        rule_id="DATA.TINY_VALIDATION",
        findings=Findings(description=f"split {name!r} has only {val.size} examples ({share:.1%} of the data); validation "
                                      f"metrics from it are noisy", severity="warning",
                          evidence={"val_size": val.size, "train_size": train.size, "val_share": round(share, 4),
                                    "min_examples": TINY_VAL_EXAMPLES, "min_share": TINY_VAL_SHARE}),
        recommendations=Recommendations(action=f"Hold out at least {TINY_VAL_SHARE:.0%} of the data and {TINY_VAL_EXAMPLES} examples "
                                               "for validation (stratified), or use k-fold cross-validation",
                                        rationale="Decisions taken on a tiny validation split (early stopping, model choice) are noise."))]


def _overlap(train_name: str, train: DatasetSplit, val_name: str, val: DatasetSplit) -> list[Analysis]:
    shared = len(set(train.hashes) & set(val.hashes))
    share = shared / max(len(set(val.hashes)), 1)
    if shared == 0:
        return []
    return [Analysis(
        rule_id="DATA.SPLIT_OVERLAP",
        findings=Findings(description=f"{shared} examples of {val_name!r} ({share:.1%}) also appear in {train_name!r}",
                          severity="critical" if share >= OVERLAP_WARNING_SHARE else "warning",
                          evidence={"shared_examples": shared, "val_share": round(share, 4)}),
        recommendations=Recommendations(action="Deduplicate before splitting (split by a stable id or content hash)",
                                        rationale="Leaked examples make validation scores optimistic."))]


def _shift(train_name: str, train: DatasetSplit, val_name: str, val: DatasetSplit) -> list[Analysis]:
    found = []
    if train.class_counts and val.class_counts:
        labels = set(train.class_counts) | set(val.class_counts)
        t_total, v_total = sum(train.class_counts.values()) or 1, sum(val.class_counts.values()) or 1
        tv = 0.5 * sum(abs(train.class_counts.get(c, 0) / t_total - val.class_counts.get(c, 0) / v_total) for c in labels)
        if tv > CLASS_SHIFT:
            found.append(Analysis(
                rule_id="DATA.LABEL_SHIFT",
                findings=Findings(description=f"class proportions differ between {train_name!r} and {val_name!r} "
                                              f"(total variation {tv:.2f}; the threshold is {CLASS_SHIFT})", severity="warning",
                                  evidence={"total_variation": round(tv, 4), "threshold": CLASS_SHIFT}),
                recommendations=Recommendations(action="Split with stratification by class",
                                                rationale="A validation split with other class proportions measures another task.")))
    worst, worst_feature = 0.0, None
    for feature, stats in train.features.items():
        other = val.features.get(feature)
        if not other or "mean" not in stats or "mean" not in other:
            continue
        pooled = math.sqrt((stats.get("std", 0.0) ** 2 + other.get("std", 0.0) ** 2) / 2) or 1e-12
        distance = abs(stats["mean"] - other["mean"]) / pooled
        if distance > worst:
            worst, worst_feature = distance, feature
    if worst_feature is not None and worst > FEATURE_SHIFT:
        found.append(Analysis(
            rule_id="DATA.FEATURE_SHIFT",
            findings=Findings(description=f"feature {worst_feature!r} is shifted between {train_name!r} and {val_name!r}: the means "
                                          f"differ by {worst:.2f} pooled standard deviations (threshold {FEATURE_SHIFT})",
                              severity="warning", evidence={"feature": worst_feature, "standardised_difference": round(worst, 3),
                                                            "threshold": FEATURE_SHIFT}),
            recommendations=Recommendations(action="Check how the splits were drawn (time, source, preprocessing) and split randomly "
                                                   "or make validation match production",
                                            rationale="A shifted validation split gives scores that do not carry over.")))
    return found

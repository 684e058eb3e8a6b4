"""Evaluation metrics per field and overall, under the extraction rules:

- truth and prediction present and matching: a true positive;
- both present, not matching: a false positive and a false negative;
- truth present, prediction missing: a false negative;
- truth missing, prediction present: a false positive;
- both missing: a true negative (the model rightly left the field empty).

accuracy = (tp + tn) / records, precision = tp / (tp + fp), recall = tp / (tp + fn),
F1 = 2 tp / (2 tp + fp + fn); a ratio with a zero denominator is 0 (as scikit-learn's
zero_division=0). Micro averages pool the counts of all fields; macro averages are the mean
of the per-field figures.
"""

from __future__ import annotations

import msgspec
import polars as pl

from dropwire.functions.evaluation.core import matching
from dropwire.functions.evaluation.core.config import EvaluationConfig, FieldSpec
from dropwire.functions.evaluation.core.dataset import (
    PREDICTION_ROW,
    RECORD_ID,
    TRUTH_ROW,
    Dataset,
    DatasetFiles,
    load_dataset,
    prediction_column,
    prediction_form,
    prediction_present,
    truth_column,
    truth_form,
    truth_present,
)
from dropwire.functions.evaluation.core.errors import DatasetInvalid
from dropwire.functions.evaluation.core.quality import check_dataset

# Per-field outcome codes of one record.
TRUE_NEGATIVE, TRUE_POSITIVE, WRONG, MISSED, SPURIOUS = range(5)
OUTCOME_NAMES = {
    WRONG: "wrong value",
    MISSED: "missing prediction",
    SPURIOUS: "prediction where the truth is empty",
}


class FieldMetrics(msgspec.Struct, frozen=True, kw_only=True):
    field: str
    type: str
    rule: str
    records: int
    tp: int
    fp: int
    fn: int
    tn: int
    accuracy: float
    precision: float
    recall: float
    f1: float


class MicroMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """All fields' counts pooled; accuracy is the share of matched (record, field) cells."""

    tp: int
    fp: int
    fn: int
    tn: int
    accuracy: float
    precision: float
    recall: float
    f1: float


class MacroMetrics(msgspec.Struct, frozen=True, kw_only=True):
    accuracy: float
    precision: float
    recall: float
    f1: float


class EvaluationMetrics(msgspec.Struct, frozen=True, kw_only=True):
    records: int
    # Share of records whose every field matched.
    records_all_matched: float
    fields: list[FieldMetrics]
    micro: MicroMetrics
    macro: MacroMetrics


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    metrics: EvaluationMetrics
    # record_id, one boolean per field (matched, or rightly empty), all_matched.
    per_record: pl.DataFrame
    # record_id, field, truth, prediction, outcome, rule, truth_row, prediction_row.
    mismatches: pl.DataFrame


def evaluate(config: EvaluationConfig, files: DatasetFiles) -> Evaluation:
    """Read, check and evaluate; raise DatasetInvalid when the dataset fails the quality check
    (evaluating it would mean guessing or dropping rows)."""
    dataset = load_dataset(config, files)
    report = check_dataset(dataset)
    if not report.passed:
        raise DatasetInvalid(report)
    return evaluate_dataset(dataset)


def evaluate_dataset(dataset: Dataset) -> Evaluation:
    """Evaluate every record of a dataset that passed the quality check; no row is dropped."""
    config = dataset.config
    fields = config.fields
    scored = dataset.frame.lazy().with_columns(
        _outcome(config, i).alias(f"__o{i}") for i in range(len(fields))
    ).collect()
    counts = scored.select(
        (pl.col(f"__o{i}") == code).sum().alias(f"{i}:{code}") for i in range(len(fields)) for code in range(5)
    ).row(0, named=True)
    per_record = scored.select(
        pl.col(RECORD_ID).alias("record_id"),
        *(pl.col(f"__o{i}").le(TRUE_POSITIVE).alias(f.name) for i, f in enumerate(fields)),
    ).with_columns(pl.all_horizontal(f.name for f in fields).alias("all_matched"))
    field_metrics = [
        _field_metrics(f, matching.rule_label(f), scored.height, [counts[f"{i}:{code}"] for code in range(5)])
        for i, f in enumerate(fields)
    ]
    all_matched = per_record.select(pl.col("all_matched").mean()).item() if scored.height else 0.0
    metrics = EvaluationMetrics(
        records=scored.height,
        records_all_matched=float(all_matched),
        fields=field_metrics,
        micro=_micro(field_metrics),
        macro=MacroMetrics(**{name: _mean([getattr(m, name) for m in field_metrics]) for name in ("accuracy", "precision", "recall", "f1")}),
    )
    return Evaluation(metrics=metrics, per_record=per_record, mismatches=_mismatches(config, scored))


def _field_metrics(field: FieldSpec, rule: str, records: int, counts: list[int]) -> FieldMetrics:
    tn, tp, wrong, missed, spurious = counts
    fp, fn = wrong + spurious, wrong + missed
    return FieldMetrics(field=field.name, type=field.type, rule=rule, records=records, tp=tp, fp=fp, fn=fn, tn=tn,
                        **_ratios(tp, fp, fn, matched=tp + tn, cells=records))


def _micro(fields: list[FieldMetrics]) -> MicroMetrics:
    tp, fp, fn, tn = (sum(getattr(m, name) for m in fields) for name in ("tp", "fp", "fn", "tn"))
    return MicroMetrics(tp=tp, fp=fp, fn=fn, tn=tn, **_ratios(tp, fp, fn, matched=tp + tn, cells=sum(m.records for m in fields)))


def _ratios(tp: int, fp: int, fn: int, matched: int, cells: int) -> dict[str, float]:
    return {
        "accuracy": _div(matched, cells),
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
    }


def _div(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _outcome(config: EvaluationConfig, index: int) -> pl.Expr:
    field = config.fields[index]
    has_truth, has_prediction = pl.col(truth_present(index)), pl.col(prediction_present(index))
    same = matching.values_match(field, pl.col(truth_form(index)), pl.col(prediction_form(index)))
    return (
        pl.when(has_truth & has_prediction & same).then(TRUE_POSITIVE)
        .when(has_truth & has_prediction).then(WRONG)
        .when(has_truth).then(MISSED)
        .when(has_prediction).then(SPURIOUS)
        .otherwise(TRUE_NEGATIVE)
        .cast(pl.UInt8)
    )  # fmt: skip


def _mismatches(config: EvaluationConfig, scored: pl.DataFrame) -> pl.DataFrame:
    """One row per (record, field) that did not match, in file order, field by field."""
    outcome_dtype = pl.Enum(list(OUTCOME_NAMES.values()))
    parts = [
        scored.lazy()
        .filter(pl.col(f"__o{i}") > TRUE_POSITIVE)
        .select(
            pl.col(RECORD_ID).alias("record_id"),
            pl.lit(field.name).alias("field"),
            pl.col(truth_column(i)).alias("truth"),
            pl.col(prediction_column(i)).alias("prediction"),
            pl.col(f"__o{i}").replace_strict(OUTCOME_NAMES, return_dtype=outcome_dtype).alias("outcome"),
            pl.lit(matching.rule_label(field)).alias("rule"),
            pl.col(TRUTH_ROW).alias("truth_row"),
            pl.col(PREDICTION_ROW).alias("prediction_row"),
        )
        for i, field in enumerate(config.fields)
    ]
    return pl.concat(parts).collect()

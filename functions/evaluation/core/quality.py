"""The quality check: is a model's dataset fit to evaluate? Every issue names the file,
column, rows and what was expected.

Truth must be clean: a truth problem is an error and fails the check. Predictions are judged,
not policed: a prediction that does not parse, is out of range or is not an allowed category
is a warning (the evaluation counts it as wrong), so a weak model is evaluated, not refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

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
    prediction_present,
    prediction_value,
    truth_column,
    truth_present,
    truth_value,
)
from dropwire.functions.evaluation.core.errors import DatasetUnreadable
from dropwire.functions.evaluation.core.issues import MAX_ROWS_LISTED, QualityIssue, QualityReport, Severity, row_text
from dropwire.functions.evaluation.core.readers import ROW, Table

EXAMPLES = 3


class _Check(msgspec.Struct, frozen=True, kw_only=True):
    """One vectorised check: ``mask`` marks offending rows of ``frame``; ``describe`` turns
    the count, listed rows and example values into the issue's message."""

    check: str
    severity: Severity
    file: str
    column: str | None
    mask: pl.Expr
    row: str
    example: pl.Expr
    expected: str
    describe: Callable[[int, str, str], str]
    # Issue only when more than this many rows are marked (a share limit, or none).
    threshold: int = 0


def check_quality(config: EvaluationConfig, files: DatasetFiles) -> QualityReport:
    """Read and check a model's dataset. Never raises for bad data: an unreadable file is a
    failed report with its issues."""
    try:
        dataset = load_dataset(config, files)
    except DatasetUnreadable as exc:
        return QualityReport(passed=False, rows_checked=0, issues=exc.issues, files=[])
    return check_dataset(dataset)


def check_dataset(dataset: Dataset) -> QualityReport:
    config = dataset.config
    checks = _record_checks(dataset) + [c for i, f in enumerate(config.fields) for c in _field_checks(dataset, i, f)]
    issues = _too_few_rows(dataset) + _run(dataset.frame, checks)
    # Duplicate ids are counted per file, before the join multiplies them.
    issues += [issue for table in dataset.tables for issue in _duplicate_ids(config, table)]
    order = {"error": 0, "warning": 1}
    issues.sort(key=lambda i: order[i.severity])
    return QualityReport(
        passed=not any(i.severity == "error" for i in issues),
        rows_checked=dataset.frame.height,
        issues=issues,
        files=[t.source for t in dataset.tables],
    )


def _run(frame: pl.DataFrame, checks: list[_Check]) -> list[QualityIssue]:
    """All checks in one parallel pass over the frame."""
    if not checks:
        return []
    exprs = []
    for k, c in enumerate(checks):
        mask = pl.col(f"__m{k}")
        exprs += [
            mask.sum().alias(f"n{k}"),
            pl.col(c.row).filter(mask).head(MAX_ROWS_LISTED).implode().alias(f"r{k}"),
            c.example.filter(mask).unique(maintain_order=True).head(EXAMPLES).implode().alias(f"e{k}"),
        ]
    # Masks become columns first: used three times each, they would otherwise be computed three
    # times (a duplicate-id mask costs a hash of every id).
    masked = frame.lazy().with_columns(c.mask.alias(f"__m{k}") for k, c in enumerate(checks))
    found = masked.select(exprs).collect().row(0, named=True)
    issues = []
    for k, c in enumerate(checks):
        count = found[f"n{k}"]
        if count > c.threshold:
            rows = [r for r in found[f"r{k}"] if r is not None]
            examples = ", ".join(repr(e) for e in found[f"e{k}"] if e is not None)
            issues.append(QualityIssue(check=c.check, severity=c.severity, file=c.file, column=c.column, rows=rows,
                                       row_count=count, message=c.describe(count, row_text(rows, count), examples),
                                       expected=c.expected))
    return issues


def _too_few_rows(dataset: Dataset) -> list[QualityIssue]:
    rows, least = dataset.frame.height, dataset.config.dataset.min_rows
    if rows >= least:
        return []
    message = f"the dataset has {rows} record(s); the config asks for at least {least} (dataset.min_rows)"
    return [QualityIssue(check="too_few_rows", severity="error", file=dataset.truth_file, column=None, rows=[],
                         row_count=rows, message=message, expected=f"at least {least} records")]


def _duplicate_ids(config: EvaluationConfig, table: Table) -> list[QualityIssue]:
    if not config.record_id:
        return []
    ids = pl.col(config.record_id).str.strip_chars()
    present = ~matching.is_missing(pl.col(config.record_id), config.dataset.missing_values)
    column = config.record_id
    check = _Check(
        check="duplicate_record_id", severity="error", file=table.source.url, column=column,
        mask=present & ids.is_duplicated(), row=ROW, example=ids,
        expected="each record id on one row only",
        describe=lambda n, rows, ex: f"file {table.source.url} column '{column}': {n} rows share their record id "
                                     f"with another row: {rows} (ids {ex})",
    )  # fmt: skip
    return _run(table.frame, [check])


def _record_checks(dataset: Dataset) -> list[_Check]:
    config = dataset.config
    if not config.record_id:
        return []
    column, truth_url, pred_url = config.record_id, dataset.truth_file, dataset.prediction_file
    missing_id = matching.is_missing(pl.col(RECORD_ID), config.dataset.missing_values)
    checks = [
        _Check(check="missing_record_id", severity="error", file=url, column=column,
               mask=pl.col(row).is_not_null() & missing_id, row=row, example=pl.col(RECORD_ID),
               expected="a record id on every row",
               describe=lambda n, rows, ex, url=url: f"file {url} column '{column}': {n} row(s) have no record id: {rows}")
        for url, row in [(truth_url, TRUTH_ROW)] + ([(pred_url, PREDICTION_ROW)] if config.layout == "separate" else [])
    ]  # fmt: skip
    if config.layout == "separate":
        checks += [
            _Check(check="truth_without_prediction", severity="error", file=truth_url, column=column,
                   mask=pl.col(PREDICTION_ROW).is_null() & ~missing_id, row=TRUTH_ROW, example=pl.col(RECORD_ID),
                   expected=f"a row in {pred_url} for every record id of the truth file",
                   describe=lambda n, rows, ex: f"file {truth_url}: {n} record(s) have no prediction in {pred_url}: {rows} (ids {ex})"),
            _Check(check="prediction_without_truth", severity="error", file=pred_url, column=column,
                   mask=pl.col(TRUTH_ROW).is_null() & ~missing_id, row=PREDICTION_ROW, example=pl.col(RECORD_ID),
                   expected=f"only record ids that appear in {truth_url}",
                   describe=lambda n, rows, ex: f"file {pred_url}: {n} prediction(s) have no truth in {truth_url}: {rows} (ids {ex})"),
        ]  # fmt: skip
    return checks


class _Side(NamedTuple):
    """The truth or the prediction side of one field, as the checks need it."""

    text: str
    value: str
    present: str
    row: str
    url: str
    column: str
    severity: Severity


def _field_checks(dataset: Dataset, index: int, field: FieldSpec) -> list[_Check]:
    config = dataset.config
    sides = (
        _Side(truth_column(index), truth_value(index), truth_present(index), TRUTH_ROW, dataset.truth_file,
              config.truth_column(field), "error"),
        _Side(prediction_column(index), prediction_value(index), prediction_present(index), PREDICTION_ROW,
              dataset.prediction_file, config.prediction_column(field), "warning"),
    )  # fmt: skip
    checks: list[_Check] = []
    for side in sides:
        on_file = pl.col(side.row).is_not_null()
        missing = on_file & ~pl.col(side.present)
        present = on_file & pl.col(side.present)
        value = pl.col(side.value)
        if field.required and side.severity == "error":
            checks.append(_check(side, field, "missing_required", missing, "a truth value on every row (the field is required)",
                                 "required value(s) missing"))  # fmt: skip
        share = config.dataset.max_missing_share
        if share < 1.0:
            # A share of the rows this file has, known only once the files are joined.
            on_rows = dataset.frame.select(on_file.sum()).item()
            checks.append(_check(side, field, "too_many_missing", missing, f"at most {share:.0%} of values missing (dataset.max_missing_share)",
                                 f"missing value(s), more than {share:.0%} of {on_rows} rows", threshold=int(share * on_rows)))  # fmt: skip
        if field.type in matching.EXPECTED or field.type == "date":
            expected = matching.expected_date(field) if field.type == "date" else matching.EXPECTED[field.type]
            checks.append(_check(side, field, "invalid_type", present & value.is_null(), expected,
                                 f"value(s) that do not parse as {field.type}"))  # fmt: skip
        if field.type == "category":
            checks.append(_check(side, field, "unknown_category", present & ~value.is_in(matching.category_keys(field)),
                                 "one of " + ", ".join(field.categories), "value(s) outside the allowed categories"))  # fmt: skip
        if field.type in ("integer", "number") and (field.min is not None or field.max is not None):
            low = value < field.min if field.min is not None else pl.lit(False)
            high = value > field.max if field.max is not None else pl.lit(False)
            bounds = _bounds(field)
            checks.append(_check(side, field, "out_of_range", (low | high).fill_null(False), f"a value {bounds}", f"value(s) not {bounds}"))
    return checks


def _check(side: _Side, field: FieldSpec, check: str, mask: pl.Expr, expected: str, what: str, threshold: int = 0) -> _Check:
    where = f"file {side.url} column '{side.column}' (field {field.name}, {field.type})"
    return _Check(
        check=check, severity=side.severity, file=side.url, column=side.column, mask=mask, row=side.row,
        example=pl.col(side.text), expected=expected, threshold=threshold,
        describe=lambda n, rows, ex: f"{where}: {n} {what}: {rows}" + (f" (e.g. {ex})" if ex else ""),
    )  # fmt: skip


def _bounds(field: FieldSpec) -> str:
    if field.min is not None and field.max is not None:
        return f"between {field.min:g} and {field.max:g}"
    return f">= {field.min:g}" if field.min is not None else f"<= {field.max:g}"

"""A model's dataset as one frame: every record with its truth and prediction text per field,
whether it came from one file or from a truth file and a predictions file joined on the id."""

from __future__ import annotations

import msgspec
import polars as pl

from dropwire.functions.evaluation.core import matching
from dropwire.functions.evaluation.core.config import EvaluationConfig
from dropwire.functions.evaluation.core.errors import DatasetUnreadable
from dropwire.functions.evaluation.core.issues import QualityIssue, file_issue
from dropwire.functions.evaluation.core.readers import ROW, Table, read_table

# Columns of Dataset.frame besides the per-field __t{i} / __p{i} text columns.
RECORD_ID = "__id"
TRUTH_ROW = "__row_t"
PREDICTION_ROW = "__row_p"


class DatasetFiles(msgspec.Struct, frozen=True, kw_only=True):
    """Where a model's data is: ``dataset`` for layout single, ``truth`` and ``predictions``
    for layout separate (local paths, ``file://`` or ``s3://`` URLs)."""

    dataset: str | None = None
    truth: str | None = None
    predictions: str | None = None
    #: fsspec options per protocol for reading them (e.g. an S3-compatible endpoint).
    storage_options: dict[str, dict] = {}


class Dataset(msgspec.Struct, frozen=True):
    config: EvaluationConfig
    # The files as read: one (single) or truth then predictions (separate).
    tables: list[Table]
    # One row per record (for separate layout, per id seen in either file): RECORD_ID,
    # TRUTH_ROW / PREDICTION_ROW (file row numbers, null where the record is absent from that
    # file), truth_column(i) / prediction_column(i) text per field, truth_value(i) /
    # prediction_value(i), that text parsed as the field's type (null where it does not parse),
    # truth_form(i) / prediction_form(i), what the field's rule compares (matching.compared),
    # and truth_present(i) / prediction_present(i), whether the cell has a value at all.
    frame: pl.DataFrame

    @property
    def truth_file(self) -> str:
        return self.tables[0].source.url

    @property
    def prediction_file(self) -> str:
        return self.tables[-1].source.url


def truth_column(index: int) -> str:
    return f"__t{index}"


def prediction_column(index: int) -> str:
    return f"__p{index}"


def truth_value(index: int) -> str:
    return f"__vt{index}"


def prediction_value(index: int) -> str:
    return f"__vp{index}"


def truth_form(index: int) -> str:
    return f"__ct{index}"


def prediction_form(index: int) -> str:
    return f"__cp{index}"


def truth_present(index: int) -> str:
    return f"__ht{index}"


def prediction_present(index: int) -> str:
    return f"__hp{index}"


def load_dataset(config: EvaluationConfig, files: DatasetFiles) -> Dataset:
    """Read the model's file(s); raise DatasetUnreadable listing the problems of every file."""
    if config.layout == "single":
        roles = [("dataset", files.dataset, _columns(config, truth=True) + _columns(config, truth=False))]
    else:
        roles = [("truth", files.truth, _columns(config, truth=True)), ("predictions", files.predictions, _columns(config, truth=False))]
    tables: list[Table] = []
    issues: list[QualityIssue] = []
    for role, url, expected in roles:
        if url is None:
            issues.append(file_issue("missing_file", f"({role})", f"no {role} file was given; layout '{config.layout}' needs it",
                                     f"a {role} file"))
            continue
        try:
            tables.append(read_table(url, config.dataset, role, expected, files.storage_options))
        except DatasetUnreadable as exc:
            issues.extend(exc.issues)
    if issues:
        raise DatasetUnreadable(issues)
    if config.layout == "single":
        frame = tables[0].frame.select(
            _record_id(config),
            pl.col(ROW).alias(TRUTH_ROW),
            pl.col(ROW).alias(PREDICTION_ROW),
            *(pl.col(config.truth_column(f)).alias(truth_column(i)) for i, f in enumerate(config.fields)),
            *(pl.col(config.prediction_column(f)).alias(prediction_column(i)) for i, f in enumerate(config.fields)),
        )
    else:
        truth, predictions = (_side(config, t, truth=side) for t, side in zip(tables, (True, False), strict=False))
        # Records missing from one file stay in the frame, with that file's row null, for the
        # quality check to report.
        frame = truth.join(predictions, on=RECORD_ID, how="full", coalesce=True, maintain_order="left_right")
    return Dataset(config, tables, _with_values(config, frame))


def _with_values(config: EvaluationConfig, frame: pl.DataFrame) -> pl.DataFrame:
    """Add each text column's presence flag, typed value and compared form, computed once here
    for both the quality check and the evaluation (recomputing them per check tripled the run
    time)."""
    direct, distinct, reused = [], [], []
    for i, field in enumerate(config.fields):
        for text, value, form, present in ((truth_column(i), truth_value(i), truth_form(i), truth_present(i)),
                                           (prediction_column(i), prediction_value(i), prediction_form(i), prediction_present(i))):  # fmt: skip
            direct.append((~matching.is_missing(pl.col(text), config.dataset.missing_values)).alias(present))
            outputs = [(value, lambda t, field=field: matching.parse(field, t))]
            if (from_value := matching.compared_from_value(field, pl.col(value), pl.col(text))) is not None:
                reused.append(from_value.alias(form))
            else:
                outputs.append((form, lambda t, field=field: matching.compared(field, t)))
            for name, expression in outputs:
                if matching.worth_distinct(field):
                    distinct.append((text, name, expression))
                else:
                    direct.append(expression(pl.col(text)).alias(name))
    frame = frame.lazy().with_columns(direct).collect()
    return matching.by_distinct(frame, distinct).with_columns(reused)


def _columns(config: EvaluationConfig, truth: bool) -> list[str]:
    named = [config.truth_column(f) if truth else config.prediction_column(f) for f in config.fields]
    return ([config.record_id] if config.record_id else []) + named


def _record_id(config: EvaluationConfig) -> pl.Expr:
    # Without a record id column (layout single only) a record is known by its row number.
    source = pl.col(config.record_id) if config.record_id else pl.col(ROW).cast(pl.String)
    return source.str.strip_chars().alias(RECORD_ID)


def _side(config: EvaluationConfig, table: Table, truth: bool) -> pl.DataFrame:
    name, row = (truth_column, TRUTH_ROW) if truth else (prediction_column, PREDICTION_ROW)
    column = config.truth_column if truth else config.prediction_column
    return table.frame.select(
        _record_id(config),
        pl.col(ROW).alias(row),
        *(pl.col(column(f)).alias(name(i)) for i, f in enumerate(config.fields)),
    )

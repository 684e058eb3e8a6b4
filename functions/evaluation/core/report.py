"""An evaluation's results on storage: Parquet for machines (per record, per field,
mismatches) and an Excel report for people (Summary, Per field, Mismatches)."""

from __future__ import annotations

import io
import posixpath

import fsspec
import msgspec
import polars as pl
import xlsxwriter

from dropwire.functions.evaluation.core.metrics import Evaluation, EvaluationMetrics

# The Mismatches sheet lists at most this many rows (the Parquet file has them all); Excel
# itself stops at 1,048,576 and a sheet this long is already past reading.
EXCEL_MISMATCH_ROWS = 100_000
PERCENT = "0.0%"


class ResultFiles(msgspec.Struct, frozen=True, kw_only=True):
    per_record: str
    per_field: str
    mismatches: str


class ReportContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the Summary sheet says the evaluation was of."""

    use_case: str
    model_name: str
    model_version: str
    config_hash: str
    files: list[str]
    evaluated_at: str


def per_field_frame(metrics: EvaluationMetrics) -> pl.DataFrame:
    return pl.DataFrame([msgspec.to_builtins(m) for m in metrics.fields], orient="row")


def write_results(evaluation: Evaluation, output_prefix: str) -> ResultFiles:
    """Write the Parquet results under ``output_prefix`` (a folder path or URL)."""
    prefix = output_prefix.rstrip("/")
    files = ResultFiles(
        per_record=f"{prefix}/per_record.parquet",
        per_field=f"{prefix}/per_field.parquet",
        mismatches=f"{prefix}/mismatches.parquet",
    )
    for url, frame in ((files.per_record, evaluation.per_record), (files.per_field, per_field_frame(evaluation.metrics)),
                       (files.mismatches, evaluation.mismatches)):  # fmt: skip
        _write(url, lambda f, frame=frame: frame.write_parquet(f))
    return files


def write_excel_report(evaluation: Evaluation, context: ReportContext, url: str) -> str:
    """Write the Excel report to ``url`` and return it."""
    buffer = io.BytesIO()
    # in_memory: no temporary files, so a handler needs no local disk.
    with xlsxwriter.Workbook(buffer, {"in_memory": True}) as workbook:
        _summary_sheet(workbook, evaluation, context)
        _per_field_sheet(workbook, evaluation.metrics)
        _mismatches_sheet(workbook, evaluation.mismatches)
    _write(url, lambda f: f.write(buffer.getvalue()))
    return url


def _write(url: str, write) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        write(f)


def _summary_sheet(workbook: xlsxwriter.Workbook, evaluation: Evaluation, context: ReportContext) -> None:
    metrics = evaluation.metrics
    sheet = workbook.add_worksheet("Summary")
    title = workbook.add_format({"bold": True, "font_size": 16})
    label = workbook.add_format({"bold": True, "font_color": "#44546A"})
    header = workbook.add_format({"bold": True, "bg_color": "#1F4E78", "font_color": "white", "border": 1})
    percent = workbook.add_format({"num_format": PERCENT, "border": 1})
    count = workbook.add_format({"num_format": "#,##0", "border": 1})
    cell = workbook.add_format({"border": 1})
    note = workbook.add_format({"italic": True, "font_color": "#595959", "text_wrap": True, "valign": "top"})
    sheet.set_column(0, 0, 34)
    sheet.set_column(1, 2, 24)
    sheet.set_column(3, 3, 60)

    sheet.write(0, 0, f"Evaluation report: {context.use_case}", title)
    facts = [
        ("Use case", context.use_case),
        ("Model", context.model_name),
        ("Model version", context.model_version),
        ("Evaluated at", context.evaluated_at),
        ("Dataset file(s)", ", ".join(context.files)),
        ("Config hash", context.config_hash),
    ]
    row = 2
    for name, value in facts:
        sheet.write(row, 0, name, label)
        sheet.write_string(row, 1, value)
        row += 1
    sheet.write(row, 0, "Records", label)
    sheet.write_number(row, 1, metrics.records, workbook.add_format({"num_format": "#,##0", "align": "left"}))
    sheet.write(row + 1, 0, "Records with every field right", label)
    sheet.write_number(row + 1, 1, metrics.records_all_matched, workbook.add_format({"num_format": PERCENT, "align": "left"}))

    row += 3
    sheet.write_row(row, 0, ["Metric", "All fields pooled (micro)", "Mean of fields (macro)"], header)
    for name in ("accuracy", "precision", "recall", "f1"):
        row += 1
        sheet.write(row, 0, "F1" if name == "f1" else name.title(), cell)
        sheet.write_number(row, 1, getattr(metrics.micro, name), percent)
        sheet.write_number(row, 2, getattr(metrics.macro, name), percent)
    for name, value in (("True positives", metrics.micro.tp), ("False positives", metrics.micro.fp),
                        ("False negatives", metrics.micro.fn), ("True negatives (both empty)", metrics.micro.tn)):  # fmt: skip
        row += 1
        sheet.write(row, 0, name, cell)
        sheet.write_number(row, 1, value, count)
        sheet.write_blank(row, 2, None, cell)
    sheet.merge_range(
        row + 2, 0, row + 5, 3,
        "How a field is scored: a correct prediction is a true positive; a wrong one is a false positive and a false "
        "negative; a missing prediction is a false negative; a prediction where the truth is empty is a false positive; "
        "both empty counts as correct (a true negative). Accuracy is the share of records the field got right. "
        "See 'Per field' for each field and 'Mismatches' for every wrong value.",
        note,
    )  # fmt: skip
    sheet.activate()


def _per_field_sheet(workbook: xlsxwriter.Workbook, metrics: EvaluationMetrics) -> None:
    frame = per_field_frame(metrics).rename({"tp": "TP", "fp": "FP", "fn": "FN", "tn": "TN", "f1": "F1"})
    frame.write_excel(
        workbook,
        "Per field",
        table_style="Table Style Medium 2",
        column_formats={**{c: PERCENT for c in ("accuracy", "precision", "recall", "F1")}, **{c: "#,##0" for c in ("records", "TP", "FP", "FN", "TN")}},
        conditional_formats={"F1": {"type": "data_bar", "bar_color": "#63BE7B", "bar_solid": True}},
        autofit=True,
        freeze_panes="A2",
    )


def _mismatches_sheet(workbook: xlsxwriter.Workbook, mismatches: pl.DataFrame) -> None:
    shown = mismatches.head(EXCEL_MISMATCH_ROWS).with_columns(pl.col("outcome").cast(pl.String))
    if shown.is_empty():
        sheet = workbook.add_worksheet("Mismatches")
        sheet.write(0, 0, "Every prediction matched its truth.")
        return
    shown.write_excel(
        workbook,
        "Mismatches",
        table_style="Table Style Light 9",
        column_widths={"record_id": 16, "field": 20, "truth": 32, "prediction": 32, "outcome": 34, "rule": 40,
                       "truth_row": 11, "prediction_row": 15},
        freeze_panes="A2",
    )
    if mismatches.height > EXCEL_MISMATCH_ROWS:
        sheet = workbook.get_worksheet_by_name("Mismatches")
        assert sheet is not None  # written just above
        note = f"First {EXCEL_MISMATCH_ROWS:,} of {mismatches.height:,} mismatches; all of them are in mismatches.parquet"
        sheet.write(0, len(shown.columns) + 1, note, workbook.add_format({"italic": True, "font_color": "#C00000"}))

"""The results on storage: Parquet that round-trips, an Excel report a person can use, and a
real MLflow run in a local store."""

from __future__ import annotations

import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from openpyxl import load_workbook

from dropwire.functions.evaluation.core import (
    DatasetFiles,
    ReportContext,
    config_hash,
    evaluate,
    local_tracking_store,
    log_evaluation_run,
    write_excel_report,
    write_results,
)
from dropwire.functions.evaluation.core import report as report_module

# openpyxl, used only to read the report back, cannot parse the data bars (Excel can).
pytestmark = pytest.mark.filterwarnings("ignore:.*extension is not supported:UserWarning")


@pytest.fixture
def evaluation(config, good_csv):
    return evaluate(config, DatasetFiles(dataset=good_csv))


@pytest.fixture
def context(config, good_csv) -> ReportContext:
    return ReportContext(use_case="invoices", model_name="extractor", model_version="2.1", config_hash=config_hash(config),
                         files=[good_csv], evaluated_at="2026-01-02T03:04:05+00:00")  # fmt: skip


def test_parquet_results_round_trip(evaluation, tmp_path):
    files = write_results(evaluation, (tmp_path / "out" / "m1").as_uri() + "/")
    assert files.per_record.endswith("/out/m1/per_record.parquet")
    assert pl.read_parquet(files.per_record).equals(evaluation.per_record)
    assert pl.read_parquet(files.mismatches).equals(evaluation.mismatches)
    per_field = pl.read_parquet(files.per_field)
    assert per_field["field"].to_list() == [m.field for m in evaluation.metrics.fields]
    assert per_field["f1"].to_list() == [m.f1 for m in evaluation.metrics.fields]


def test_excel_report_has_summary_per_field_and_mismatches(evaluation, context, tmp_path):
    url = write_excel_report(evaluation, context, str(tmp_path / "reports" / "report.xlsx"))
    book = load_workbook(url)
    assert book.sheetnames == ["Summary", "Per field", "Mismatches"]

    summary = {row[0]: row[1:] for row in book["Summary"].iter_rows(values_only=True) if row[0]}
    assert summary["Evaluation report: invoices"] == (None, None, None)
    assert summary["Model"][0] == "extractor" and summary["Model version"][0] == "2.1"
    assert summary["Config hash"][0] == context.config_hash and summary["Records"][0] == 4
    assert summary["F1"][:2] == (evaluation.metrics.micro.f1, evaluation.metrics.macro.f1)
    assert summary["False positives"][0] == 4

    per_field = book["Per field"]
    header = [c.value for c in per_field[1]]
    assert header[:4] == ["field", "type", "rule", "records"] and "F1" in header
    assert [per_field.cell(row=r, column=1).value for r in range(2, 8)] == [m.field for m in evaluation.metrics.fields]
    f1_cell = per_field.cell(row=2, column=header.index("F1") + 1)
    assert f1_cell.number_format == "0.0%" and f1_cell.value == evaluation.metrics.fields[0].f1
    assert per_field.freeze_panes == "A2" and per_field.tables

    mismatches = book["Mismatches"]
    assert [c.value for c in mismatches[1]][:5] == ["record_id", "field", "truth", "prediction", "outcome"]
    assert mismatches.max_row == 1 + evaluation.mismatches.height
    assert [mismatches.cell(row=2, column=c).value for c in range(1, 6)] == ["r2", "name", "Foo", "Bar", "wrong value"]
    assert mismatches.freeze_panes == "A2" and mismatches.tables


def test_long_mismatch_lists_are_cut_with_a_note(evaluation, context, tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "EXCEL_MISMATCH_ROWS", 2)
    sheet = load_workbook(write_excel_report(evaluation, context, str(tmp_path / "r.xlsx")))["Mismatches"]
    assert sheet.max_row == 3
    assert "First 2 of 5 mismatches; all of them are in mismatches.parquet" in [c.value for c in sheet[1]]


def test_mlflow_run_in_a_real_local_store(evaluation, context, data_dir, tmp_path):
    report_url = write_excel_report(evaluation, context, str(tmp_path / "report.xlsx"))
    store = local_tracking_store(data_dir)
    assert store.tracking_uri == f"sqlite:///{data_dir.resolve()}/mlflow/mlflow.db"
    run_ids = [
        log_evaluation_run(store, "uc-invoices", use_case="invoices", model_name="extractor", model_version=version,
                           config_hash=context.config_hash, metrics=evaluation.metrics, report_url=report_url)
        for version in ("2.1", "2.2")
    ]  # fmt: skip

    client = MlflowClient(tracking_uri=store.tracking_uri)
    experiment = client.get_experiment_by_name("uc-invoices")
    assert experiment.artifact_location == (data_dir.resolve() / "mlflow" / "artifacts").as_uri()
    assert {r.info.run_id for r in client.search_runs([experiment.experiment_id])} == set(run_ids)
    run = client.get_run(run_ids[0])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"use_case": "invoices", "model_name": "extractor", "model_version": "2.1",
                               "config_hash": context.config_hash, "records": "4", "fields": "6"}  # fmt: skip
    total = next(m for m in evaluation.metrics.fields if m.field == "total")
    assert run.data.metrics["field/total/f1"] == total.f1 and run.data.metrics["field/total/fp"] == 2
    assert run.data.metrics["micro/f1"] == evaluation.metrics.micro.f1
    assert [a.path for a in client.list_artifacts(run_ids[0])] == ["report.xlsx"]
    downloaded = client.download_artifacts(run_ids[0], "report.xlsx", str(tmp_path / "dl"))
    assert load_workbook(downloaded).sheetnames == ["Summary", "Per field", "Mismatches"]

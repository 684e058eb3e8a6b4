"""The file-driven evaluation workflow end to end: a real emulator serving the product's
catalog, real files dropped into its bucket folder, real Parquet, Excel and MLflow output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import polars as pl
import pytest

from functions.evaluation import QualityReport
from tests.conftest import wait_for
from tests.evaluation.conftest import FIELDS, GOOD_ROWS, HEADER

pytestmark = pytest.mark.slow

VALID_CONFIG = json.dumps({"use_case": "invoices", "fields": FIELDS})
# Two problems the flow adds to the core's checks: another use case's name, and a layout
# that one dataset file per model cannot serve.
INVALID_CONFIG = f"use_case: receipts\nlayout: separate\nfields: {json.dumps(FIELDS)}\n"


def drop(bucket: Path, key: str, content: bytes | str) -> None:
    """Put a file in place whole (a hidden temporary name, then a rename), as an upload would."""
    target = bucket / key
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp"
    temporary.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(temporary, target)


def csv(rows: list[list[str]]) -> str:
    return "\n".join(",".join(row) for row in rows) + "\n"


def state(emulator, kind: str, entity_id: str) -> str | None:
    rows = emulator.store.query("SELECT state FROM entity_states WHERE kind = ? AND entity_id = ?", [kind, entity_id])
    return rows[0][0] if rows else None


def reach(emulator, kind: str, entity_id: str, wanted: str) -> None:
    wait_for(lambda: state(emulator, kind, entity_id) == wanted, timeout=40,
             what=f"{kind} {entity_id} to reach {wanted} (it is {state(emulator, kind, entity_id)})")


def test_use_case_config_and_three_models_progress_independently(start_emulator):
    emulator, http = start_emulator(DROPWIRE_FUNCTIONS="functions.catalog:functions")
    bucket = emulator.settings.bucket_path

    drop(bucket, "use-cases/invoices/use-case.json", json.dumps({"name": "Invoices", "team_email": "team@example.com"}))
    reach(emulator, "use_case", "invoices", "AWAITING_CONFIG")
    template = bucket / "evaluation-templates" / "invoices" / "config-template.yaml"
    assert "use_case: \"invoices\"" in template.read_text()
    history = emulator.store.snapshot("use_case", "invoices").history
    assert [h.trigger for h in history] == ["create", "template_sent", "await_config"]
    assert all(h.metadata["file_uploaded"] == "local/use-cases/invoices/use-case.json" for h in history)
    assert {h.triggered_by for h in history} == {"function:evaluation-use-case"}

    # An invalid config lists every problem; the corrected re-upload of the same key is validated.
    drop(bucket, "use-cases/invoices/config.yaml", INVALID_CONFIG)
    reach(emulator, "use_case", "invoices", "CONFIG_INVALID")
    invalid = emulator.store.snapshot("use_case", "invoices").history[-1]
    paths = [p["path"] for p in invalid.metadata["problems"]]
    assert paths == ["use_case", "layout"]
    assert invalid.metadata["file_uploaded"] == "local/use-cases/invoices/config.yaml"
    drop(bucket, "use-cases/invoices/config.yaml", VALID_CONFIG)
    reach(emulator, "use_case", "invoices", "CONFIG_VALIDATED")
    triggers = [h.trigger for h in emulator.store.snapshot("use_case", "invoices").history]
    assert triggers[3:] == ["config_uploaded", "validation_started", "config_invalid",
                            "config_uploaded", "validation_started", "config_valid"]

    for model in ("alpha", "beta", "gamma"):
        drop(bucket, f"use-cases/invoices/models/{model}/register.json", json.dumps({"name": model, "version": "1"}))
    for model in ("alpha", "beta", "gamma"):
        reach(emulator, "model", f"invoices/{model}", "REGISTERED")

    # beta's dataset misses a required truth value; alpha (CSV) and gamma (Parquet) are clean.
    broken = [row.copy() for row in GOOD_ROWS]
    broken[1][1] = ""
    drop(bucket, "use-cases/invoices/models/beta/dataset.csv", csv([HEADER, *broken]))
    drop(bucket, "use-cases/invoices/models/alpha/dataset.csv", csv([HEADER, *GOOD_ROWS]))
    frame = pl.DataFrame({c: [r[i] for r in GOOD_ROWS] for i, c in enumerate(HEADER)})
    parquet = bucket / "gamma.parquet.tmp"
    frame.write_parquet(parquet)
    drop(bucket, "use-cases/invoices/models/gamma/dataset.parquet", parquet.read_bytes())
    parquet.unlink()

    reach(emulator, "model", "invoices/beta", "AWAITING_DATA_FIX")
    reach(emulator, "model", "invoices/alpha", "EVALUATION_COMPLETED")
    reach(emulator, "model", "invoices/gamma", "EVALUATION_COMPLETED")
    failed = emulator.store.snapshot("model", "invoices/beta").history
    assert [h.trigger for h in failed] == ["create", "dataset_uploaded", "quality_check_started",
                                           "quality_check_failed", "await_data_fix"]
    issue = failed[3].metadata["issues"][0]
    assert issue["column"] == "name_true" and issue["rows"] == [3] and "required" in issue["message"]
    report = msgspec.json.decode((bucket / "evaluation-results/invoices/beta/1/quality-report.json").read_bytes(),
                                 type=QualityReport)
    assert not report.passed and report.errors[0].check == "missing_required"

    evaluated = emulator.store.snapshot("model", "invoices/alpha").history
    assert [h.trigger for h in evaluated][1:] == ["dataset_uploaded", "quality_check_started", "quality_check_passed",
                                                  "evaluation_queued", "evaluation_started", "evaluation_succeeded"]
    done = evaluated[-1].metadata
    assert done["file_uploaded"] == "local/use-cases/invoices/models/alpha/dataset.csv"
    assert done["records"] == 4 and 0 < done["micro"]["f1"] < 1 and set(done["field_f1"]) == {f["name"] for f in FIELDS}
    results = bucket / "evaluation-results" / "invoices" / "alpha" / "1"
    assert pl.read_parquet(results / "per_record.parquet").height == 4
    assert (results / "per_field.parquet").exists() and (results / "mismatches.parquet").exists()
    assert (results / "report.xlsx").read_bytes()[:2] == b"PK"
    gamma = emulator.store.snapshot("model", "invoices/gamma").history[-1].metadata
    assert gamma["micro"] == done["micro"]  # the same records, read from Parquet

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=emulator.settings.mlflow_uri)
    run = client.get_run(done["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model_name"] == "alpha"
    assert run.data.metrics["micro/f1"] == pytest.approx(done["micro"]["f1"])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["report.xlsx"]

    # The fixed dataset for beta starts over and is evaluated; the others are untouched.
    drop(bucket, "use-cases/invoices/models/beta/dataset.csv", csv([HEADER, *GOOD_ROWS]))
    reach(emulator, "model", "invoices/beta", "EVALUATION_COMPLETED")
    assert [h.trigger for h in emulator.store.snapshot("model", "invoices/beta").history][5:] == [
        "dataset_uploaded", "quality_check_started", "quality_check_passed", "evaluation_queued", "evaluation_started",
        "evaluation_succeeded"]
    assert len(emulator.store.snapshot("model", "invoices/alpha").history) == len(evaluated)

    expected = sorted(["template_sent", "config_invalid", "qc_failed"] + ["qc_passed", "evaluation_completed"] * 3)
    rows = wait_for(lambda: (rows := emulator.store.query("SELECT kind, attachments FROM notifications"))
                    and len(rows) == len(expected) and rows, what="the notifications")
    assert sorted(kind for kind, _ in rows) == expected
    assert all(any(a.endswith("report.xlsx") for a in json.loads(attachments)) for kind, attachments in rows
               if kind == "evaluation_completed")

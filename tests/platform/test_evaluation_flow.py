"""The file-driven evaluation workflow end to end: a real emulator serving the product's
catalog, real files dropped into its bucket folder, real Parquet, Excel and MLflow output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import polars as pl
import pytest

from dropwire.functions.evaluation.core import QualityReport
from tests.conftest import unfinished_tasks, wait_for
from tests.evaluation.conftest import EXPECTED_FIELD_F1, FIELDS, GOOD_ROWS, HEADER

pytestmark = pytest.mark.slow

VALID_CONFIG = json.dumps({"use_case": "invoices", "fields": FIELDS})
# Two problems, both listed: layout separate without the record id it joins on, and a type
# that does not exist.
INVALID_CONFIG = (f"use_case: invoices\nlayout: separate\nrecord_id: null\n"
                  f"fields: {json.dumps([FIELDS[0], FIELDS[1] | {'type': 'money'}, *FIELDS[2:]])}\n")


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
    # A bound on a hang, not a speed test: CI's loaded 2 cores once took over 40 s here.
    wait_for(lambda: state(emulator, kind, entity_id) == wanted, timeout=90,
             what=lambda: f"{kind} {entity_id} to reach {wanted} (it is {state(emulator, kind, entity_id)}; tasks not "
                          f"succeeded: {unfinished_tasks(emulator.store.query)})")


def test_use_case_config_and_three_models_progress_independently(start_emulator):
    emulator, _http = start_emulator(DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions")
    bucket = emulator.settings.bucket_path

    drop(bucket, "use-cases/invoices/use-case.json", json.dumps({"name": "Invoices", "team_email": "team@example.com"}))
    reach(emulator, "use_case", "invoices", "AWAITING_CONFIG")
    template = bucket / "evaluation-templates" / "invoices" / "config-template.yaml"
    assert "use_case: \"invoices\"" in template.read_text()
    history = emulator.store.states.snapshot("use_case", "invoices").history
    assert [h.trigger for h in history] == ["create", "template_sent", "await_config"]
    assert all(h.metadata["file_uploaded"] == "local/use-cases/invoices/use-case.json" for h in history)
    assert {h.triggered_by for h in history} == {"function:evaluation-use-case"}

    # An invalid config lists every problem; the corrected re-upload of the same key is validated.
    drop(bucket, "use-cases/invoices/config.yaml", INVALID_CONFIG)
    reach(emulator, "use_case", "invoices", "CONFIG_INVALID")
    invalid = emulator.store.states.snapshot("use_case", "invoices").history[-1]
    paths = [p["path"] for p in invalid.metadata["problems"]]
    assert paths == ["record_id", "fields[1].type"]
    assert invalid.metadata["file_uploaded"] == "local/use-cases/invoices/config.yaml"
    drop(bucket, "use-cases/invoices/config.yaml", VALID_CONFIG)
    reach(emulator, "use_case", "invoices", "CONFIG_VALIDATED")
    triggers = [h.trigger for h in emulator.store.states.snapshot("use_case", "invoices").history]
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
    failed = emulator.store.states.snapshot("model", "invoices/beta").history
    assert [h.trigger for h in failed] == ["create", "dataset_uploaded", "quality_check_started",
                                           "quality_check_failed", "await_data_fix"]
    assert failed[1].metadata["files"] == {"dataset": "use-cases/invoices/models/beta/dataset.csv"}
    assert {h.triggered_by for h in failed[2:]} == {"function:evaluation-quality-check"}
    issue = failed[3].metadata["issues"][0]
    assert issue["column"] == "name_true" and issue["rows"] == [3] and "required" in issue["message"]
    report = msgspec.json.decode((bucket / "evaluation-results/invoices/beta/1/quality-report.json").read_bytes(),
                                 type=QualityReport)
    assert not report.passed and report.errors[0].check == "missing_required"

    evaluated = emulator.store.states.snapshot("model", "invoices/alpha").history
    assert [h.trigger for h in evaluated][1:] == ["dataset_uploaded", "quality_check_started", "quality_check_passed",
                                                  "evaluation_queued", "evaluation_started", "evaluation_succeeded"]
    done = evaluated[-1].metadata
    assert done["file_uploaded"] == "local/use-cases/invoices/models/alpha/dataset.csv"
    # GOOD_ROWS counted by hand (tests/evaluation/test_metrics.py): tp 19, fp 4, fn 4 over 24 cells.
    assert done["records"] == 4 and done["micro"]["f1"] == pytest.approx(38 / 46)
    assert done["field_f1"] == pytest.approx(EXPECTED_FIELD_F1)
    results = bucket / "evaluation-results" / "invoices" / "alpha" / "1"
    assert pl.read_parquet(results / "per_record.parquet").height == 4
    assert (results / "per_field.parquet").exists() and (results / "mismatches.parquet").exists()
    assert (results / "report.xlsx").read_bytes()[:2] == b"PK"
    gamma = emulator.store.states.snapshot("model", "invoices/gamma").history[-1].metadata
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
    assert [h.trigger for h in emulator.store.states.snapshot("model", "invoices/beta").history][5:] == [
        "dataset_uploaded", "quality_check_started", "quality_check_passed", "evaluation_queued", "evaluation_started",
        "evaluation_succeeded"]
    assert len(emulator.store.states.snapshot("model", "invoices/alpha").history) == len(evaluated)

    expected = sorted(["template_sent", "config_invalid", "qc_failed"] + ["qc_passed", "evaluation_completed"] * 3)
    rows = wait_for(lambda: (rows := emulator.store.query("SELECT kind, attachments FROM notifications"))
                    and len(rows) == len(expected) and rows, what="the notifications")
    assert sorted(kind for kind, _ in rows) == expected
    assert all(any(a.endswith("report.xlsx") for a in json.loads(attachments)) for kind, attachments in rows
               if kind == "evaluation_completed")


def _use_case_with_models(emulator, use_case: str, config: dict, models: list[str]) -> Path:
    bucket = emulator.settings.bucket_path
    if state(emulator, "use_case", use_case) is None:
        drop(bucket, f"use-cases/{use_case}/use-case.json", json.dumps({"name": use_case, "team_email": "team@example.com"}))
        reach(emulator, "use_case", use_case, "AWAITING_CONFIG")
    drop(bucket, f"use-cases/{use_case}/config.json", json.dumps(config))
    reach(emulator, "use_case", use_case, "CONFIG_VALIDATED")
    for model in models:
        drop(bucket, f"use-cases/{use_case}/models/{model}/register.json", json.dumps({"name": model, "version": "1"}))
        reach(emulator, "model", f"{use_case}/{model}", "REGISTERED")
    return bucket


def _tasks_of(emulator, function: str) -> list[tuple[str, str, dict | None, str | None]]:
    """(event key, status, result, last error) of every invocation task of `function`."""
    rows = emulator.store.query("SELECT json_extract_string(args, '$.event.key'), status, result, last_error FROM tasks "
                                "WHERE name = ? ORDER BY id", [f"fn:{function}"])
    return [(key, status, json.loads(result) if result else None, error) for key, status, result, error in rows]


def _settled(emulator, function: str, count: int) -> bool:
    tasks = _tasks_of(emulator, function)
    return len(tasks) >= count and all(status in ("succeeded", "refused", "dead") for _, status, _, _ in tasks)


def test_separate_layout_waits_for_both_files_and_joins_them_on_the_record_id(start_emulator):
    emulator, _ = start_emulator(DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions")
    bucket = emulator.settings.bucket_path
    drop(bucket, "use-cases/receipts/use-case.json", json.dumps({"name": "Receipts", "team_email": "team@example.com"}))
    reach(emulator, "use_case", "receipts", "AWAITING_CONFIG")
    # A config written for another use case is refused, naming the field.
    drop(bucket, "use-cases/receipts/config.json", json.dumps({"use_case": "invoices", "layout": "separate", "fields": FIELDS}))
    reach(emulator, "use_case", "receipts", "CONFIG_INVALID")
    problem, = emulator.store.states.snapshot("use_case", "receipts").history[-1].metadata["problems"]
    assert problem["path"] == "use_case" and "'receipts'" in problem["message"]
    _use_case_with_models(emulator, "receipts", {"use_case": "receipts", "layout": "separate", "fields": FIELDS}, ["m"])

    # Predictions first (Parquet, records in another order): the model waits for the truth file.
    names = [f["name"] for f in FIELDS]
    truth = pl.DataFrame({"record_id": [r[0] for r in GOOD_ROWS],
                          **{n: [r[1 + 2 * i] for r in GOOD_ROWS] for i, n in enumerate(names)}})
    predictions = pl.DataFrame({"record_id": [r[0] for r in GOOD_ROWS],
                                **{n: [r[2 + 2 * i] for r in GOOD_ROWS] for i, n in enumerate(names)}}).reverse()
    staged = bucket / "predictions.tmp"
    predictions.write_parquet(staged)
    drop(bucket, "use-cases/receipts/models/m/predictions.parquet", staged.read_bytes())
    staged.unlink()
    wait_for(lambda: _settled(emulator, "evaluation-dataset", 1), what="the predictions upload to be handled")
    (_, status, result, _), = _tasks_of(emulator, "evaluation-dataset")
    assert status == "succeeded" and result["waiting_for"] == "use-cases/receipts/models/m/dataset.csv|parquet|xlsx"
    assert state(emulator, "model", "receipts/m") == "REGISTERED"

    drop(bucket, "use-cases/receipts/models/m/dataset.csv", truth.write_csv())
    reach(emulator, "model", "receipts/m", "EVALUATION_COMPLETED")
    history = emulator.store.states.snapshot("model", "receipts/m").history
    assert history[1].metadata["files"] == {"dataset": "use-cases/receipts/models/m/dataset.csv",
                                            "predictions": "use-cases/receipts/models/m/predictions.parquet"}
    done = history[-1].metadata
    assert done["records"] == 4
    # The same records and rules as the single-file layout give the same metrics.
    single = _use_case_with_models(emulator, "single", {"use_case": "single", "fields": FIELDS}, ["m"])
    drop(single, "use-cases/single/models/m/dataset.csv", csv([HEADER, *GOOD_ROWS]))
    reach(emulator, "model", "single/m", "EVALUATION_COMPLETED")
    assert emulator.store.states.snapshot("model", "single/m").history[-1].metadata["micro"] == done["micro"]


def test_a_crash_is_retried_through_RETRYING_then_fails_with_its_error_and_retry_recovers(start_emulator, tmp_path):
    # MLflow 3 refuses a plain-folder tracking store: every evaluation attempt crashes.
    broken_tracking = {"DROPWIRE_MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri()}
    emulator, http = start_emulator(DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions", **broken_tracking)
    bucket = _use_case_with_models(emulator, "invoices", {"use_case": "invoices", "fields": FIELDS}, ["alpha"])
    drop(bucket, "use-cases/invoices/models/alpha/dataset.csv", csv([HEADER, *GOOD_ROWS]))
    reach(emulator, "model", "invoices/alpha", "EVALUATION_FAILED")

    history = emulator.store.states.snapshot("model", "invoices/alpha").history
    assert [h.to_state for h in history[5:]] == ["EVALUATION_RUNNING", "RETRYING", "EVALUATION_RUNNING", "RETRYING",
                                                 "EVALUATION_RUNNING", "EVALUATION_FAILED"]
    assert [h.metadata["attempt"] for h in history[5:]] == [1, 1, 2, 2, 3, 3]
    assert all("file" in h.metadata["error"].lower() for h in history[5:])  # MLflow's refusal, word for word
    assert {h.triggered_by for h in history[5:]} == {"queue:evaluation-run"}
    (key, status, _, error), = _tasks_of(emulator, "evaluation-run")
    assert status == "dead" and key == "use-cases/invoices/models/alpha/dataset.csv" and error == history[-1].metadata["error"]
    body = wait_for(lambda: emulator.store.query("SELECT body FROM notifications WHERE kind = 'evaluation_failed'"),
                    what="the evaluation_failed notification")[0][0]
    assert "crashed on all 3 attempts" in body and history[-1].metadata["error"] in body

    # A retry of a model that has not failed is refused, naming its state.
    emulator, http = start_emulator(DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions")
    bucket = _use_case_with_models(emulator, "invoices", {"use_case": "invoices", "fields": FIELDS}, ["alpha"])
    refused = http.post("/functions/evaluation-retry/invoke?wait=30", json={"use_case": "invoices", "model": "alpha"})
    assert refused.status_code == 409 and refused.json()["error"] == "refused_by_handler", refused.text
    assert "is REGISTERED; this step runs only in EVALUATION_FAILED" in refused.json()["message"]
    # The API's retry route answers the handler's refusal with 409 and its message.
    api = http.post("/api/use-cases/invoices/models/alpha/retry", params={"wait": 30})
    assert api.status_code == 409 and api.json()["error"] == "refused_by_handler", api.text
    assert "is REGISTERED; this step runs only in EVALUATION_FAILED" in api.json()["message"]


def test_retry_after_the_cause_is_fixed_completes_the_evaluation(tmp_path):
    from dropwire.local_emulator.emulator import Emulator
    from tests.platform.conftest import emulator_settings

    data_dir = tmp_path / "data"
    env = {"DROPWIRE_FUNCTIONS": "dropwire.functions.catalog:functions"}
    with Emulator(emulator_settings(data_dir, **env, DROPWIRE_MLFLOW_TRACKING_URI=(tmp_path / "mlruns").as_uri())) as emulator:
        bucket = _use_case_with_models(emulator, "invoices", {"use_case": "invoices", "fields": FIELDS}, ["alpha"])
        drop(bucket, "use-cases/invoices/models/alpha/dataset.csv", csv([HEADER, *GOOD_ROWS]))
        reach(emulator, "model", "invoices/alpha", "EVALUATION_FAILED")
    # Restarted with a working tracking store, then retried through the API's retry route: the
    # failure is not lost.
    import httpx

    with Emulator(emulator_settings(data_dir, **env)) as emulator:
        with httpx.Client(base_url=f"http://127.0.0.1:{emulator.settings.http.port}", timeout=60) as http:
            answer = http.post("/api/use-cases/invoices/models/alpha/retry", params={"wait": 30})
            assert answer.status_code == 200, answer.text
            (run,) = answer.json()["handlers"]
            assert (run["function"], run["status"]) == ("evaluation-retry", "succeeded")
            assert answer.json()["state_url"] == "/api/use-cases/invoices/models/alpha/state"
            reach(emulator, "model", "invoices/alpha", "EVALUATION_COMPLETED")
            assert http.get("/api/use-cases/invoices/models/alpha/results").json()["micro"]["f1"] == pytest.approx(38 / 46)
        history = emulator.store.states.snapshot("model", "invoices/alpha").history
        assert [h.trigger for h in history[-4:]] == ["evaluation_failed", "retry", "evaluation_started",
                                                     "evaluation_succeeded"]
        assert history[-1].metadata["records"] == 4


def test_concurrent_reuploads_of_one_model_one_check_at_a_time_and_a_valid_history(start_emulator, tmp_path):
    emulator, http = start_emulator(DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions", DROPWIRE_QUEUE__WORKERS="3")
    bucket = _use_case_with_models(emulator, "invoices", {"use_case": "invoices", "fields": FIELDS}, ["alpha"])
    # predictions.<ext> belongs to layout separate: refused with what to upload instead.
    drop(bucket, "use-cases/invoices/models/alpha/predictions.csv", csv([HEADER, *GOOD_ROWS]))
    wait_for(lambda: _settled(emulator, "evaluation-dataset", 1), what="the predictions upload to be handled")
    (_, status, _, error), = _tasks_of(emulator, "evaluation-dataset")
    assert status == "refused" and "has layout single: upload one file, dataset.<ext>" in error

    frame = pl.DataFrame({c: [r[i] for r in GOOD_ROWS] for i, c in enumerate(HEADER)})
    staged = tmp_path / "staged"
    frame.write_parquet(staged.with_suffix(".parquet"))
    frame.write_excel(staged.with_suffix(".xlsx"))
    bodies = {"csv": csv([HEADER, *GOOD_ROWS]).encode(), "parquet": staged.with_suffix(".parquet").read_bytes(),
              "xlsx": staged.with_suffix(".xlsx").read_bytes()}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda item: http.put(f"/buckets/local/objects/use-cases/invoices/models/alpha/dataset.{item[0]}",
                                                      content=item[1]), bodies.items()))
    assert [a.status_code for a in answers] == [201, 201, 201]
    wait_for(lambda: _settled(emulator, "evaluation-dataset", 4) and emulator.store.queue.stats().by_status.keys() <= {"succeeded", "refused"},
             timeout=60, what="every upload and check to finish")

    uploads = {key: (status, result, error) for key, status, result, error in _tasks_of(emulator, "evaluation-dataset")
               if "/dataset." in key}
    history = emulator.store.states.snapshot("model", "invoices/alpha").history
    checked = [h.metadata["files"]["dataset"] for h in history if h.trigger == "dataset_uploaded"]
    assert checked, "at least one upload won"
    assert len(uploads) == 3
    # Which upload wins depends on timing, but the outcomes partition exactly: an upload that
    # succeeded was recorded for a check (by its own handler; a later event for the same file
    # finds it covered); one that was refused was read by no check, and says why.
    for key, (status, result, error) in uploads.items():
        if status == "succeeded":
            assert key in checked, (key, result)
        else:  # the user's to upload again, so a refusal, not a dead letter
            assert status == "refused" and key not in checked, (key, status, error)
            assert "upload again when the running check has finished" in error, error
    assert set(checked) == {key for key, (status, _, _) in uploads.items() if status == "succeeded"}
    assert history[-1].to_state == "EVALUATION_COMPLETED"
    path = emulator.settings.database_path
    emulator.stop()

    from dropwire.functions.evaluation.states import MACHINES
    from dropwire.storage import consistency
    from dropwire.storage.store import Store

    with Store.open(path, MACHINES) as store:
        assert consistency.check(store.writer.cursor(), MACHINES) == []


def refusal(emulator, key: str) -> str | None:
    """The message of the first refusal of the file at `key`, or of its wait for a prerequisite
    (which names the same next step), once there is one."""
    rows = emulator.store.query("SELECT error FROM invocations WHERE outcome IN ('refused', 'waiting') AND error LIKE ? "
                                "ORDER BY started_at LIMIT 1", [f"{key}:%"])
    return rows[0][0] if rows else None


def test_a_refused_upload_names_the_step_it_is_missing(start_emulator):
    """Each refusal's hint is the next step for the state the entity is in, not one hint for all."""
    emulator, http = start_emulator(DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions")
    bucket = emulator.settings.bucket_path
    refused = {}

    def refused_with(key: str, content: str) -> str:
        drop(bucket, key, content)
        return wait_for(lambda: refusal(emulator, key), timeout=90, what=f"the refusal of {key}")

    # No use case at all: register it first (not "upload a valid config.yaml").
    refused["ghost"] = refused_with("use-cases/ghost/models/m1/dataset.csv", csv([HEADER, *GOOD_ROWS]))
    assert refused["ghost"] == ("use-cases/ghost/models/m1/dataset.csv: use_case 'ghost' does not exist; upload "
                                "use-cases/ghost/use-case.json first, then its config and the model's register.json, "
                                "then the dataset again")
    # A valid use case, but the model is not registered: register it (no word of a running check).
    drop(bucket, "use-cases/invoices/use-case.json", json.dumps({"name": "Invoices", "team_email": "team@example.com"}))
    reach(emulator, "use_case", "invoices", "AWAITING_CONFIG")
    drop(bucket, "use-cases/invoices/config.yaml", VALID_CONFIG)
    reach(emulator, "use_case", "invoices", "CONFIG_VALIDATED")
    refused["model"] = refused_with("use-cases/invoices/models/nobody/dataset.csv", csv([HEADER, *GOOD_ROWS]))
    assert refused["model"] == ("use-cases/invoices/models/nobody/dataset.csv: model 'invoices/nobody' does not exist; "
                                "upload use-cases/invoices/models/nobody/register.json first, then the dataset again")
    # A suspended use case: resume it (not "upload use-case.json first", which is refused once it exists).
    held = http.post("/api/v1/workflow/use_case/invoices/suspend", json={"reason": "team away"})
    assert held.status_code == 200, held.text
    refused["held"] = refused_with("use-cases/invoices/config.json", VALID_CONFIG)
    assert refused["held"].endswith("use_case 'invoices' is SUSPENDED, and this upload is taken only in AWAITING_CONFIG, "
                                    "CONFIG_INVALID, CONFIG_VALIDATED; resume it first (dropwire workflow resume use_case "
                                    "invoices), then upload the file again"), refused["held"]

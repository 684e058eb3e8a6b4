"""The evaluation API (/api) over real HTTP against a real emulator serving the product's
catalog: every write lands in the bucket and fires the same handlers a dropped file does."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import httpx
import polars as pl
import pytest

from dropwire.local_emulator.emulator import Emulator
from tests.conftest import wait_for
from tests.evaluation.conftest import EXPECTED_FIELD_F1, FIELDS, GOOD_ROWS, HEADER
from tests.platform.conftest import emulator_settings

pytestmark = pytest.mark.slow

ERROR_SHAPE = {"error", "message", "details", "timestamp"}
WAIT = {"wait": 30}


@pytest.fixture(scope="module")
def http(tmp_path_factory) -> Iterator[httpx.Client]:
    """One emulator for the module: each test works in its own use case."""
    settings = emulator_settings(tmp_path_factory.mktemp("api"), DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions")
    with Emulator(settings), httpx.Client(base_url=f"http://127.0.0.1:{settings.http.port}", timeout=60) as client:
        yield client


def csv(rows: list[list[str]]) -> bytes:
    return ("\n".join(",".join(row) for row in rows) + "\n").encode()


def config(use_case: str) -> str:
    return json.dumps({"use_case": use_case, "fields": FIELDS})


def error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_SHAPE and body["error"] == code, body
    return body


def reach(http: httpx.Client, path: str, wanted: str) -> dict:
    last: dict = {}

    def there() -> bool:
        last.update(http.get(f"{path}/state").json())  # a 404 error body until the entity exists
        return last.get("state") == wanted

    wait_for(there, timeout=60, what=lambda: f"{path} to reach {wanted} (it is {last.get('state')})")
    return last


def set_up_use_case(http: httpx.Client, use_case: str) -> None:
    created = http.post("/api/use-cases", params=WAIT, json={"name": use_case.title(), "team_email": "team@example.com"})
    assert created.status_code == 200 and created.json()["state"] == "AWAITING_CONFIG", created.text
    validated = http.post(f"/api/use-cases/{use_case}/upload-config", params=WAIT,
                          files={"file": ("config.json", config(use_case).encode())})
    assert validated.status_code == 200 and validated.json()["state"] == "CONFIG_VALIDATED", validated.text


def test_two_models_from_registration_to_results_over_http(http):
    created = http.post("/api/use-cases", json={"name": "Invoice Extraction", "team_email": "ml@example.com"})
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["id"] == "invoice-extraction" and body["key"] == "use-cases/invoice-extraction/use-case.json"
    assert body["state_url"] == "/api/use-cases/invoice-extraction/state" and body["handlers"] == []
    uc = "/api/use-cases/invoice-extraction"
    reach(http, uc, "AWAITING_CONFIG")

    # A raw-body config naming another use case is recorded as invalid, with its problem listed.
    invalid = http.post(f"{uc}/upload-config", params={**WAIT, "format": "yaml"},
                        content=f"use_case: receipts\nfields: {json.dumps(FIELDS)}\n")
    assert invalid.status_code == 200 and invalid.json()["state"] == "CONFIG_INVALID", invalid.text
    assert invalid.json()["handlers"][0]["function"] == "evaluation-config"
    view = http.get(uc).json()
    assert view["config"]["status"] == "invalid" and [p["path"] for p in view["config"]["problems"]] == ["use_case"]
    assert view["config"]["file"] == "local/use-cases/invoice-extraction/config.yaml"
    valid = http.post(f"{uc}/upload-config", params=WAIT,
                      files={"file": ("config.json", config("invoice-extraction").encode())})
    assert valid.status_code == 200 and valid.json()["state"] == "CONFIG_VALIDATED", valid.text

    # Two models, one in the seed's spelling; ids default to a slug of name and version.
    for name, spelling in (("gpt-4", "model_name"), ("claude-3", "name")):
        registered = http.post(f"{uc}/models", params=WAIT, json={spelling: name, "version": "2024-01"})
        assert registered.status_code == 200 and registered.json()["state"] == "REGISTERED", registered.text
    models = http.get(f"{uc}/models").json()
    assert [(m["id"], m["name"], m["state"]) for m in models] == [
        ("gpt-4-2024-01", "gpt-4", "REGISTERED"), ("claude-3-2024-01", "claude-3", "REGISTERED")]
    gpt, claude = f"{uc}/models/gpt-4-2024-01", f"{uc}/models/claude-3-2024-01"

    # Results are not there before an evaluation, and the answer says where the model is.
    assert "REGISTERED" in error(http.get(f"{gpt}/results"), 404, "not_evaluated")["message"]

    # gpt-4: a clean dataset (multipart); claude-3: a required truth value missing (raw body).
    good = http.post(f"{gpt}/upload-dataset", params=WAIT, files={"file": ("data.csv", csv([HEADER, *GOOD_ROWS]))})
    assert good.status_code == 200 and good.json()["key"] == "use-cases/invoice-extraction/models/gpt-4-2024-01/dataset.csv"
    broken = [row.copy() for row in GOOD_ROWS]
    broken[1][1] = ""
    bad = http.post(f"{claude}/upload-dataset", params={"format": "csv"}, content=csv([HEADER, *broken]))
    assert bad.status_code == 202, bad.text

    reach(http, claude, "AWAITING_DATA_FIX")
    base = str(http.base_url).rstrip("/")  # artifact URLs are absolute, on the address the client used
    issues = http.get(f"{claude}/quality-issues").json()
    assert not issues["passed"]
    assert issues["report"] == http.get(claude).json()["quality"]["report"] == f"{base}{claude}/quality-report"
    report_file = httpx.get(issues["report"], timeout=30)
    assert report_file.status_code == 200 and report_file.headers["content-type"].startswith("application/json")
    assert [i for i in report_file.json()["issues"] if i["severity"] == "error"] == issues["errors"]
    assert issues["files"] == {"dataset": "use-cases/invoice-extraction/models/claude-3-2024-01/dataset.csv"}
    first = issues["errors"][0]
    assert first["file"].endswith("claude-3-2024-01/dataset.csv") and first["column"] == "name_true"
    assert first["rows"] == [3] and "required" in first["message"]
    assert "AWAITING_DATA_FIX" in error(http.get(f"{claude}/results"), 404, "not_evaluated")["message"]

    state = reach(http, gpt, "EVALUATION_COMPLETED")
    assert [h["trigger"] for h in state["history"]] == [
        "create", "dataset_uploaded", "quality_check_started", "quality_check_passed", "evaluation_queued",
        "evaluation_started", "evaluation_succeeded"]
    assert state["history"][0]["triggered_by"] == "function:evaluation-model"
    uploaded = state["history"][1]["metadata"]["file_uploaded"]
    assert uploaded == "local/use-cases/invoice-extraction/models/gpt-4-2024-01/dataset.csv"
    results = http.get(f"{gpt}/results").json()
    # GOOD_ROWS counted by hand (tests/evaluation/test_metrics.py).
    assert results["records"] == 4 and results["mlflow_run_id"]
    micro = results["micro"]
    assert (micro["tp"], micro["fp"], micro["fn"], micro["tn"]) == (19, 4, 4, 0)
    assert micro["f1"] == pytest.approx(38 / 46) and micro["accuracy"] == pytest.approx(19 / 24)
    assert {f["field"]: f["f1"] for f in results["fields"]} == pytest.approx(EXPECTED_FIELD_F1)
    assert [f["field"] for f in results["fields"]] == [f["name"] for f in FIELDS]
    assert all(f["records"] == 4 for f in results["fields"])
    assert set(results["results"]) == {"per_record", "per_field", "mismatches"}
    # Every artifact URL the API hands out is one a client on another machine can follow.
    for name, url in results["results"].items():
        assert url == f"{base}{gpt}/results/{name}"
        parquet = httpx.get(url, timeout=30)
        assert parquet.status_code == 200 and parquet.headers["content-type"] == "application/vnd.apache.parquet"
        assert pl.read_parquet(io.BytesIO(parquet.content)).height > 0
    assert set(pl.read_parquet(io.BytesIO(httpx.get(results["results"]["per_field"]).content))["field"]) == {
        f["name"] for f in FIELDS}
    error(http.get(f"{gpt}/results/elsewhere"), 404, "not_found")
    report = httpx.get(results["report"], timeout=30)
    assert report.status_code == 200 and report.content[:2] == b"PK"
    assert report.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert 'filename="invoice-extraction-gpt-4-2024-01-report.xlsx"' in report.headers["content-disposition"]

    # The fixed dataset for claude-3 starts over and is evaluated; gpt-4 is untouched.
    fixed = http.post(f"{claude}/upload-dataset", params=WAIT, files={"file": ("fixed.csv", csv([HEADER, *GOOD_ROWS]))})
    assert fixed.status_code == 200, fixed.text
    done = reach(http, claude, "EVALUATION_COMPLETED")
    assert [h["trigger"] for h in done["history"]][5:] == [
        "dataset_uploaded", "quality_check_started", "quality_check_passed", "evaluation_queued", "evaluation_started",
        "evaluation_succeeded"]
    assert http.get(f"{claude}/results").json()["micro"] == results["micro"]  # the same records
    assert http.get(f"{claude}/quality-issues").json()["passed"] is True
    assert len(http.get(f"{gpt}/state").json()["history"]) == len(state["history"])

    model = http.get(gpt).json()
    assert model["evaluated"] and model["quality"]["passed"] and model["version"] == "2024-01"
    view = http.get(uc).json()
    assert view["name"] == "Invoice Extraction" and view["team_email"] == "ml@example.com"
    assert view["state"] == "CONFIG_VALIDATED" and view["config"]["status"] == "valid" and view["config"]["config_hash"]
    assert view["template"] == f"{base}/api/use-cases/invoice-extraction/template"
    template = httpx.get(view["template"], timeout=30)
    assert template.status_code == 200 and template.headers["content-type"].startswith("application/yaml")
    assert template.text.startswith("# Evaluation config for use case \"invoice-extraction\"")
    assert {m["state"] for m in view["models"]} == {"EVALUATION_COMPLETED"}
    listed = {u["id"]: u for u in http.get("/api/use-cases").json()}
    assert listed["invoice-extraction"]["models"] == 2 and listed["invoice-extraction"]["state"] == "CONFIG_VALIDATED"
    history = http.get(f"{uc}/state").json()["history"]
    assert [h["trigger"] for h in history][:3] == ["create", "template_sent", "await_config"]
    assert history[0]["metadata"]["name"] == "Invoice Extraction"


def test_bad_input_gets_a_clear_message_in_the_one_error_shape(http):
    set_up_use_case(http, "receipts")
    uc = "/api/use-cases/receipts"

    # Unknown things.
    assert "does not exist" in error(http.get("/api/use-cases/nope"), 404, "not_found")["message"]
    assert "POST /api/use-cases/receipts/models" in error(http.get(f"{uc}/models/ghost"), 404, "not_found")["message"]
    error(http.get(f"{uc}/models/ghost/state"), 404, "not_found")
    error(http.post("/api/use-cases/nope/models", json={"name": "m", "version": "1"}), 404, "not_found")
    error(http.post(f"{uc}/models/ghost/retry"), 404, "not_found")
    quiet = http.post(f"{uc}/models", params=WAIT, json={"name": "quiet", "version": "1", "id": "quiet"})
    assert quiet.status_code == 200, quiet.text
    assert "no quality check yet" in error(http.get(f"{uc}/models/quiet/quality-issues"), 404, "not_found")["message"]

    # Duplicates.
    again = error(http.post("/api/use-cases", json={"name": "Receipts", "team_email": "team@example.com"}), 409, "conflict")
    assert "already exists" in again["message"] and again["details"] == {"use_case": "receipts"}
    twice = error(http.post(f"{uc}/models", json={"name": "quiet", "version": "2", "id": "quiet"}), 409, "conflict")
    assert "already registered" in twice["message"]

    # Bodies and ids that cannot be used.
    malformed = error(http.post("/api/use-cases", content=b"{not json", headers={"content-type": "application/json"}),
                      400, "bad_request")
    assert "JSON is malformed" in malformed["message"]
    missing = error(http.post("/api/use-cases", json={"name": "x"}), 400, "invalid_request")
    assert "missing required field `team_email`" in missing["message"]
    assert "e-mail" in error(http.post("/api/use-cases", json={"name": "x", "team_email": "nobody"}), 400,
                             "bad_request")["message"]
    assert "not valid" in error(http.post("/api/use-cases", json={"name": "x", "team_email": "a@b.io", "id": ".hidden"}),
                                400, "invalid_id")["message"]
    error(http.post("/api/use-cases", json={"name": "!!!", "team_email": "a@b.io"}), 400, "invalid_id")
    error(http.post(f"{uc}/models", json={"version": "1"}), 400, "bad_request")
    error(http.post("/api/use-cases", params={"wait": 600}, json={"name": "x", "team_email": "a@b.io"}), 400,
          "invalid_request")

    # Formats the workflow does not read.
    unsupported = error(http.post(f"{uc}/models/quiet/upload-dataset", files={"file": ("data.txt", b"a,b\n")}),
                        415, "unsupported_format")
    assert "csv, parquet, xlsx" in unsupported["message"] and unsupported["details"]["accepted"] == ["csv", "parquet", "xlsx"]
    assert "no format" in error(http.post(f"{uc}/models/quiet/upload-predictions", content=b"a,b\n"), 415,
                                "unsupported_format")["message"]
    error(http.post(f"{uc}/upload-config", params={"format": "toml"}, content=b"x = 1"), 415, "unsupported_format")

    # A dataset for a model that is not registered yet: its handler waits for the model (its
    # register.json may come next), and a waiting caller is answered at once with why.
    started = time.monotonic()
    waiting = http.post(f"{uc}/models/ghost/upload-dataset", params=WAIT,
                        files={"file": ("data.csv", csv([HEADER, *GOOD_ROWS]))})
    assert waiting.status_code == 202 and time.monotonic() - started < WAIT["wait"] / 2, waiting.text
    (run,) = waiting.json()["handlers"]
    assert (run["function"], run["status"]) == ("evaluation-dataset", "waiting")
    assert "model 'receipts/ghost' does not exist" in run["error"]
    assert "upload use-cases/receipts/models/ghost/register.json first" in run["error"]
    assert run["task_id"] not in [letter["task_id"] for letter in http.get("/dead-letters").json()]


def test_layout_separate_over_http_predictions_then_truth(http):
    created = http.post("/api/use-cases", params=WAIT, json={"name": "Scans", "team_email": "team@example.com"})
    assert created.json()["state"] == "AWAITING_CONFIG", created.text
    separate = json.dumps({"use_case": "scans", "layout": "separate", "fields": FIELDS})
    assert http.post("/api/use-cases/scans/upload-config", params=WAIT,
                     files={"file": ("config.json", separate.encode())}).json()["state"] == "CONFIG_VALIDATED"
    assert http.post("/api/use-cases/scans/models", params=WAIT,
                     json={"name": "ocr", "version": "2", "id": "ocr"}).json()["state"] == "REGISTERED"
    names = [f["name"] for f in FIELDS]
    truth = [["record_id", *names]] + [[r[0], *r[1::2]] for r in GOOD_ROWS]
    predictions = [["record_id", *names]] + [[r[0], *r[2::2]] for r in reversed(GOOD_ROWS)]

    waiting = http.post("/api/use-cases/scans/models/ocr/upload-predictions", params=WAIT,
                        files={"file": ("predictions.csv", csv(predictions))})
    assert waiting.status_code == 200, waiting.text
    handler, = waiting.json()["handlers"]
    assert handler["result"]["waiting_for"].startswith("use-cases/scans/models/ocr/dataset.")
    assert waiting.json()["state"] == "REGISTERED"
    http.post("/api/use-cases/scans/models/ocr/upload-dataset", params={**WAIT, "format": "csv"}, content=csv(truth))
    reach(http, "/api/use-cases/scans/models/ocr", "EVALUATION_COMPLETED")
    results = http.get("/api/use-cases/scans/models/ocr/results").json()
    assert results["files"] == {"dataset": "use-cases/scans/models/ocr/dataset.csv",
                                "predictions": "use-cases/scans/models/ocr/predictions.csv"}
    assert results["records"] == 4 and {f["field"] for f in results["fields"]} == set(names)

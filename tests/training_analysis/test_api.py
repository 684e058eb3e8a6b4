"""Training analysis over real HTTP against a real emulator serving the product's catalog:
sync and async analyses of real runs in a real MLflow store, the seed's error contract (503
with Retry-After, 404, VALIDATION_ERROR naming the field, 429 past the limit), the client's
retries and fallback modes, file drops, the knowledge-version schedule, the knowledge API."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import msgspec
import pytest
from mlflow.tracking import MlflowClient

from dropwire.functions.training_analysis.client import (
    PollingConfig,
    RequestRejected,
    RetryConfig,
    ServerUnavailableError,
    TrainingAnalysisClient,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

ERROR_SHAPE = {"error", "message", "details", "timestamp"}
FAST_POLLING = PollingConfig(initial_interval=0.1, max_interval=0.5, max_wait_time=120)


@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway[1], timeout=120) as client:
        yield client


def client_for(gateway, **kwargs) -> TrainingAnalysisClient:
    return TrainingAnalysisClient(gateway[1], polling=FAST_POLLING, **kwargs)


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed


def error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_SHAPE and body["error"] == code, body
    return body


def test_sync_analysis_answers_with_the_result_and_keeps_its_history(gateway, http, mlflow_runs):
    where, made = mlflow_runs
    with client_for(gateway) as client:
        result = client.analyze(made["healthy"], where.uri)
    assert result.status == "completed" and result.run_id == made["healthy"]
    assert not [a for a in result.all_analyses() if a.findings.severity != "info"]
    status = http.get(f"/api/v1/analyses/{result.request_id}/status").json()
    assert status["status"] == "completed" and [h["to_state"] for h in status["history"]] == ["queued", "running", "completed"]
    report = http.get(f"/api/v1/analyses/{result.request_id}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/markdown")
    assert "plots/loss.png" in report.text
    plot = http.get(f"/api/v1/analyses/{result.request_id}/plots/loss.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    listed = http.get("/api/v1/analyses", params={"run_id": made["healthy"]}).json()
    assert result.request_id in [a["request_id"] for a in listed]
    # The same history in DuckDB, through the gateway's read-only query.
    assert json.loads(http.get(f"/api/v1/analyses/{result.request_id}/result").content)["status"] == "completed"


def test_async_analysis_is_polled_to_its_result(gateway, http, mlflow_runs):
    where, made = mlflow_runs
    with client_for(gateway) as client:
        request_id = client.analyze_async(made["overfitting"], where.uri, {"optimization_focus": ["overfitting"]})
        assert request_id.startswith("ta-")
        result = client.wait_for_result(request_id)
    assert result.status == "completed" and "TRAIN.OVERFITTING" in result.rule_ids()
    assert result.actions[0].addresses[0] == "TRAIN.OVERFITTING"


def test_unknown_run_is_404_and_not_retried(gateway, http, mlflow_runs):
    where, _ = mlflow_runs
    body = error(http.post("/api/v1/analyze", json={"run_id": "f" * 32, "mlflow_tracking_uri": where.uri}), 404, "RUN_NOT_FOUND")
    assert body["details"]["run_id"] == "f" * 32
    with client_for(gateway, fallback="fallback") as client:
        with pytest.raises(RequestRejected) as raised:
            client.analyze("f" * 32, where.uri)
        assert raised.value.status == 404 and len(client.attempts) == 1


@pytest.mark.parametrize("body, field, constraint", [
    ({"run_id": "abc"}, "mlflow_tracking_uri", "required"),
    ({"run_id": "abc", "mlflow_tracking_uri": "sqlite:///x.db", "analysis_options": {"focus": 1}},
     "analysis_options.focus", "unknown field"),
    ({"run_id": 7, "mlflow_tracking_uri": "sqlite:///x.db"}, "run_id", "Expected `str`, got `int`"),
    ({"run_id": " ", "mlflow_tracking_uri": "sqlite:///x.db"}, "run_id", "non-empty"),
])
def test_invalid_requests_name_the_field(http, body, field, constraint):
    answer = error(http.post("/api/v1/analyze", json=body), 400, "VALIDATION_ERROR")
    assert answer["details"]["field"] == field and answer["details"]["constraint"] == constraint, answer
    assert answer["details"]["provided"] == (body.get(field) if "." not in field else 1)
    if constraint == "required":
        assert answer["message"] == "Invalid request: missing required field 'mlflow_tracking_uri'"


def test_mlflow_unreachable_is_503_with_retry_after_then_the_client_falls_back(gateway, http, mlflow_runs):
    uri = closed_port_uri()
    answer = http.post("/api/v1/analyze", json={"run_id": "abc", "mlflow_tracking_uri": uri})
    body = error(answer, 503, "MLFLOW_CONNECTION_ERROR")
    assert answer.headers["retry-after"] == "1"
    assert body["details"]["tracking_uri"] == uri and body["details"]["timeout"] == 60
    assert "Check MLflow server is running" in body["details"]["suggestion"]

    waits: list[float] = []
    with client_for(gateway, fallback="fallback", sleep=waits.append) as client:
        assert client.analyze("abc", uri) is None, "fallback: warn and go on"
        assert [a.status for a in client.attempts] == [503] * 4 and waits == [1.0] * 3, "3 retries, each after Retry-After"
    with client_for(gateway, fallback="strict", retry=RetryConfig(max_retries=1), sleep=waits.append) as client:
        with pytest.raises(ServerUnavailableError) as raised:
            client.analyze("abc", uri)
        assert raised.value.code == "MLFLOW_CONNECTION_ERROR"
    with client_for(gateway, fallback="local", retry=RetryConfig(max_retries=0)) as client:
        assert client.analyze("abc", uri) is None, "local analysis cannot reach MLflow either: warn and go on"


def test_a_server_that_is_down_is_retried_with_backoff_then_local_analysis_runs(mlflow_runs):
    where, made = mlflow_runs
    waits: list[float] = []
    with TrainingAnalysisClient(closed_port_uri(), fallback="local", sleep=waits.append) as client:
        result = client.analyze(made["overfitting"], where.uri)
    assert len(waits) == 3 and 1.0 <= waits[0] <= 1.1 and 2.0 <= waits[1] <= 2.2 and 4.0 <= waits[2] <= 4.4
    assert result is not None and "TRAIN.OVERFITTING" in result.rule_ids() and result.request_id.startswith("local-")


def test_more_analyses_than_allowed_get_429_with_retry_after(gateway, http):
    # Two analyses held open by a "tracking server" that accepts connections and never answers.
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(16)
    uri = f"http://127.0.0.1:{hanging.getsockname()[1]}"
    try:
        held = [http.post("/api/v1/analyze", json={"run_id": f"held-{i}", "mlflow_tracking_uri": uri, "mode": "async"})
                for i in range(2)]
        assert [h.status_code for h in held] == [202, 202]
        refused = http.post("/api/v1/analyze", json={"run_id": "third", "mlflow_tracking_uri": uri, "mode": "async"})
        body = error(refused, 429, "TOO_MANY_REQUESTS")
        assert refused.headers["retry-after"] == "5" and body["details"] == {"running": 2, "limit": 2}
        status = http.get(held[0].json()["status_url"]).json()
        assert status["status"] in ("queued", "running") and status["run_id"] == "held-0"
        early = http.get(held[0].json()["result_url"])
        error(early, 409, "ANALYSIS_NOT_FINISHED")
    finally:
        hanging.close()  # the held connections are reset: both analyses fail fast
    for accepted in held:
        wait_for(lambda accepted=accepted: http.get(accepted.json()["status_url"]).json()["status"] == "failed", timeout=90,
                 what="the held analysis to fail once its tracking server went away")
    failed = http.get(held[0].json()["status_url"]).json()
    assert failed["error"]["error"] == "MLFLOW_CONNECTION_ERROR"


def test_knowledge_query_over_http_with_cache_stats(gateway, http):
    with client_for(gateway) as client:
        first = client.query_knowledge("How to prevent overfitting in CNNs?", domain="training", query_type="best_practice")
        again = client.query_knowledge("How to prevent overfitting in CNNs?", domain="training", query_type="best_practice")
    assert first[0].id == "kb-regularisation-cnn" and again == first and 0 < first[0].confidence < 1
    stats = http.get("/api/v1/knowledge/stats").json()
    assert stats["hits"] >= 1 and stats["ttl_seconds"] == 86400 and stats["max_size"] == 1000 and 0 < stats["hit_rate"] <= 1
    bad = error(http.post("/api/v1/knowledge/query", json={"query": "x", "domain": "cooking"}), 400, "VALIDATION_ERROR")
    assert bad["details"]["field"] == "domain" and bad["details"]["provided"] == "cooking"


def test_dropped_request_file_and_artifact_folder_fire_the_analysis(gateway, http, mlflow_runs, tmp_path):
    where, made = mlflow_runs
    request = {"run_id": made["overfitting"], "mlflow_tracking_uri": where.uri}
    assert http.put("/buckets/local/objects/training-runs/nightly/overfit.request.json", content=json.dumps(request)).status_code == 201
    # A run's artifact folder, as a team would copy it out of MLflow; metrics.csv last.
    folder = Path(MlflowClient(where.uri).download_artifacts(made["tiny_imbalanced"], "", str(tmp_path)))
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.name == "metrics.csv")
    for path in files:
        key = f"training-runs/tiny-run/{path.relative_to(folder).as_posix()}"
        assert http.put(f"/buckets/local/objects/{key}", content=path.read_bytes()).status_code == 201

    def analysed(run_id: str):
        done = [a for a in http.get("/api/v1/analyses", params={"run_id": run_id}).json()
                if a["status"] == "completed" and a["source"] != "http"]
        return done[0] if done else None

    by_file = wait_for(lambda: analysed(made["overfitting"]), timeout=90, what="the dropped request's analysis")
    assert by_file["source"] == "file training-runs/nightly/overfit.request.json" and "TRAIN.OVERFITTING" in by_file["findings"]
    by_folder = wait_for(lambda: analysed("tiny-run"), timeout=90, what="the dropped folder's analysis")
    assert {"DATA.CLASS_IMBALANCE", "DATA.TINY_VALIDATION"} <= set(by_folder["findings"])


def test_schedule_reanalyses_runs_whose_analysis_used_another_knowledge_version(gateway, http, mlflow_runs):
    emulator, _ = gateway
    where, made = mlflow_runs
    with client_for(gateway) as client:
        old = client.analyze(made["diverging"], where.uri)
    # Play an analysis made by a previous release: its result names an older knowledge base.
    path = emulator.settings.bucket_path / "training-analyses" / old.request_id / "result.json"
    path.write_bytes(msgspec.json.encode(msgspec.structs.replace(old, knowledge_base_version="2025.01.0")))
    fired = http.post("/schedules/training-analysis-knowledge-version/run").json()
    task = wait_for(lambda: (t := http.get(fired["status_url"]).json())["status"] == "succeeded" and t, timeout=60,
                    what="the schedule's run")
    assert made["diverging"] in task["result"]["requeued"]

    def reanalysed():
        return [a for a in http.get("/api/v1/analyses", params={"run_id": made["diverging"]}).json()
                if a["request_id"] != old.request_id and a["status"] == "completed"]

    again = wait_for(reanalysed, timeout=90, what="the re-analysis")
    assert "TRAIN.DIVERGENCE" in again[0]["findings"]


def test_report_is_logged_back_to_the_mlflow_run_when_asked(gateway, mlflow_runs):
    where, made = mlflow_runs
    with client_for(gateway) as client:
        result = client.analyze(made["tiny_imbalanced"], where.uri, {"log_to_mlflow": True, "report_format": "html"})
    logged = [a.path for a in MlflowClient(where.uri).list_artifacts(made["tiny_imbalanced"], f"dropwire_analysis/{result.request_id}")]
    assert f"dropwire_analysis/{result.request_id}/report.html" in logged
    assert f"dropwire_analysis/{result.request_id}/plots" in logged


def test_openapi_says_what_each_endpoint_answers(http):
    paths = http.get("/schema/openapi.json").json()["paths"]
    analyze = paths["/api/v1/analyze"]["post"]
    assert {"200", "202", "400", "404", "429", "503"} <= set(analyze["responses"])
    assert "requestBody" in analyze
    assert {"/api/v1/analyses/{request_id}/status", "/api/v1/analyses/{request_id}/result",
            "/api/v1/knowledge/query"} <= set(paths)


def test_a_report_is_served_with_one_charset_and_lists_only_the_plots_it_has(gateway, http, mlflow_runs):
    """A run that logged losses only (no learning rate, no gradient norm) gets a loss plot and
    no optimizer plot: the report links only what exists, and asking for the other says why
    and what there is. Each report format is served with its media type and one charset."""
    where, _ = mlflow_runs
    mlflow = MlflowClient(where.uri)
    run = mlflow.create_run(mlflow.get_experiment_by_name("analysis-tests").experiment_id, run_name="losses-only")
    for step in range(20):
        mlflow.log_metric(run.info.run_id, "train_loss", 1.0 / (step + 1), step=step)
        mlflow.log_metric(run.info.run_id, "val_loss", 1.1 / (step + 1), step=step)
    mlflow.set_terminated(run.info.run_id)
    with client_for(gateway) as client:
        results = {form: client.analyze(run.info.run_id, where.uri, {"report_format": form}) for form in ("html", "markdown")}
    for form, media in (("html", "text/html; charset=utf-8"), ("markdown", "text/markdown; charset=utf-8")):
        report = http.get(f"/api/v1/analyses/{results[form].request_id}/report")
        assert report.status_code == 200 and report.headers["content-type"] == media
        assert "plots/loss.png" in report.text and "optimizer.png" not in report.text
    plots = f"/api/v1/analyses/{results['html'].request_id}/plots"
    assert http.get(f"{plots}/loss.png").content.startswith(b"\x89PNG")
    body = error(http.get(f"{plots}/optimizer.png"), 404, "ANALYSIS_NOT_FOUND")
    assert body["details"]["plots"] == ["loss.png"]
    assert "learning rate or gradient norm" in body["message"], body


@pytest.mark.parametrize("uri", ["mlruns", "./mlruns", "/srv/mlruns", "file:///srv/mlruns"])
def test_a_tracking_uri_that_names_mlflows_retired_file_store_is_400_naming_the_accepted_forms(gateway, http, uri):
    """A bare word or a path is MLflow's file store, which MLflow 3 refuses: the caller's
    mistake, answered at once naming the field and what is accepted, with no analysis queued."""
    emulator, _ = gateway
    count = "SELECT count(*) FROM tasks WHERE name = 'fn:training-analysis'"
    before = emulator.store.query(count)[0][0]
    body = error(http.post("/api/v1/analyze", json={"run_id": "abc", "mlflow_tracking_uri": uri}), 400, "VALIDATION_ERROR")
    assert body["details"]["field"] == "mlflow_tracking_uri" and body["details"]["provided"] == uri
    assert "http://" in body["message"] and "sqlite:///" in body["message"], body
    assert emulator.store.query(count)[0][0] == before


def test_a_dropped_request_with_a_file_store_uri_fails_its_analysis_once_naming_the_field(gateway, http):
    emulator, _ = gateway
    key = "training-runs/bare/word.request.json"
    assert http.put(f"/buckets/local/objects/{key}", content=json.dumps(
        {"run_id": "bare-word-run", "mlflow_tracking_uri": "mlruns"})).status_code == 201
    done = wait_for(lambda: [a for a in http.get("/api/v1/analyses", params={"run_id": "bare-word-run"}).json()
                             if a["status"] == "failed"], timeout=90, what="the dropped request's analysis to fail")
    result = http.get(f"/api/v1/analyses/{done[0]['request_id']}/result").json()
    assert result["error"]["error"] == "VALIDATION_ERROR" and "mlflow_tracking_uri" in result["error"]["message"]
    attempts = emulator.store.query("SELECT attempts FROM tasks WHERE name = 'fn:training-analysis-file' AND args::VARCHAR "
                                    "LIKE ?", [f"%{key}%"])
    assert attempts == [(1,)]


def test_a_dropped_request_that_is_not_one_is_refused_with_its_message_never_dead_lettered(gateway, http, run_cli,
                                                                                          dropwire_env):
    """The user's mistake (issue 24 item 5): refused, final, in the invocations with its whole
    message, never a dead letter."""
    emulator, _ = gateway
    keys = {"training-runs/refused/shape.request.json": json.dumps({"run": "x"}),
            "training-runs/refused/torn.request.json": '{"run_id": '}
    for key, content in keys.items():
        assert http.put(f"/buckets/local/objects/{key}", content=content).status_code == 201
    ended = "SELECT status, last_error FROM tasks WHERE name = 'fn:training-analysis-file' AND args::VARCHAR LIKE ? " \
            "AND status IN ('refused', 'dead')"
    rows = {key: wait_for(lambda key=key: emulator.store.query(ended, [f"%{key}%"]), timeout=60,
                          what=f"{key} to be refused")[0] for key in keys}
    expected = "; expected {run_id, mlflow_tracking_uri?, analysis_options?}"
    assert rows == {
        "training-runs/refused/shape.request.json": (
            "refused", f"training-runs/refused/shape.request.json: Object contains unknown field `run`{expected}"),
        "training-runs/refused/torn.request.json": (
            "refused", f"training-runs/refused/torn.request.json: Input data was truncated{expected}")}, rows
    assert not [d for d in emulator.store.queue.dead_letters() if "training-runs/refused/" in str(d.args)]
    # The analyses API reads a refused request as it read a dead one: failed, with its message.
    task_id = emulator.store.query("SELECT id FROM tasks WHERE name = 'fn:training-analysis-file' AND args::VARCHAR "
                                   "LIKE ?", ["%training-runs/refused/torn.request.json%"])[0][0]
    status = http.get(f"/api/v1/analyses/ta-{task_id}/status").json()
    assert (status["status"], status["error"]["message"]) == ("failed", rows["training-runs/refused/torn.request.json"][1])
    env = {**dropwire_env, "DROPWIRE_DATA_DIR": str(emulator.settings.data_dir), "COLUMNS": "80"}
    assert "training-runs/refused/" not in run_cli("dlq", "list", env=env).stdout
    shown = run_cli("queue", "invocations", "--outcome", "refused", env=env)
    assert shown.returncode == 0, shown.stderr
    for _, message in rows.values():
        assert f"  {message}" in shown.stdout.splitlines(), shown.stdout

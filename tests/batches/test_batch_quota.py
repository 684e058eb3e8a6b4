"""Quotas meet batches, with real parts: the runtime's own OpenAI-compatible server with its
rate limit set (429 with OpenAI's x-ratelimit-* headers and Retry-After), a real emulator,
the unmodified `openai` client. A batch meets the limit, parks in quota_exceeded with its
finished lines kept, resumes on its timer and completes with every line computed once; the
emulator restarted while a batch is parked; usage that survives the restart; suspend and
resume by hand; the daily cost budget reached."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import httpx
import openai
import pytest

from dropwire.local_emulator.emulator import Emulator
from tests.batches.conftest import TOKEN, TextgenRuntime, batch_env, finished, read_lines, upload
from tests.batches.upstream import chat_line
from tests.conftest import DROPWIRE, REPO, wait_for
from tests.platform.conftest import emulator_settings

pytestmark = pytest.mark.slow
MODEL = "dropwire-tiny"
SERVICE = "batch-upstream"


def quota_env(**service: object) -> dict[str, str]:
    return {"DROPWIRE_QUOTA__SERVICES": json.dumps({SERVICE: service}) if service else "{}",
            "DROPWIRE_QUOTA__WAIT_IN_PLACE_SECONDS": "0.3", "DROPWIRE_QUOTA__WAKE_SPREAD_SECONDS": "0.1",
            "DROPWIRE_BATCHES__CONCURRENCY": "2", "DROPWIRE_BATCHES__SAVE_EVERY_LINES": "1"}


def history(emulator: Emulator, batch_id: str) -> list:
    return emulator.store.states.history("batch", batch_id)


def state(emulator: Emulator, batch_id: str) -> str:
    return emulator.store.states.current("batch", batch_id)[0]


def api(emulator: Emulator) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{emulator.settings.http.port}",
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)


# ---------------------------------------------------------------- the runtime as a rate-limited upstream


@pytest.fixture(scope="module")
def limited_runtime(tmp_path_factory) -> Iterator[TextgenRuntime]:
    runtime = TextgenRuntime(tmp_path_factory.mktemp("runtime"), textgen__rate_limit_requests=4, textgen__rate_limit_window_s=3).start()
    yield runtime
    runtime.stop()


def test_the_runtime_answers_past_its_limit_with_429_and_openais_headers(limited_runtime):
    client = openai.OpenAI(base_url=f"{limited_runtime.url}/v1", api_key="unused", max_retries=0)
    answers = []
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2) if len(answers) < 4 else None
        if raw is not None:
            answers.append(raw)
            continue
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        headers = refused.value.response.headers
        assert refused.value.response.status_code == 429 and refused.value.code == "rate_limit_exceeded"
        assert headers["x-ratelimit-remaining-requests"] == "0" and int(headers["retry-after"]) >= 1
        assert 0 < int(headers["retry-after-ms"]) <= 3000
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:4]] == ["3", "2", "1", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "4" for a in answers)
    scraped = limited_runtime.metrics()
    assert scraped['dropwire_runtime_rate_limited_requests_total{answer="refused"}'] == 2
    assert 'dropwire_runtime_cache_hit_ratio{cache="result"}' in scraped
    assert 'dropwire_runtime_lane_waiting{job="textgen",lane="background"}' in scraped
    wait_for(lambda: httpx.post(f"{limited_runtime.url}/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": "again"}], "max_tokens": 1}).status_code == 200,
        timeout=10, interval=0.5, what="the window to slide")


def test_a_batch_meets_the_upstreams_limit_parks_with_partial_output_and_completes_each_line_once(
        limited_runtime, tmp_path):
    before = limited_runtime.metrics()
    settings = emulator_settings(tmp_path / "data", DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
                                 DROPWIRE_HTTP__API_TOKENS=json.dumps([TOKEN]),
                                 DROPWIRE_RUNTIME__PORT=str(limited_runtime.port), DROPWIRE_BATCHES__CHUNK_LINES="5",
                                 **quota_env())
    emulator = Emulator(settings).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.http.port}/v1", api_key=TOKEN, max_retries=0)
    try:
        lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": MODEL, "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 3,
                           "temperature": 0}} for i in range(12)]
        batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_for(lambda: state(emulator, batch.id) == "quota_exceeded", timeout=120, interval=0.05,
                 what="the batch to meet the upstream's limit")
        parked = client.batches.retrieve(batch.id)
        # OpenAI's clients see a batch still running; its finished lines are kept.
        assert parked.status == "in_progress" and 0 < parked.request_counts.completed < 12
        done = finished(client, batch.id, timeout=180)
        assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (12, 0)
        assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == [f"q{i}" for i in range(12)]
        moves = [(h.from_state, h.to_state) for h in history(emulator, batch.id)]
        assert ("in_progress", "quota_exceeded") in moves and ("quota_exceeded", "in_progress") in moves
        assert moves.count(("quota_exceeded", "in_progress")) >= 2  # several park/resume cycles, no line twice
        exceeded = next(h for h in history(emulator, batch.id) if h.to_state == "quota_exceeded")
        assert exceeded.metadata["service"] == SERVICE and exceeded.metadata["limit"] == "upstream_requests"
        after = limited_runtime.metrics()
        computed = 'dropwire_runtime_lane_completed_total{job="textgen",lane="background"}'
        # Every line computed exactly once across the parks: the upstream generated 12 answers.
        assert after[computed] - before[computed] == 12
        # The runtime's limit let exactly those 12 through: the batch kept to what the upstream
        # said was left (x-ratelimit-remaining-requests) and parked before being refused.
        admitted = 'dropwire_runtime_rate_limited_requests_total{answer="admitted"}'
        assert after[admitted] - before[admitted] == 12
        # Usage: 12 requests counted (the refused ones taken back), with the runtime's token counts.
        usage = api(emulator).get(f"/api/v1/quota/usage/{SERVICE}").json()
        assert usage["requests_today"] == 12 and usage["upstream"][0]["metric"] == "requests"
        assert sum(h["output_tokens"] for h in usage["last_24h"]) == done.usage.output_tokens
    finally:
        emulator.stop()


# ---------------------------------------------------------------- local limits (the stand-in upstream)


@pytest.fixture
def emulators(tmp_path, upstream):
    running: list[Emulator] = []

    def start(data: str = "data", **env: str) -> tuple[Emulator, openai.OpenAI]:
        settings = emulator_settings(tmp_path / data, **batch_env(upstream, **env))
        emulator = Emulator(settings).start()
        running.append(emulator)
        return emulator, openai.OpenAI(base_url=f"http://127.0.0.1:{settings.http.port}/v1", api_key=TOKEN, max_retries=0)

    yield start
    for emulator in running:
        emulator.stop()


def test_a_restart_while_parked_forgets_no_usage_and_the_batch_completes_on_its_timer(emulators, upstream):
    # 6 a minute, one at a time: a line every 10 s, so the second line parks the batch.
    env = quota_env(requests_per_minute=6)
    emulator, client = emulators(**env)
    batch = client.batches.create(input_file_id=upload(client, [chat_line(f"r{i}", f"restart {i}") for i in range(3)]).id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: state(emulator, batch.id) == "quota_exceeded", timeout=60, what="the batch to park")
    assert client.batches.retrieve(batch.id).request_counts.completed == 1
    emulator.stop()
    # Restarted on the same data: the minute's usage and the limiter's state are still there.
    emulator, client = emulators(**env)
    usage = api(emulator).get(f"/api/v1/quota/usage/{SERVICE}").json()
    assert usage["requests_today"] == 1
    minute = next(limit for limit in usage["limits"] if limit["name"] == "requests_per_minute")
    assert minute["limit"] == 6
    done = finished(client, batch.id, timeout=90)
    assert done.status == "completed" and done.request_counts.completed == 3
    assert sorted(upstream.answered.values()) == [1, 1, 1]  # each line sent once
    assert api(emulator).get(f"/api/v1/quota/usage/{SERVICE}").json()["requests_today"] == 3
    assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == ["r0", "r1", "r2"]
    # The CLI says the same, through the running control plane.
    env = {**os.environ, "DROPWIRE_DATA_DIR": str(emulator.settings.data_path)}
    shown = subprocess.run([*DROPWIRE, "quota", "usage", SERVICE], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["requests_today"] == 3
    status = subprocess.run([*DROPWIRE, "workflow", "status"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0 and "completed 1" in status.stdout


def test_suspend_and_resume_by_hand_with_the_reason_in_history(emulators, upstream):
    # Paced in place (a line every 0.5 s), so the batch is running when it is suspended.
    emulator, client = emulators(**{**quota_env(requests_per_minute=120), "DROPWIRE_QUOTA__WAIT_IN_PLACE_SECONDS": "2"})
    batch = client.batches.create(input_file_id=upload(client, [chat_line(f"s{i}", f"hold {i}") for i in range(10)]).id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 2, timeout=60, what="lines to finish")
    http = api(emulator)
    held = http.post(f"/api/v1/workflow/batch/{batch.id}/suspend", json={"reason": "upstream maintenance"})
    assert held.status_code == 200 and held.json()["state"] == "suspended"
    wait_for(lambda: not emulator.store.query("SELECT 1 FROM tasks WHERE name = 'fn:batches-chunk' AND status = 'running'"),
             timeout=30, what="the running chunk to park")
    frozen = client.batches.retrieve(batch.id)
    assert frozen.status == "in_progress" and frozen.request_counts.completed < 10
    status = http.get("/api/v1/workflow/status").json()
    batches = next(k for k in status["kinds"] if k["kind"] == "batch")
    assert batches["counts"] == {"suspended": 1}
    assert http.post(f"/api/v1/workflow/batch/{batch.id}/suspend", json={}).status_code == 409
    resumed = http.post(f"/api/v1/workflow/batch/{batch.id}/resume", json={"reason": "maintenance over"})
    assert resumed.status_code == 200 and resumed.json()["state"] == "in_progress"
    done = finished(client, batch.id, timeout=60)
    assert done.request_counts.completed == 10 and sorted(upstream.answered.values()) == [1] * 10
    reasons = {(h.trigger, h.reason) for h in history(emulator, batch.id)}
    assert ("suspend", "upstream maintenance") in reasons and ("resume", "maintenance over") in reasons
    # Unknown and finished workflows: 404 and 409, in the one error shape.
    missing = http.post("/api/v1/workflow/batch/batch_nope/suspend", json={})
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_workflow"
    finished_one = http.post(f"/api/v1/workflow/batch/{batch.id}/resume", json={})
    assert finished_one.status_code == 409 and "final state" in finished_one.json()["message"]
    assert http.post("/api/v1/workflow/resume-quota-exceeded", json={"kind": "batch", "id": batch.id}).status_code == 409


def test_the_daily_cost_budget_stops_a_batch_in_quota_exceeded_and_resume_by_hand_finds_it_spent(emulators, upstream):
    # 5 USD per 1K tokens. A line is counted up front for its prompt (about 11 tokens here) and
    # max_tokens (4): 0.075 USD; once answered, for its real 4 tokens: 0.02 USD. One line at a
    # time, the budget of 0.1 admits two lines (0 + 0.075, 0.02 + 0.075) and refuses the third.
    service = {"cost_per_day_usd": 0.1, "prices": {"*": [5.0, 5.0]}}
    emulator, client = emulators(**{**quota_env(**service), "DROPWIRE_BATCHES__CONCURRENCY": "1"})
    lines = [chat_line(f"c{i}", f"cost {i}") for i in range(5)]
    for line in lines:
        line["body"]["max_tokens"] = 4
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_for(lambda: state(emulator, batch.id) == "quota_exceeded", timeout=60, what="the budget to be spent")
    exceeded = next(h for h in history(emulator, batch.id) if h.to_state == "quota_exceeded")
    assert exceeded.metadata["limit"] == "cost_per_day_usd" and exceeded.metadata["wait_seconds"] > 0
    http = api(emulator)
    usage = http.get(f"/api/v1/quota/usage/{SERVICE}").json()
    budget = next(limit for limit in usage["limits"] if limit["name"] == "cost_per_day_usd")
    assert budget["limit"] == 0.1 and budget["used"] == pytest.approx(0.04) and usage["cost_today_usd"] == budget["used"]
    kept = client.batches.retrieve(batch.id).request_counts.completed
    assert kept == 2 and sum(upstream.answered.values()) == kept
    resumed = http.post("/api/v1/workflow/resume-quota-exceeded", json={}).json()
    assert [r["id"] for r in resumed["resumed"]] == [batch.id] and resumed["woken"] >= 1
    # Still spent: back in quota_exceeded, with no line more run and none lost.
    wait_for(lambda: len([h for h in history(emulator, batch.id) if h.to_state == "quota_exceeded"]) == 2, timeout=30,
             what="the batch to park again")
    assert client.batches.retrieve(batch.id).request_counts.completed == kept
    assert any(h.reason == "resumed by hand over HTTP" for h in history(emulator, batch.id))
    metrics = http.get("/metrics").text
    assert f'dropwire_quota_remaining{{limit="cost_per_day_usd",service="{SERVICE}"}}' in metrics
    assert 'dropwire_workflows{kind="batch",state="quota_exceeded"} 1.0' in metrics
    assert 'dropwire_batch_lines_total{status="completed"} 2.0' in metrics
    assert 'dropwire_invocations_total{function="batches-chunk",outcome="succeeded"}' in metrics
    assert 'dropwire_queue_tasks{status="queued",task="fn:batches-resume"} 1.0' in metrics  # its parked chunk


def test_a_direct_request_through_the_gateway_spends_the_same_quota_and_gets_429_when_it_is_spent(emulators, upstream):
    emulator, client = emulators(**quota_env(requests_per_minute=2))
    first = client.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "direct one"}])
    assert first.choices[0].message.content == "echo: direct one"
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "direct two"}])
    answer = refused.value.response
    assert answer.status_code == 429 and 20 <= int(answer.headers["retry-after"]) <= 30
    error = answer.json()
    # OpenAI's error object under /v1 (what its clients read), the details beside it.
    assert refused.value.code == "quota_exceeded" and error["error"]["code"] == "quota_exceeded"
    assert error["details"]["limit"] == "requests_per_minute"
    assert upstream.answered["direct two"] == 0
    # Batch lines wait for the same budget: the one request above is counted.
    assert api(emulator).get(f"/api/v1/quota/usage/{SERVICE}").json()["requests_today"] == 1


def test_a_batch_with_lines_failed_for_good_ends_partially_processed_shown_to_openai_as_completed(emulators):
    emulator, client = emulators(**quota_env())
    lines = [chat_line("ok", "fine"), chat_line("bad", "fail this one")]
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    done = finished(client, batch.id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    assert done.completed_at is not None and done.error_file_id is not None
    assert state(emulator, batch.id) == "partially_processed"
    assert "batch.completed" in [n.kind for n in emulator.store.outbox.notifications()]
    kinds = api(emulator).get("/api/v1/workflow/status").json()["kinds"]
    assert next(k for k in kinds if k["kind"] == "batch")["counts"] == {"partially_processed": 1}
    # Its failed lines can be retried as a new batch, as from a completed one.
    retried = api(emulator).post(f"/v1/batches/{batch.id}/retry")
    assert retried.status_code == 200
    again = finished(client, retried.json()["id"])
    assert (again.request_counts.total, again.request_counts.failed) == (1, 1)  # the same line, failing the same way

"""A batch's lifecycle against a real emulator: dropped as a file, cancelled mid-run,
expired with a short window, its unfinished lines retried as a new batch, and the
notifications (webhook events) of its terminal states."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from tests.batches.conftest import TOKEN, finished, jsonl, read_lines, upload
from tests.batches.upstream import chat_line
from tests.conftest import wait_for

pytestmark = pytest.mark.slow

SLOW = {"DROPWIRE_BATCHES__CONCURRENCY": "2", "DROPWIRE_BATCHES__CHUNK_LINES": "10",
        "DROPWIRE_BATCHES__SAVE_EVERY_LINES": "1", "DROPWIRE_BATCHES__SLICE_SECONDS": "1"}


def drop(emulator, key: str, content: bytes) -> None:
    """Write into the bucket folder as a team would: whole, then renamed into place."""
    path = emulator.settings.bucket_path / key
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def test_a_dropped_file_runs_as_a_batch_and_its_output_lands_beside(start_batches):
    emulator, client = start_batches()
    drop(emulator, "batches/nightly.json", json.dumps({"endpoint": "/v1/embeddings", "metadata": {"run": "7"}}).encode())
    drop(emulator, "batches/nightly.jsonl", jsonl([{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                                                    "body": {"model": "echo-1", "input": f"text {i}"}} for i in range(5)]))
    output = emulator.settings.bucket_path / "batch-outputs" / "nightly.output.jsonl"
    wait_for(output.exists, timeout=60, what="the dropped batch's output file")
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"e{i}" for i in range(5)]
    assert lines[2]["response"]["body"]["data"][0]["embedding"] == [2.0]
    assert not (emulator.settings.bucket_path / "batch-outputs" / "nightly.errors.jsonl").exists()
    # The files are written before the batch is marked completed, in the same step.
    batch = finished(client, client.batches.list().data[0].id)
    assert batch.status == "completed" and batch.endpoint == "/v1/embeddings" and batch.metadata == {"run": "7"}
    # The same batch is visible over the API, and its output through files.content.
    assert [line["custom_id"] for line in read_lines(client, batch.output_file_id)] == [f"e{i}" for i in range(5)]
    kinds = [n.kind for n in emulator.store.outbox.notifications()]
    assert "batch.completed" in kinds
    event = next(n for n in emulator.store.outbox.notifications() if n.kind == "batch.completed").metadata["event"]
    assert event["type"] == "batch.completed" and event["object"] == "event" and event["data"] == {"id": batch.id}


def test_a_dropped_file_with_bad_options_is_refused_naming_the_file(start_batches):
    emulator, _ = start_batches()
    drop(emulator, "batches/bad.json", b'{"endpoint": "/v1/chat/completions", "window": "24h"}')
    drop(emulator, "batches/bad.jsonl", jsonl([chat_line("a", "one")]))
    # The user's mistake: refused with the file named, never a dead letter (issue 24 item 5).
    refused = wait_for(lambda: emulator.store.query("SELECT status, last_error FROM tasks WHERE name = 'fn:batches-drop' "
                                                    "AND status IN ('refused', 'dead')"),
                       timeout=60, what="the dropped file to be refused")
    assert refused[0][0] == "refused" and refused[0][1].startswith("batches/bad.json: ") and "window" in refused[0][1]
    assert emulator.store.queue.dead_letters() == []


def test_a_dropped_file_that_fails_validation_leaves_every_problem_beside_its_output(start_batches):
    """Where the output would have gone, a file of every problem with its line; the
    notification says how many there are and where that file is."""
    emulator, client = start_batches()
    lines = [chat_line("a", "one"), chat_line("a", "two"), {"custom_id": "b", "method": "GET",
                                                            "url": "/v1/chat/completions", "body": {"model": "echo-1"}}]
    drop(emulator, "batches/weekly-tickets.jsonl", jsonl(lines) + b"not json\n" + jsonl([chat_line("c", "x", model="nope")]))
    outputs = emulator.settings.bucket_path / "batch-outputs"
    errors = outputs / "weekly-tickets.validation-errors.jsonl"
    wait_for(errors.exists, timeout=60, what=f"{errors} to be written")
    problems = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [(p["line"], p["code"]) for p in problems] == [(2, "duplicate_custom_id"), (3, "invalid_method"),
                                                          (4, "invalid_json_line"), (5, "unknown_model")], problems
    assert all(p["message"] for p in problems)
    assert sorted(path.name for path in outputs.iterdir()) == ["weekly-tickets.validation-errors.jsonl"]
    batch = finished(client, client.batches.list().data[0].id)
    assert batch.status == "failed" and [e.line for e in batch.errors.data] == [2, 3, 4, 5]
    [note] = [n for n in emulator.store.outbox.notifications() if n.kind == "batch.failed"]
    assert "4 problem(s)" in note.body and "batch-outputs/weekly-tickets.validation-errors.jsonl" in note.body, note.body


def test_cancel_mid_run_keeps_finished_lines_and_a_retry_runs_the_rest(start_batches, upstream):
    emulator, client = start_batches(**SLOW)
    lines = [chat_line(f"r{i}", f"slow line {i}") for i in range(30)]
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 3, timeout=60,
             what="a few lines to finish")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = finished(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    kept = read_lines(client, done.output_file_id)
    errors = read_lines(client, done.error_file_id)
    assert 3 <= len(kept) < 30 and len(kept) + len(errors) == 30
    assert done.request_counts.completed == len(kept) and done.request_counts.failed == len(errors)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"} and all(e["response"] is None for e in errors)
    assert sorted(int(line["custom_id"][1:]) for line in kept + errors) == list(range(30))
    assert [line["custom_id"] for line in kept] == sorted((line["custom_id"] for line in kept), key=lambda c: int(c[1:]))

    # Beyond OpenAI: one call makes a new batch of the lines that did not run.
    port = emulator.settings.http.port
    retried = httpx.post(f"http://127.0.0.1:{port}/v1/batches/{batch.id}/retry",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert retried.status_code == 200, retried.text
    again = finished(client, retried.json()["id"], timeout=90)
    assert again.status == "completed" and again.request_counts.total == len(errors)
    assert sorted(line["custom_id"] for line in read_lines(client, again.output_file_id)) == sorted(
        e["custom_id"] for e in errors)
    # Every line of the first batch ran once into an output: what was kept, then the rest.
    assert sum(upstream.answered.values()) >= 30
    assert "batch.cancelled" in [n.kind for n in emulator.store.outbox.notifications()]
    # Its chunks ran in time slices (batches.slice_seconds), each going back to the queue.
    assert emulator.store.query("SELECT count(*) FROM tasks WHERE result LIKE '%sliced%'")[0][0] > 0


def test_a_batch_cancelled_while_validating_is_cancelled_and_runs_nothing(start_batches, upstream):
    """OpenAI allows cancelling a validating batch: validating -> cancelling -> cancelled."""
    emulator, client = start_batches()
    file = upload(client, [chat_line(f"v{i}", f"line {i}") for i in range(5)])
    upstream.hold_models()  # validation waits for the list of served models
    try:
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    finally:
        upstream.release_models()
    done = finished(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.in_progress_at is None
    assert [h.to_state for h in emulator.store.states.history("batch", batch.id)] == ["validating", "cancelling",
                                                                                     "cancelled"]
    assert read_lines(client, done.output_file_id) == [] and done.request_counts.completed == 0
    assert sum(upstream.answered.values()) == 0  # no line ran
    assert "batch.cancelled" in [n.kind for n in emulator.store.outbox.notifications()]


def test_a_batch_past_its_window_expires_keeping_what_finished(start_batches):
    emulator, client = start_batches(DROPWIRE_BATCHES__COMPLETION_WINDOWS='["24h", "3s"]', **SLOW)
    lines = [chat_line(f"x{i}", f"slow item {i}") for i in range(40)]
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                  completion_window="3s")
    done = finished(client, batch.id, timeout=90)
    assert done.status == "expired" and done.expired_at and done.expires_at - done.created_at == 3
    kept = read_lines(client, done.output_file_id)
    errors = read_lines(client, done.error_file_id)
    assert len(kept) + len(errors) == 40 and len(errors) > 0
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert [h.to_state for h in emulator.store.states.history("batch", batch.id)] == ["validating", "in_progress", "expired"]
    bench = emulator.store.query("SELECT lines, completed, failed FROM batch_benchmarks WHERE batch_id = ?", [batch.id])
    assert bench == [(40, len(kept), len(errors))]


def test_an_interactive_request_is_answered_while_a_large_batch_runs(start_batches, upstream):
    _, client = start_batches(**SLOW)
    lines = [chat_line(f"b{i}", f"slow background {i}") for i in range(200)]
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_for(lambda: upstream.priorities["background"] >= 4, timeout=60, what="the batch to be running")
    # Through the gateway (the same base_url), forwarded to the runtime's interactive lane.
    answer = client.chat.completions.create(model="echo-1", messages=[{"role": "user", "content": "hello now"}])
    assert answer.choices[0].message.content == "echo: hello now"
    assert upstream.priorities["interactive"] == 1
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.request_counts.completed < 200  # answered first, not after
    client.batches.cancel(batch.id)
    assert finished(client, batch.id, timeout=90).status == "cancelled"
    assert [m.id for m in client.models.list()] == ["echo-1"]


def test_a_runtime_that_goes_away_mid_batch_parks_the_chunks_and_nothing_is_lost(start_batches, upstream):
    emulator, client = start_batches(DROPWIRE_BATCHES__RETRY_BASE_SECONDS="0.1", DROPWIRE_BATCHES__RETRY_MAX_SECONDS="1",
                                     **SLOW)
    lines = [chat_line(f"d{i}", f"slow down {i}") for i in range(30)]
    batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 5, timeout=60,
             what="some lines to finish")
    upstream.stop()
    # A chunk whose lines cannot reach the runtime parks on the queue's timer (its saved lines stay).
    wait_for(lambda: emulator.store.query("SELECT count(*) FROM tasks WHERE result LIKE '%parked%'")[0][0] > 0,
             timeout=60, what="a chunk to park while the runtime is unreachable")
    replacement = None
    try:
        replacement = type(upstream)(slow_seconds=0.05, port=upstream.port).start()
        done = finished(client, batch.id, timeout=120)
        assert done.status == "completed" and done.request_counts.completed == 30 and done.request_counts.failed == 0
        assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == [f"d{i}" for i in range(30)]
    finally:
        if replacement is not None:
            replacement.stop()

"""Batches against the real runtime: a `dropwire runtime serve` process on its embedded test
model (the text-generation runtime's /v1), the emulator's lines on its background lane, an
interactive request through the gateway answered while the batch still runs, and kill -9 of
the runtime mid-batch resumed with exact counts."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from dropwire.local_emulator.emulator import Emulator
from tests.batches.conftest import TOKEN, TextgenRuntime, finished, read_lines, upload
from tests.conftest import wait_for
from tests.platform.conftest import emulator_settings

pytestmark = pytest.mark.slow
MODEL = "dropwire-tiny"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Iterator[TextgenRuntime]:
    process = TextgenRuntime(tmp_path_factory.mktemp("runtime")).start()
    yield process
    process.stop()


def chat(custom_id: str, prompt: str, max_tokens: int = 12) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                     "temperature": 0}}


def emulator_on(runtime: TextgenRuntime, data_dir: Path, **env: str) -> tuple[Emulator, openai.OpenAI]:
    settings = emulator_settings(data_dir, DROPWIRE_FUNCTIONS="dropwire.functions.catalog:functions",
                                 DROPWIRE_HTTP__API_TOKENS=json.dumps([TOKEN]), DROPWIRE_RUNTIME__PORT=str(runtime.port),
                                 DROPWIRE_BATCHES__SAVE_EVERY_SECONDS="0.1", **env)
    emulator = Emulator(settings).start()
    return emulator, openai.OpenAI(base_url=f"http://127.0.0.1:{settings.http.port}/v1", api_key=TOKEN, max_retries=0,
                                   timeout=120)


def test_a_batch_on_the_runtime_with_an_interactive_request_answered_first(runtime, tmp_path):
    emulator, client = emulator_on(runtime, tmp_path / "data", DROPWIRE_BATCHES__CHUNK_LINES="20")
    try:
        lines = [chat(f"t{i}", f"Tell me story number {i}.", max_tokens=24) for i in range(60)]
        batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 2, timeout=120,
                 what="the batch to be running on the runtime")
        before = runtime.textgen_stats()
        answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello?"}],
                                                max_tokens=8, temperature=0)
        after = runtime.textgen_stats()
        running = client.batches.retrieve(batch.id)
        # Answered on the interactive lane while background lines were still queued behind it.
        assert answer.object == "chat.completion" and answer.usage.completion_tokens >= 1
        assert after["completed_interactive"] == before["completed_interactive"] + 1
        # Background lines were computed before it and the batch still had lines left after it.
        assert before["completed_background"] >= 2
        assert running.status == "in_progress" and running.request_counts.completed < 60

        done = finished(client, batch.id, timeout=300)
        assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (60, 0)
        output = read_lines(client, done.output_file_id)
        assert [line["custom_id"] for line in output] == [f"t{i}" for i in range(60)]
        assert all(line["response"]["body"]["model"] == MODEL for line in output)
        assert done.usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
        assert runtime.textgen_stats()["completed_background"] >= 60
    finally:
        emulator.stop()


def test_kill_9_of_the_runtime_mid_batch_resumes_with_exact_counts(tmp_path):
    runtime = TextgenRuntime(tmp_path).start()
    emulator, client = emulator_on(runtime, tmp_path / "data", DROPWIRE_BATCHES__CHUNK_LINES="10",
                                   DROPWIRE_BATCHES__RETRY_BASE_SECONDS="0.2", DROPWIRE_BATCHES__RETRY_MAX_SECONDS="2")
    try:
        lines = [chat(f"k{i}", f"Story {i}, please.", max_tokens=24) for i in range(40)]
        batch = client.batches.create(input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 5, timeout=120,
                 what="some lines to be saved")
        runtime.stop(signal.SIGKILL)
        # The chunks park while it is down (no attempt spent), then go on.
        wait_for(lambda: emulator.store.query("SELECT count(*) FROM tasks WHERE result LIKE '%parked%'")[0][0] > 0,
                 timeout=60, what="a chunk to park while the runtime is down")
        runtime.start()  # same port, same data dir: the model built at the first start is reused
        done = finished(client, batch.id, timeout=300)
        assert done.status == "completed", done
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (40, 40, 0)
        assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == [f"k{i}" for i in range(40)]
    finally:
        emulator.stop()
        runtime.stop()

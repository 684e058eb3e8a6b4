"""kill -9 of the emulator mid-batch, then a fresh start: the batch resumes where it stopped,
every line lands in the output exactly once, none is lost, and the counts are exact."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from tests.batches.conftest import TOKEN, batch_env, finished, read_lines, upload
from tests.batches.upstream import Upstream, chat_line
from tests.conftest import DROPWIRE, REPO, wait_for
from tests.platform.conftest import free_port

pytestmark = pytest.mark.slow
LINES = 60


def children_of(pid: int) -> list[int]:
    """Direct children (the handler processes), from /proc, so the test can end what it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_kill_9_mid_batch_resumes_with_no_line_twice_and_none_lost(dropwire_env, tmp_path):
    upstream = Upstream(slow_seconds=0.2).start()
    port = free_port()
    env = {**dropwire_env, **batch_env(upstream), "DROPWIRE_HTTP__PORT": str(port), "DROPWIRE_QUEUE__WORKERS": "2",
           "DROPWIRE_BATCHES__CONCURRENCY": "2", "DROPWIRE_BATCHES__CHUNK_LINES": "20",
           "DROPWIRE_BATCHES__SAVE_EVERY_LINES": "1"}
    started: list[subprocess.Popen] = []
    orphans: list[int] = []

    def start() -> openai.OpenAI:
        log = (tmp_path / f"emulate{len(started)}.log").open("w")
        started.append(subprocess.Popen([*DROPWIRE, "emulate"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        wait_for(lambda: _healthy(port), timeout=120, what="the emulator's gateway")
        return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, max_retries=2)

    try:
        client = start()
        batch = client.batches.create(input_file_id=upload(client, [chat_line(f"k{i}", f"slow {i}") for i in range(LINES)]).id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 10, timeout=90,
                 what="some lines to be saved")
        orphans = children_of(started[0].pid)
        started[0].send_signal(signal.SIGKILL)
        started[0].wait(30)
        before_restart = sum(upstream.answered.values())

        client = start()
        done = finished(client, batch.id, timeout=180)
        assert done.status == "completed", done
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (LINES, LINES, 0)
        output = read_lines(client, done.output_file_id)
        assert [line["custom_id"] for line in output] == [f"k{i}" for i in range(LINES)]
        assert done.error_file_id is None
        # Lines answered more than once were in flight at the kill: never more than the chunks
        # running then could hold, and none of them twice in the output.
        recomputed = sum(upstream.answered.values()) - LINES
        assert 0 <= recomputed <= 2 * 2 * 2, (recomputed, before_restart)
        print(f"kill -9 at {before_restart} answered lines; {recomputed} line(s) computed again after the restart")

        # Heartbeats and benchmark figures, through the running control plane.
        def cli(*args: str) -> str:
            ran = subprocess.run([*DROPWIRE, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
            assert ran.returncode == 0, ran.stderr
            return ran.stdout

        workers = cli("batches", "workers")
        assert batch.id in workers and "yes" in workers  # the worker that finished it beat moments ago
        by_model = cli("batches", "benchmarks", "--by", "model")
        assert "echo-1" in by_model and f" {LINES} " in by_model
        assert batch.id in cli("batches", "list")
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        upstream.stop()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False

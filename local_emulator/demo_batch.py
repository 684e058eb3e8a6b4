"""The demo's batch part: `dropwire runtime serve` as a child process on its embedded test text
model (started first, so it builds the model while the evaluation part runs), then a small
chat-completion batch dropped as `batches/<name>.jsonl` into the bucket, waited for, and its
status, counts and first output lines shown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import msgspec
from rich.markup import escape

from dropwire.functions.batches import reads
from dropwire.functions.batches.core.output import BatchObject
from dropwire.functions.batches.handlers import DROP_PREFIX
from dropwire.functions.batches.states import TERMINAL
from dropwire.functions.kit.errors import DropwireError
from dropwire.local_emulator.settings import SETTINGS_FILE_ENV, Settings

if TYPE_CHECKING:
    from dropwire.local_emulator.demo import DemoRun

MODEL = "dropwire-tiny"
LINES = 20
SHOWN = 3
READY_S = 240.0  # the first start builds both embedded models (seconds on an idle core)
BATCH_S = 180.0
STOP_S = 30.0
PROMPTS = ("Tell me a fable about a fox.", "Say hello to the team.", "What did the crow do?",
           "Write one line about rain.", "Tell me a story about a lion.")


class DemoRuntime:
    """The runtime as a child process on a free loopback port, its log under the data dir;
    stopped with SIGTERM (then SIGKILL) on the way out, Ctrl-C and failures included."""

    def __init__(self, settings: Settings, settings_file: Path | None) -> None:
        with socket.socket() as sock:
            sock.bind((settings.runtime.host, 0))
            port = sock.getsockname()[1]
        self.settings = msgspec.structs.replace(settings, runtime=msgspec.structs.replace(settings.runtime, port=port))
        self.settings_file = settings_file
        self.log_path = settings.data_path / "demo-runtime.log"
        self.process: subprocess.Popen | None = None
        self.problem = ""

    def __enter__(self) -> DemoRuntime:
        # One torch thread unless set: the demo shares the CPU with the handler processes, and
        # torch's default (a thread per core) spinning against them makes the first start's
        # model build several times slower.
        threads = self.settings.runtime.torch_threads or 1
        env = {**os.environ, "DROPWIRE_RUNTIME__PORT": str(self.settings.runtime.port),
               "DROPWIRE_RUNTIME__TORCH_THREADS": str(threads), "DROPWIRE_RUNTIME__TEXTGEN__ENABLED": "true"}
        if self.settings_file is not None:
            env[SETTINGS_FILE_ENV] = str(self.settings_file)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.log_path.open("w") as log:
                self.process = subprocess.Popen([sys.executable, "-m", "dropwire.local_emulator", "runtime", "serve"],
                                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.problem = f"could not be started ({exc})"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def starting(self) -> bool:
        """Still on its way up: running, /health not answering yet."""
        return self.process is not None and self.process.poll() is None and not self.healthy()

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.settings.runtime_url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        """Wait (bounded) for /health; False with `problem` set when it exited or took too long."""
        deadline = time.monotonic() + READY_S
        while not self.problem:
            if self.process is None or self.process.poll() is not None:
                last = self.log_path.read_text().strip().splitlines()[-1:] if self.log_path.exists() else []
                self.problem = f"exited with {None if self.process is None else self.process.returncode}" + (
                    f" ({last[0][:200]})" if last else "")
            elif time.monotonic() > deadline:
                self.problem = f"was not healthy within {READY_S:.0f}s"
            elif self.healthy():
                return True
            else:
                time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def batch_lines(count: int = LINES) -> bytes:
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": MODEL, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                       "max_tokens": 16, "temperature": 0}} for i in range(count)]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def run_batch(run: DemoRun, runtime: DemoRuntime, local: Callable[[str], str]) -> None:
    """Drop the batch, wait for its end and narrate it; `local` shows an object URL as a path."""
    if runtime.starting():
        run.say("waiting for the runtime (its first start builds the test model)")
    if not runtime.ready():
        run.say(f"[yellow]batch part skipped: the runtime {escape(runtime.problem)}; log: {runtime.log_path}[/]")
        return
    run.say(f"runtime up with {MODEL}: a tiny TEST model, built at first start")
    run.say("  (it writes plausible characters, not sense)")
    name = f"chat-{datetime.now():%Y%m%d-%H%M%S}"
    key = run.drop(f"{DROP_PREFIX}{name}.jsonl", batch_lines())
    run.say(f"dropped {key}: {LINES} chat requests")
    batch = _wait(run, name)
    counts = batch.request_counts
    run.say(f"  {batch.id}: {batch.status}")
    run.say(f"  requests: {counts.total} total, {counts.completed} completed, {counts.failed} failed; "
            f"{batch.usage.output_tokens} tokens")
    if batch.output_file_id is None:
        return
    output = reads.file(run.store.query, batch.output_file_id)
    run.say("  output, one JSON line per request in input order:")
    run.say(f"  {local(run.emulator.objects.url(output.bucket, output.key))}")
    with run.emulator.objects.open(output.bucket, output.key) as stream:
        first = [json.loads(line) for _, line in zip(range(SHOWN), stream, strict=False)]
    for line in first:
        text = line["response"]["body"]["choices"][0]["message"]["content"].replace("\n", " ")
        shown = json.dumps(text[:48] + ("…" if len(text) > 48 else ""), ensure_ascii=False)
        run.say(f"    {line['custom_id']}: {escape(shown)}")


def _wait(run: DemoRun, name: str) -> BatchObject:
    deadline = time.monotonic() + BATCH_S
    while time.monotonic() < deadline:
        batch_id = reads.batch_id_named(run.store.query, name)
        if batch_id is not None:
            batch = reads.batch_object(run.store.query, batch_id)
            if batch.status in TERMINAL:
                return batch
        time.sleep(0.1)
    letters = [f"{d.name}: {d.last_error}" for d in run.store.queue.dead_letters()]
    raise DropwireError(f"batch {name} did not finish within {BATCH_S:.0f}s; dead letters: {letters or 'none'}")


"""A real emulator serving the product's catalog, with its batch lines sent to a real
OpenAI-compatible server on loopback, and the unmodified official `openai` client pointed
at the gateway with only base_url and api_key."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import BaseModel

from dropwire.local_emulator.emulator import Emulator
from tests.batches.upstream import Upstream
from tests.conftest import DROPWIRE, REPO, wait_for
from tests.platform.conftest import emulator_settings
from tests.runtime.conftest import free_port, runtime_env

TOKEN = "batch-test-token"
TERMINAL = ("completed", "failed", "expired", "cancelled")


def batch_env(upstream: Upstream, **env: str) -> dict[str, str]:
    return {"DROPWIRE_FUNCTIONS": "dropwire.functions.catalog:functions", "DROPWIRE_HTTP__API_TOKENS": json.dumps([TOKEN]),
            "DROPWIRE_BATCHES__BASE_URL": upstream.url, "DROPWIRE_BATCHES__SAVE_EVERY_SECONDS": "0.05", **env}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream(slow_seconds=0.3).start()
    yield server
    server.stop()


@pytest.fixture
def start_batches(tmp_path, upstream) -> Iterator[Callable[..., tuple[Emulator, openai.OpenAI]]]:
    running: list[Emulator] = []

    def start(**env: str) -> tuple[Emulator, openai.OpenAI]:
        settings = emulator_settings(tmp_path / f"data{len(running)}", **batch_env(upstream, **env))
        emulator = Emulator(settings).start()
        running.append(emulator)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.http.port}/v1", api_key=TOKEN, max_retries=0)
        return emulator, client

    yield start
    for emulator in running:
        emulator.stop()


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client: openai.OpenAI, lines: list[dict] | bytes, name: str = "input.jsonl"):
    content = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=(name, io.BytesIO(content)), purpose="batch")


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 60, states: tuple[str, ...] = TERMINAL):
    seen = {}

    def done():
        seen["batch"] = client.batches.retrieve(batch_id)
        return seen["batch"].status in states

    wait_for(done, timeout=timeout, interval=0.1, what=f"batch {batch_id} to reach {states}")
    return seen["batch"]


def read_lines(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines()]


def assert_openai_shape(raw: Any, model: type[BaseModel]) -> None:
    """`raw` (JSON as sent) validates as the official client's `model`, and has no field the
    model does not declare, at any depth (the client would silently drop it)."""
    model.model_validate(raw)

    def walk(value: Any, annotation: Any, where: str) -> None:
        for inner in typing.get_args(annotation) or (annotation,):
            if isinstance(inner, type) and issubclass(inner, BaseModel) and isinstance(value, dict):
                unknown = set(value) - set(inner.model_fields)
                assert not unknown, f"{where}: fields {sorted(unknown)} are not in openai's {inner.__name__}"
                for name, field in inner.model_fields.items():
                    if value.get(name) is not None:
                        walk(value[name], field.annotation, f"{where}.{name}")
            elif typing.get_origin(inner) is list and isinstance(value, list):
                for index, item in enumerate(value):
                    walk(item, typing.get_args(inner)[0], f"{where}[{index}]")

    walk(raw, model, model.__name__)


class TextgenRuntime:
    """`dropwire runtime serve` with text generation on its test model, on a fixed port so it
    can be restarted; `textgen__*` keywords set its text-generation settings (a rate limit)."""

    def __init__(self, data_dir: Path, **textgen: object) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = runtime_env(data_dir, self.port, textgen=True, **textgen)
        self.process: subprocess.Popen | None = None

    def start(self) -> TextgenRuntime:
        log = (self.data_dir / f"runtime-{self.port}.log").open("a")
        self.process = subprocess.Popen([*DROPWIRE, "runtime", "serve"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        env=self.env)
        wait_for(self.healthy, timeout=180, interval=0.2, what="the runtime's /health")
        return self

    def healthy(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "the runtime exited"
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def textgen_stats(self) -> dict:
        return httpx.get(f"{self.url}/stats", timeout=10).json()["textgen"]

    def metrics(self) -> dict[str, float]:
        found = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                found[name] = float(value)
        return found

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)

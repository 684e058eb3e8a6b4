"""Fixtures of the runtime tests: a tiny trained model, small forecast settings, and a real
`dropwire runtime serve` process on a free loopback port."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dropwire.runtime.dataset import Dataset, parse_csv
from dropwire.runtime.settings import RuntimeSettings, TextGenSettings
from dropwire.runtime.synthetic import generated_csv
from dropwire.runtime.training import train_default_model
from tests.conftest import DROPWIRE, REPO, SUBPROCESS_PYTHONPATH, wait_for

# Small enough that the whole runtime suite stays well under a minute and a half on 2 cores.
TINY_CONTEXT = 8
LOG_FOR_TESTS = logging.getLogger("tests.runtime")
SMALL = dict(horizon=6, num_samples=200, grid_points=64, plot_paths=4, torch_threads=1, batch_size=4, background_chunk=2)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    train_default_model(path, steps=60, seed=0, context_length=TINY_CONTEXT, hidden_size=16, num_layers=1)
    return path


def small_settings(**overrides: object) -> RuntimeSettings:
    """Forecast settings; text generation off unless ``textgen`` is given (it builds a model)."""
    return RuntimeSettings(**{**SMALL, "textgen": TextGenSettings(enabled=False), **overrides})  # type: ignore[arg-type]


def dataset(rows: int, series: int = 1, seed: int = 0) -> Dataset:
    return parse_csv(generated_csv(rows, series, seed), context_length=TINY_CONTEXT, max_series=8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RuntimeProcess:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/stats", timeout=10).json()


def runtime_env(data_dir: Path, port: int, *, textgen: bool = False, **runtime: object) -> dict[str, str]:
    """The runtime's environment; text generation off unless asked for (sections of it as
    ``textgen__<field>=...``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWIRE_")}
    env.update(DROPWIRE_DATA_DIR=str(data_dir), PYTHONPATH=SUBPROCESS_PYTHONPATH, DROPWIRE_RUNTIME__PORT=str(port),
               DROPWIRE_RUNTIME__TEXTGEN__ENABLED=str(textgen).lower())
    for name, value in {**SMALL, **runtime}.items():
        env[f"DROPWIRE_RUNTIME__{name.upper()}"] = str(value)
    return env


def start_runtime(data_dir: Path, *, textgen: bool = False, **runtime: object) -> RuntimeProcess:
    """Start `dropwire runtime serve` and wait (bounded) until /health answers."""
    port = free_port()
    log_path = data_dir / f"runtime-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*DROPWIRE, "runtime", "serve"], env=runtime_env(data_dir, port, textgen=textgen, **runtime), cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail(f"runtime exited with {process.returncode} before it was healthy:\n{log_path.read_text()}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout=90, interval=0.1, what="the runtime's /health")
    return RuntimeProcess(process, url, log_path)


def stop_runtime(runtime: RuntimeProcess) -> int:
    if runtime.process.poll() is None:
        runtime.process.send_signal(signal.SIGTERM)
    try:
        return runtime.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        runtime.process.kill()
        pytest.fail(f"runtime did not exit within 30s of SIGTERM:\n{runtime.log()}")


@pytest.fixture(scope="module")
def runtime(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    """One runtime process shared by a module's tests; each test removes what it uploads."""
    process = start_runtime(
        tmp_path_factory.mktemp("runtime-data"), model_path=tiny_model, max_upload_bytes=2_000_000
    )
    yield process
    stop_runtime(process)


@pytest.fixture
def client(runtime: RuntimeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime.url, timeout=60) as http:
        yield http

"""A running emulator for platform tests: its own data dir, a free loopback port, the sample
functions, real files and real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dropwire.local_emulator.emulator import ChaosSettings, Emulator
from dropwire.local_emulator.settings import load_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_settings(data_dir: Path, **env: str):
    return load_settings(environ={
        "DROPWIRE_DATA_DIR": str(data_dir),
        "DROPWIRE_FUNCTIONS": "tests.platform.sample_functions:functions",
        "DROPWIRE_HTTP__PORT": str(free_port()),
        "DROPWIRE_QUEUE__WORKERS": "2",
        "DROPWIRE_QUEUE__BACKOFF_BASE_SECONDS": "0.1",
        "DROPWIRE_QUEUE__BACKOFF_MAX_SECONDS": "0.3",
        **env,
    })


@pytest.fixture
def start_emulator(tmp_path) -> Iterator[Callable[..., tuple[Emulator, httpx.Client]]]:
    running: list[tuple[Emulator, httpx.Client]] = []

    def start(chaos: ChaosSettings = ChaosSettings(), **env: str) -> tuple[Emulator, httpx.Client]:
        settings = emulator_settings(tmp_path / f"data{len(running)}", **env)
        emulator = Emulator(settings, chaos=chaos).start()
        client = httpx.Client(base_url=f"http://127.0.0.1:{settings.http.port}", timeout=30)
        running.append((emulator, client))
        return emulator, client

    yield start
    for emulator, client in running:
        client.close()
        emulator.stop()

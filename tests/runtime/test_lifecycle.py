"""The runtime process's life: a model that cannot load stops it with a clear message and a
non-zero exit; a SIGTERM with requests in flight answers every one of them, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from dropwire.runtime.synthetic import generated_csv
from tests.conftest import DROPWIRE, REPO
from tests.runtime.conftest import free_port, runtime_env, start_runtime


def serve_expecting_failure(data_dir: Path, **runtime: object) -> subprocess.Popen:
    # A wide "terminal", so the CLI's one-line error is not wrapped at 80 columns.
    env = {**runtime_env(data_dir, free_port(), **runtime), "COLUMNS": "1000"}
    return subprocess.Popen(
        [*DROPWIRE, "runtime", "serve"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_a_model_that_cannot_load_ends_the_process(tmp_path: Path, tiny_model: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a state_dict")
    corrupt.with_suffix(".json").write_bytes(tiny_model.with_suffix(".json").read_bytes())
    # Both at once: each spends most of its time importing torch.
    missing = serve_expecting_failure(tmp_path, model_path=tmp_path / "nowhere.pt")
    unreadable = serve_expecting_failure(tmp_path, model_path=corrupt)
    for process, message in [
        (missing, f"error: model file {tmp_path / 'nowhere.pt'} does not exist"),
        (unreadable, f"error: model file {corrupt} is not a readable state_dict"),
    ]:
        _, stderr = process.communicate(timeout=90)
        assert process.returncode == 1, stderr
        assert message in stderr
        assert "Traceback" not in stderr
        assert "Uvicorn running" not in stderr  # the port never opened


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_shutdown_with_requests_in_flight_answers_every_one(tmp_path: Path) -> None:
    # No model configured: the first start trains the default one on generated data.
    runtime = start_runtime(
        tmp_path / "data", default_model_train_steps=30, num_samples=1500, horizon=12, batch_size=1,
    )
    assert "no default model at" in runtime.log() and (tmp_path / "data/models/default-forecaster.pt").exists()
    with httpx.Client(base_url=runtime.url, timeout=30) as client:
        info = client.post("/datasets", content=generated_csv(400, seed=21), params={"precompute": False}).json()

    async def scenario() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=runtime.url, timeout=60, limits=limits) as http:
            clicks = [
                asyncio.create_task(http.get(f"/datasets/{info['handle']}/forecasts/{index}"))
                for index in range(info["first_index"], info["first_index"] + 60)
            ]
            while (await http.get("/stats")).json()["scheduler"]["interactive_queued"] < 20:
                await asyncio.sleep(0.01)
            os.kill(runtime.process.pid, signal.SIGTERM)
            return await asyncio.wait_for(asyncio.gather(*clicks), timeout=60)

    responses = asyncio.run(scenario())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses  # work still queued at the signal was refused, not left hanging
    for response in responses:
        if response.status_code == 503:
            body = response.json()
            assert body["error"] == "shutting_down" and "shutting down" in body["message"]
    assert runtime.process.wait(timeout=30) == 0
    log = runtime.log()
    steps = [
        "shutdown: stats {",
        "shutdown: no longer accepting requests",
        "shutdown: stopping the device worker",
        "shutdown: unloading the model",
        "shutdown: flushed queues (1 datasets)",
    ]
    positions = [log.find(step) for step in steps]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{runtime.url}/health", timeout=2)


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_a_taken_port_ends_the_process_before_it_says_ready(tmp_path: Path, tiny_model: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**runtime_env(tmp_path, port, model_path=tiny_model), "COLUMNS": "1000"}
        process = subprocess.run(
            [*DROPWIRE, "runtime", "serve"], env=env, cwd=REPO, capture_output=True, text=True, timeout=90,
        )
    assert process.returncode == 1, process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: the runtime cannot listen on 127.0.0.1:{port}: the port is in use "
                      "(stop what holds it or set DROPWIRE_RUNTIME__PORT)"], process.stderr
    assert " ready" not in process.stderr and "starting: queues" not in process.stderr  # checked before the model
    assert "Errno" not in process.stderr and "Traceback" not in process.stderr

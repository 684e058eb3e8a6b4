"""Start-up as a person meets it, each as a real process, against `python -c pass` measured in
the same run: `dropwire --help`, the emulator healthy on the embedded default (fresh data dir,
the product's functions, GET /health answering), and the runtime healthy with its test model
loaded. Targets (issue 26): --help <= 0.5 s, emulator <= 3 s, runtime <= 5 s on a quiet box."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from dropwire.runtime.training import train_default_model
from tests.conftest import DROPWIRE, REPO, SUBPROCESS_PYTHONPATH
from tests.runtime.conftest import TINY_CONTEXT, runtime_env

ROUNDS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROPWIRE_")}
    env.update(PYTHONPATH=SUBPROCESS_PYTHONPATH, **extra)
    return env


def timed_run(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, cwd=REPO, env=clean_env(), capture_output=True, check=True, timeout=120)
    return time.perf_counter() - started


def time_to_healthy(args: list[str], url: str, env: dict[str, str], log: Path) -> float:
    """Seconds from the process's start to its first 200 on GET url; then stop it (SIGINT)."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(args)} exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > 180:
                raise TimeoutError(f"not healthy after 180 s:\n{log.read_text()}")
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def emulator_start(root: Path, round_: int) -> float:
    port = free_port()
    data = root / f"emulator-{round_}"  # a fresh data dir each time: the first start's cost
    env = clean_env(DROPWIRE_DATA_DIR=str(data), DROPWIRE_HTTP__PORT=str(port))
    return time_to_healthy([*DROPWIRE, "emulate"], f"http://127.0.0.1:{port}/health", env, root / f"emulator-{round_}.log")


def runtime_start(root: Path, model: Path, round_: int) -> float:
    port = free_port()
    env = runtime_env(root / f"runtime-{round_}", port, model_path=model)  # the runtime tests' settings
    return time_to_healthy([*DROPWIRE, "runtime", "serve"], f"http://127.0.0.1:{port}/health", env,
                           root / f"runtime-{round_}.log")


def line(name: str, seconds: list[float], baseline: float, target: float) -> str:
    best, median = min(seconds), statistics.median(seconds)
    verdict = "within" if median <= target else "OVER"
    return (f"{name:<34} median {median:6.2f} s  best {best:6.2f} s  = {median / baseline:6.1f}x python -c pass  "
            f"(target {target:.1f} s: {verdict})")


def main() -> None:
    baseline = statistics.median(timed_run([sys.executable, "-c", "pass"]) for _ in range(5))
    print(f"python -c pass: {baseline * 1000:.0f} ms (median of 5)")
    helps = [timed_run([*DROPWIRE, "--help"]) for _ in range(ROUNDS)]
    print(line("dropwire --help", helps, baseline, 0.5))
    with tempfile.TemporaryDirectory(prefix="dropwire-bench-startup-") as folder:
        root = Path(folder)
        emulators = [emulator_start(root, i) for i in range(ROUNDS)]
        print(line("emulator healthy (embedded default)", emulators, baseline, 3.0))
        model = root / "tiny.pt"
        train_default_model(model, steps=60, seed=0, context_length=TINY_CONTEXT, hidden_size=16, num_layers=1)
        runtimes = [runtime_start(root, model, i) for i in range(ROUNDS)]
        print(line("runtime healthy (test model loaded)", runtimes, baseline, 5.0))


if __name__ == "__main__":
    main()

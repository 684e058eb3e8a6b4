"""Batch inference, three figures, each against a baseline measured in the same run:

1. platform overhead: N lines through the Batch API (official client: upload, create, wait
   for completed, download the output) on a running `dropwire emulate`, against the same
   lines sent by the line backend directly in one process with the same concurrency (the
   issue's baseline), and split over as many processes as the platform's workers (its
   parallelism without it), all to the same OpenAI-compatible server in its own process
   (answers at once, so what is measured is the platform: queue, chunks, durable saves of
   every line, metering, output assembly);
2. interactive p99 through the gateway to the real runtime (`dropwire runtime serve`, its
   embedded test model on this machine's CPU) while a 10,000-line batch runs on its
   background lane, against the same requests with the runtime idle;
3. peak resident memory of the emulator and its handler processes while a 50,000-line,
   ~200 MB file dropped into the bucket is validated and run, next to the file's size.

Sizes: BENCH_BATCH_LINES (default 10000), BENCH_BATCH_BIG_LINES (50000), BENCH_BATCH_LINE_BYTES (4000)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from dropwire.functions.batches.core.backend import LineBackend
from tests.batches.upstream import MODEL
from tests.conftest import DROPWIRE, REPO
from tests.platform.conftest import free_port

TOKEN = "bench"
LINES = int(os.environ.get("BENCH_BATCH_LINES", "10000"))
BIG_LINES = int(os.environ.get("BENCH_BATCH_BIG_LINES", "50000"))
LINE_BYTES = int(os.environ.get("BENCH_BATCH_LINE_BYTES", "4000"))
# Interactive requests per sample: with 40 the "p99" was the single slowest request, one
# scheduling hiccup of a shared machine; 200 give a p99 that is the 99th percentile.
INTERACTIVE = 200
CONCURRENCY, WORKERS = 8, 2


def _line(i: int, pad: int = 0) -> bytes:
    prompt = f"line {i} " + "x" * pad
    return json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}}
                      ).encode() + b"\n"


def _wait_http(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _upstream(port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", f"from tests.batches.upstream import serve; serve({port})"],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    _wait_http(f"http://127.0.0.1:{port}/v1/models")
    return process


def _emulate(data: Path, http_port: int, log: Path, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DROPWIRE_")}
    environ.update(PYTHONPATH=str(REPO), DROPWIRE_DATA_DIR=str(data), DROPWIRE_HTTP__PORT=str(http_port),
                   DROPWIRE_HTTP__API_TOKENS=json.dumps([TOKEN]), DROPWIRE_QUEUE__WORKERS=str(WORKERS),
                   DROPWIRE_BATCHES__CONCURRENCY=str(CONCURRENCY), **env)
    process = subprocess.Popen([*DROPWIRE, "emulate"], cwd=REPO, env=environ, stdout=log.open("w"), stderr=subprocess.STDOUT)
    _wait_http(f"http://127.0.0.1:{http_port}/health")
    return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()


def _client(http_port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key=TOKEN, max_retries=0, timeout=300)


def _run_batch(client: openai.OpenAI, content: bytes, timeout: float = 3600.0) -> tuple[float, object]:
    started = time.perf_counter()
    file = client.files.create(file=("bench.jsonl", io.BytesIO(content)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch.id} did not finish within {timeout}s")
        time.sleep(0.05)
    output = client.files.content(batch.output_file_id).content
    assert output.count(b"\n") == batch.request_counts.completed, "output lines != completed lines"
    return time.perf_counter() - started, batch


async def _direct(base_url: str, content: bytes, out: Path, concurrency: int = CONCURRENCY * WORKERS) -> float:
    """The same lines through the line backend in one process: no queue, no saves, one file out."""
    started = time.perf_counter()
    backend = LineBackend(base_url, max_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    lines = [json.loads(raw) for raw in content.splitlines()]

    async def one(item: dict) -> bytes:
        async with semaphore:
            outcome = await backend.call(item["url"], item["body"])
        return json.dumps({"custom_id": item["custom_id"], "status_code": outcome.status_code}).encode() + b"\n"

    results = await asyncio.gather(*(one(item) for item in lines))
    out.write_bytes(b"".join(results))
    await backend.aclose()
    return time.perf_counter() - started


def _direct_share(base_url: str, content: bytes, out: Path, start_at: float) -> float:
    """One process's share of the lines, started at `start_at` (after every process is up); the
    epoch time it ended."""
    time.sleep(max(0.0, start_at - time.time()))
    asyncio.run(_direct(base_url, content, out, CONCURRENCY))
    return time.time()


def _direct_processes(base_url: str, content: bytes, root: Path) -> float:
    """The lines split over WORKERS processes with CONCURRENCY each, as the platform runs them:
    the platform's parallelism without the platform."""
    from concurrent.futures import ProcessPoolExecutor

    lines = content.splitlines(keepends=True)
    shares = [b"".join(lines[i::WORKERS]) for i in range(WORKERS)]
    with ProcessPoolExecutor(WORKERS) as pool:
        list(pool.map(time.sleep, [0.0] * WORKERS))  # the processes are up before the clock starts
        start_at = time.time() + 1.0
        ends = list(pool.map(_direct_share, [base_url] * WORKERS, shares,
                             [root / f"direct-{i}.jsonl" for i in range(WORKERS)], [start_at] * WORKERS))
    return max(ends) - start_at


def overhead(root: Path) -> None:
    up_port, http_port = free_port(), free_port()
    upstream = _upstream(up_port)
    base = f"http://127.0.0.1:{up_port}/v1"
    emulator = _emulate(root / "overhead", http_port, root / "overhead.log", DROPWIRE_BATCHES__BASE_URL=base)
    try:
        client = _client(http_port)
        _run_batch(client, b"".join(_line(i) for i in range(200)))  # warm-up: handler processes, first chunk
        content = b"".join(_line(i) for i in range(LINES))
        platform, batch = _run_batch(client, content)
        direct = asyncio.run(_direct(base, content, root / "direct.jsonl"))
        spread = _direct_processes(base, content, root)
        assert batch.request_counts.completed == LINES, batch.request_counts
        print(f"{LINES:,} lines; Batch API {platform:.2f} s ({LINES / platform:.0f} lines/s), {WORKERS} workers x "
              f"{CONCURRENCY} lines in flight")
        print(f"{'baseline: the line backend directly':>48} {'s':>7} {'lines/s':>8} {'overhead':>9}")
        for name, seconds in (("in one process (the issue's baseline)", direct),
                              (f"in {WORKERS} processes (the platform's parallelism)", spread)):
            print(f"{name:>48} {seconds:>7.2f} {LINES / seconds:>8.0f} {(platform / seconds - 1) * 100:>8.0f}%", flush=True)
    finally:
        _stop(emulator)
        upstream.terminate()
        upstream.wait(30)


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def interactive(root: Path) -> None:
    from tests.runtime.conftest import runtime_env

    rt_port, http_port = free_port(), free_port()
    (root / "runtime").mkdir()
    runtime = subprocess.Popen([*DROPWIRE, "runtime", "serve"], cwd=REPO, env=runtime_env(root / "runtime", rt_port, textgen=True),
                               stdout=(root / "runtime.log").open("w"), stderr=subprocess.STDOUT)
    emulator = None
    try:
        _wait_http(f"http://127.0.0.1:{rt_port}/health", timeout=300)
        emulator = _emulate(root / "interactive", http_port, root / "interactive.log", DROPWIRE_RUNTIME__PORT=str(rt_port))
        client = _client(http_port)

        def sample() -> list[float]:
            times = []
            for i in range(INTERACTIVE):
                started = time.perf_counter()
                client.chat.completions.create(model="dropwire-tiny", messages=[{"role": "user", "content": f"Hi {i}"}],
                                               max_tokens=8, temperature=0)
                times.append(time.perf_counter() - started)
            return times

        sample()  # warm-up
        idle = sample()
        lines = b"".join(json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "dropwire-tiny", "max_tokens": 16,
                                              "messages": [{"role": "user", "content": f"Story {i}"}]}}).encode() + b"\n"
                         for i in range(10_000))
        batch = client.batches.create(input_file_id=client.files.create(file=("b.jsonl", io.BytesIO(lines)),
                                                                        purpose="batch").id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
        while client.batches.retrieve(batch.id).request_counts.completed < 16:
            time.sleep(0.1)
        busy = sample()
        running = client.batches.retrieve(batch.id)
        stats = httpx.get(f"http://127.0.0.1:{rt_port}/stats", timeout=10).json()["textgen"]
        client.batches.cancel(batch.id)
        print(f"{'':>22} {'p50 ms':>8} {'p99 ms':>8}")
        for name, times in (("idle runtime", idle), ("10,000-line batch", busy)):
            print(f"{name:>22} {sorted(times)[len(times) // 2] * 1000:>8.1f} {_p99(times) * 1000:>8.1f}")
        print(f"p99 ratio busy/idle: {_p99(busy) / _p99(idle):.2f}x  (batch {running.status}, "
              f"{running.request_counts.completed} lines done; background lane: {stats['waiting_background']} waiting, "
              f"{stats['active_background']} decoding)", flush=True)
    finally:
        if emulator is not None:
            _stop(emulator)
        _stop(runtime)


def _rss_kib(pid: int) -> tuple[int, int]:
    """Resident memory of a process, and of its children together, from /proc."""
    own = children = 0
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(entry.name))
            except (OSError, ValueError):
                continue
    for one in pids:
        try:
            for line in (Path("/proc") / str(one) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    if one == pid:
                        own = int(line.split()[1])
                    else:
                        children += int(line.split()[1])
        except OSError:
            continue
    return own, children


def memory(root: Path) -> None:
    up_port, http_port = free_port(), free_port()
    upstream = _upstream(up_port)
    data = root / "memory"
    emulator = _emulate(data, http_port, root / "memory.log", DROPWIRE_BATCHES__BASE_URL=f"http://127.0.0.1:{up_port}/v1",
                        DROPWIRE_BATCHES__CHUNK_LINES="5000")
    try:
        client = _client(http_port)
        _run_batch(client, b"".join(_line(i) for i in range(200)))  # warm-up: every process has run a line
        base_own, base_children = _rss_kib(emulator.pid)
        source = root / "big.jsonl"
        with source.open("wb") as out:
            for i in range(BIG_LINES):
                out.write(_line(i, pad=LINE_BYTES))
        size = source.stat().st_size
        target = data / "bucket" / "batches" / "big.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        os.replace(source, target)  # dropped into the bucket whole
        peak = peak_own = peak_children = base_own + base_children
        peak_own, peak_children = base_own, base_children
        output = data / "bucket" / "batch-outputs" / "big.output.jsonl"
        while True:
            own, children = _rss_kib(emulator.pid)
            peak, peak_own, peak_children = max(peak, own + children), max(peak_own, own), max(peak_children, children)
            done = [b for b in client.batches.list(limit=1).data if b.status in ("completed", "failed")]
            if done and output.exists():
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        print(f"file {size / 2**20:.0f} MiB, {BIG_LINES:,} lines -> {done[0].status} in {elapsed:.0f} s "
              f"({done[0].request_counts.completed:,} lines, output {output.stat().st_size / 2**20:.0f} MiB)")
        baseline = base_own + base_children
        print(f"resident memory (emulator + handler processes): {baseline / 1024:.0f} MiB before, peak "
              f"{peak / 1024:.0f} MiB, growth {(peak - baseline) / 1024:.0f} MiB = {(peak - baseline) * 1024 / size:.2f}x "
              "the file's size", flush=True)
        print(f"  of which the control plane (store, gateway): {base_own / 1024:.0f} -> {peak_own / 1024:.0f} MiB; "
              f"handler processes: {base_children / 1024:.0f} -> {peak_children / 1024:.0f} MiB", flush=True)
        from dropwire.local_emulator.control import ControlClient
        from dropwire.local_emulator.settings import load_settings

        settings = load_settings(environ={"DROPWIRE_DATA_DIR": str(data)})
        store = ControlClient(settings.control_socket_path, settings.control_key())
        try:
            (held, limit), = store.query("SELECT sum(memory_usage_bytes), current_setting('memory_limit') FROM duckdb_memory()")
        finally:
            store.close()
        print(f"  DuckDB's own memory at the end: {held / 2**20:.0f} MiB (its memory_limit, database.memory_limit: {limit}); "
              "what it caches is bounded by that limit, not by the file", flush=True)
    finally:
        _stop(emulator)
        upstream.terminate()
        upstream.wait(30)


def main() -> None:
    chosen = os.environ.get("BENCH_BATCH_PARTS", "overhead interactive memory").split()
    with tempfile.TemporaryDirectory() as tmp:
        for part in chosen:
            print(f"--- {part}", flush=True)
            sub = Path(tmp) / part
            sub.mkdir()
            {"overhead": overhead, "interactive": interactive, "memory": memory}[part](sub)

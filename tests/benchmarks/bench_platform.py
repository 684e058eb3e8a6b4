"""Event-to-handler-start latency (p50, p99) for the local folder and for S3 via SQS (a moto
server on loopback), and the throughput of 1,000 small files dropped at once."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import msgspec

from dropwire.local_emulator.emulator import Emulator
from dropwire.local_emulator.settings import load_settings
from tests.platform.moto_server import CREDENTIALS, moto_server, notifying_bucket

FUNCTIONS = "tests.benchmarks.sample_platform_functions:functions"


def settings_for(data_dir: Path, **env: str):
    return load_settings(environ={"DROPWIRE_DATA_DIR": str(data_dir), "DROPWIRE_FUNCTIONS": FUNCTIONS, **env})


def started_at(emulator: Emulator, count: int, timeout: float = 300) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = emulator.store.query("SELECT result FROM tasks WHERE status = 'succeeded' AND result IS NOT NULL")
        if len(rows) >= count:
            return {r["key"]: r["started"] for r in (msgspec.json.decode(row[0]) for row in rows)}
        time.sleep(0.05)
    raise TimeoutError(f"only some of {count} invocations finished in {timeout}s")


def percentiles(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):6.1f} ms   p99 {p99:6.1f} ms   (n={len(ms)})"


WARM_UP = 10


def folder_latency(root: Path, files: int = 150) -> tuple[list[float], list[float]]:
    """(the first WARM_UP files' latencies: cold start, the rest: steady state)"""
    with Emulator(settings_for(root / "folder"), serve_http=False) as emulator:
        bench = emulator.settings.bucket_path / "bench"
        bench.mkdir(parents=True)
        written: dict[str, float] = {}
        for i in range(WARM_UP + files):
            path = bench / f"f{i}.csv"
            path.write_bytes(b"x" * 100)
            written[f"bench/f{i}.csv"] = time.time()
            time.sleep(0.02)
        starts = started_at(emulator, WARM_UP + files)
    latencies = [starts[key] - at for key, at in written.items()]
    return latencies[:WARM_UP], latencies[WARM_UP:]


def folder_throughput(root: Path, files: int = 1000) -> float:
    with Emulator(settings_for(root / "burst"), serve_http=False) as emulator:
        bench = emulator.settings.bucket_path / "bench"
        bench.mkdir(parents=True)
        began = time.perf_counter()
        for i in range(files):
            (bench / f"f{i}.csv").write_bytes(b"x" * 100)
        started_at(emulator, files)
        return files / (time.perf_counter() - began)


def sqs_latency(root: Path, objects: int = 60) -> list[float]:
    os.environ.update(CREDENTIALS)
    with moto_server() as endpoint:
        s3, _, queue = notifying_bucket(endpoint, "bench-uploads")
        settings = settings_for(root / "sqs", DROPWIRE_EVENTS__S3_ENDPOINT_URL=endpoint,
                                DROPWIRE_EVENTS__S3_BUCKETS='["bench-uploads"]', DROPWIRE_EVENTS__SQS_QUEUE_URL=queue)
        with Emulator(settings, serve_http=False) as emulator:
            written: dict[str, float] = {}
            for i in range(objects):
                s3.put_object(Bucket="bench-uploads", Key=f"bench/o{i}.csv", Body=b"x" * 100)
                written[f"bench/o{i}.csv"] = time.time()
                time.sleep(0.05)
            starts = started_at(emulator, objects)
        return [starts[key] - at for key, at in written.items()]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cold, steady = folder_latency(root)
        print(f"  folder -> handler start      : {percentiles(steady)}   target p99 < 100 ms")
        print(f"    first {WARM_UP} files after start : {percentiles(cold)}   (cold start: first commits, first claims)")
        print(f"  S3 via SQS -> handler start  : {percentiles(sqs_latency(root))}   (moto on loopback; AWS documents 'typically seconds')")
        print(f"  1,000 files dropped at once  : {folder_throughput(root):6.0f} files/s handled (4 workers, each a handler process)")

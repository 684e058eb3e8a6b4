"""Files per second with the Ray executor vs the local handler processes, same run, same
files and worker threads: 300 small files dropped at once, each firing one handler that only
notes when it started. Ray: a one-node cluster on loopback with as many CPUs as threads.
Also the mean time one invocation holds a worker thread (submit, run, reply), the
per-invocation cost that sets how throughput grows with nodes."""

from __future__ import annotations

import os

# Read by Ray when it is imported: the cluster stays on 127.0.0.1, no usage report.
os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")

import tempfile
import time
from pathlib import Path

from ray import cluster_utils

from dropwire.local_emulator.emulator import Emulator
from tests.benchmarks.bench_platform import settings_for, started_at

FILES = 300
THREADS = 4


def burst(root: Path, **env: str) -> tuple[float, float]:
    """(files per second, mean milliseconds a worker thread spends on one invocation)"""
    with Emulator(settings_for(root, DROPWIRE_QUEUE__WORKERS=str(THREADS), **env), serve_http=False) as emulator:
        bench = emulator.settings.bucket_path / "bench"
        bench.mkdir(parents=True)
        began = time.perf_counter()
        for i in range(FILES):
            (bench / f"f{i}.csv").write_bytes(b"x" * 100)
        started_at(emulator, FILES)
        rate = FILES / (time.perf_counter() - began)
        (mean_ms,) = emulator.store.query("SELECT avg(duration_ms) FROM invocations WHERE outcome = 'succeeded'")[0]
    return rate, mean_ms


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        local_rate, local_ms = burst(root / "local")
        cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": THREADS, "include_dashboard": False, "object_store_memory": 100 * 1024 * 1024})
        try:
            burst(root / "ray-warm", DROPWIRE_EXECUTOR__KIND="ray", DROPWIRE_EXECUTOR__RAY_ADDRESS=cluster.address)
            ray_rate, ray_ms = burst(root / "ray", DROPWIRE_EXECUTOR__KIND="ray",
                                     DROPWIRE_EXECUTOR__RAY_ADDRESS=cluster.address)
        finally:
            cluster.shutdown()
    print(f"local handler processes: {local_rate:7.1f} files/s   {local_ms:6.2f} ms per invocation "
          f"({THREADS} threads, {FILES} files)")
    print(f"Ray tasks (1 node):      {ray_rate:7.1f} files/s   {ray_ms:6.2f} ms per invocation")
    print(f"ratio Ray / local: {ray_rate / local_rate:.2f}x files/s, {ray_ms / local_ms:.1f}x time per invocation")


if __name__ == "__main__":
    main()

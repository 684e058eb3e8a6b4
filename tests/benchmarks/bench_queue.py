"""Queue throughput against Huey (SqliteHuey) with the same worker count, and durable state
transitions per second, all measured in this run.

End to end means: enqueue -> claim -> no-op -> complete, timed from the first enqueue until
every task is recorded as done. Huey runs with its polling tuned for throughput, once with
its default (synchronous=OFF: not durable on power loss) and once with fsync=True."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from dropwire.functions.platform.tasks import TaskRegistry
from dropwire.local_emulator.workers import WorkerPool
from dropwire.storage.records import Effects, TaskSpec, TransitionRequest
from dropwire.storage.settings import QueueSettings
from dropwire.storage.store import Store
from tests.storage.helpers import CYCLE

TASKS = 5000
WORKERS = 4


def huey_throughput(directory: Path, fsync: bool) -> float:
    from huey import SqliteHuey

    huey = SqliteHuey(filename=str(directory / f"huey-{fsync}.db"), fsync=fsync)
    done = threading.Semaphore(0)

    @huey.task()
    def noop(i: int) -> None:
        done.release()

    consumer = huey.create_consumer(workers=WORKERS, worker_type="thread", periodic=False,
                                    initial_delay=0.001, backoff=1.1, max_delay=0.01)
    consumer.start()
    try:
        started = time.perf_counter()
        for i in range(TASKS):
            noop(i)
        for _ in range(TASKS):
            done.acquire()
        return TASKS / (time.perf_counter() - started)
    finally:
        consumer.stop(graceful=True)


def dropwire_throughput(directory: Path, producer: str) -> float:
    """producer: "batched" (enqueue_many, 500 per call, as the event sources admit), "pipelined"
    (one enqueue_async per task, not waiting), or "waiting" (each enqueue waits for its commit)."""
    registry = TaskRegistry()
    ran = threading.Semaphore(0)
    registry.task("noop")(lambda args, context: ran.release())
    path = directory / f"dropwire-{producer}.duckdb"
    settings = QueueSettings(workers=WORKERS)
    with Store.open(path, settings=settings) as store:
        pool = WorkerPool(store.queue, registry, workers=WORKERS, max_prefetch=settings.max_prefetch, claim_batch_seconds=settings.claim_batch_seconds,
                          lease_seconds=settings.lease_seconds, heartbeat_seconds=settings.heartbeat_seconds)
        pool.start()
        started = time.perf_counter()
        if producer == "batched":
            for first in range(0, TASKS, 500):
                store.queue.enqueue_many([TaskSpec(name="noop", args=i) for i in range(first, min(TASKS, first + 500))])
        elif producer == "pipelined":
            # One producer thread that does not wait for each commit before sending the next;
            # each future still resolves only once its task is durable.
            futures = [store.queue.enqueue_async(TaskSpec(name="noop", args=i)) for i in range(TASKS)]
            for future in futures:
                future.result()
        else:
            for i in range(TASKS):
                store.queue.enqueue(TaskSpec(name="noop", args=i))
        for _ in range(TASKS):
            ran.acquire()
        while store.queue.stats().by_status.get("succeeded", 0) < TASKS:  # the last completions are durable
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        pool.stop()
    return TASKS / elapsed


def transitions_per_second(directory: Path, entities: int = 200, steps: int = 50) -> float:
    """Durable transitions with history, from 8 threads, each waiting for its commit."""
    with Store.open(directory / "transitions.duckdb", [CYCLE]) as store:
        for e in range(entities):
            store.states.create("cycle", f"e{e}", triggered_by="bench")

        def drive(offset: int) -> None:
            pending = []
            for _step in range(steps):
                for e in range(offset, entities, 8):
                    pending.append(store.states.apply_async(Effects(transitions=[
                        TransitionRequest(kind="cycle", entity_id=f"e{e}", trigger="next", triggered_by="bench")])))
                for future in pending:
                    future.result()
                pending.clear()

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(8)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        assert store.query("SELECT count(*) FROM state_history")[0][0] == entities * (steps + 1)
    return entities * steps / elapsed


def main() -> None:
    import duckdb
    import huey

    print(f"duckdb {duckdb.__version__}, huey {huey.__version__}; {TASKS} no-op tasks, {WORKERS} worker threads each")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        huey_fast = huey_throughput(directory, fsync=False)
        huey_durable = huey_throughput(directory, fsync=True)
        ours_batched = dropwire_throughput(directory, "batched")
        ours_pipelined = dropwire_throughput(directory, "pipelined")
        ours_sync = dropwire_throughput(directory, "waiting")
        rate = transitions_per_second(directory)
    print(f"  huey SqliteHuey (default, synchronous=OFF) : {huey_fast:8,.0f} tasks/s")
    print(f"  huey SqliteHuey (fsync=True)               : {huey_durable:8,.0f} tasks/s")
    print(f"  dropwire, batched producer (enqueue_many)  : {ours_batched:8,.0f} tasks/s  "
          f"= {ours_batched / huey_fast:.1f}x huey default, {ours_batched / huey_durable:.1f}x huey fsync (target >= 2x)")
    print(f"  dropwire, pipelined producer               : {ours_pipelined:8,.0f} tasks/s  "
          f"= {ours_pipelined / huey_fast:.1f}x huey default, {ours_pipelined / huey_durable:.1f}x huey fsync (target >= 2x)")
    print(f"  dropwire, producer waits for each enqueue  : {ours_sync:8,.0f} tasks/s  "
          f"= {ours_sync / huey_fast:.1f}x huey default")
    print(f"  state transitions with history (8 threads) : {rate:8,.0f} /s  (target >= 5,000/s)")

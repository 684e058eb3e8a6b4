"""The durable queue in one process: real DuckDB files, real worker threads."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dropwire.functions.evaluation.states import MACHINES
from dropwire.functions.kit.errors import StaleLease, UnknownTask
from dropwire.functions.platform.tasks import Completion, PermanentTaskError, TaskRegistry
from dropwire.local_emulator.workers import WorkerPool
from dropwire.storage.queue import Queue
from dropwire.storage.records import Effects, TaskSpec, TransitionRequest
from dropwire.storage.settings import QueueSettings
from dropwire.storage.store import Store
from tests.conftest import wait_for

FAST = QueueSettings(lease_seconds=1.0, heartbeat_seconds=0.2, backoff_base_seconds=0.05, backoff_max_seconds=0.2,
                     reap_interval_seconds=0.05)


@pytest.fixture
def db(tmp_path):
    return tmp_path / "queue.duckdb"


@pytest.fixture
def store(db):
    with Store.open(db, MACHINES, settings=FAST) as opened:
        yield opened


def test_claims_follow_priority_then_age(store):
    ids = store.queue.enqueue_many([TaskSpec(name="t", args=i, priority=p) for i, p in enumerate([0, 5, 0, 9, 5])])
    order = [store.queue.claim("w")[0].id for _ in ids]
    assert order == [ids[3], ids[1], ids[4], ids[0], ids[2]]
    assert store.queue.claim("w") == []


def test_claims_across_task_names_follow_one_priority_then_age_order(store):
    specs = [("a", 0), ("b", 5), ("a", 9), ("b", 0), ("c", 5)]
    ids = store.queue.enqueue_many([TaskSpec(name=name, priority=p) for name, p in specs])
    order = [store.queue.claim("w")[0].id for _ in ids]
    assert order == [ids[2], ids[1], ids[4], ids[0], ids[3]]
    # Limited to some names, the same order among theirs.
    more = store.queue.enqueue_many([TaskSpec(name=name, priority=p) for name, p in specs])
    assert [t.id for t in store.queue.claim("w", names=["b", "c"], limit=5)] == [more[1], more[4], more[3]]


def test_delayed_tasks_wait_for_their_time(store):
    store.queue.enqueue(TaskSpec(name="later", delay_seconds=0.4))
    assert store.queue.claim("w") == []
    assert store.queue.claim("w", wait_seconds=3)[0].name == "later"


def test_an_idempotency_key_returns_the_first_task(store):
    first = store.queue.enqueue(TaskSpec(name="t", args={"n": 1}, idempotency_key="upload:abc"))
    again = store.queue.enqueue(TaskSpec(name="t", args={"n": 2}, idempotency_key="upload:abc"))
    assert first == again
    claimed = store.queue.claim("w")[0]
    store.queue.complete(claimed.id, claimed.token)
    assert store.queue.enqueue(TaskSpec(name="t", idempotency_key="upload:abc")) == first
    assert store.queue.stats().by_status == {"succeeded": 1}


def test_unknown_task_names_and_unencodable_args_are_refused(db):
    with Store.open(db, MACHINES, known_tasks={"known"}) as store:
        with pytest.raises(UnknownTask, match=r"unknown task 'typo'; registered tasks: \['known'\]"):
            store.queue.enqueue(TaskSpec(name="typo"))
        with pytest.raises(Exception, match="arguments of task 'known' cannot be encoded as JSON"):
            store.queue.enqueue(TaskSpec(name="known", args=object()))
        assert store.queue.stats().by_status == {}


def test_failures_back_off_then_land_in_dead_letters_without_looping(store):
    task_id = store.queue.enqueue(TaskSpec(name="poison", args={"x": 1}, max_attempts=3))
    not_before = []
    for attempt in range(1, 4):
        claimed = store.queue.claim("w", wait_seconds=5)[0]
        assert claimed.attempt == attempt
        outcome = store.queue.fail(claimed.id, claimed.token, error=f"boom {attempt}", traceback=f"tb {attempt}")
        not_before.append(store.queue.task(task_id).not_before)
    assert outcome == "dead"
    assert store.queue.claim("w", wait_seconds=0.5) == []
    letter = store.queue.dead_letter(task_id)
    assert (letter.name, letter.args, letter.attempts, letter.last_error) == ("poison", {"x": 1}, 3, "boom 3")
    assert [(a.attempt, a.error, a.traceback) for a in letter.history] == [(i, f"boom {i}", f"tb {i}") for i in (1, 2, 3)]
    replayed = store.queue.replay_dead_letter(task_id)
    assert store.queue.task(replayed).status == "queued" and store.queue.task(replayed).args == {"x": 1}
    with pytest.raises(Exception, match="already replayed"):
        store.queue.replay_dead_letter(task_id)


@hsettings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=30))
def test_backoff_grows_exponentially_within_its_jitter_band(attempts):
    queue = Queue.__new__(Queue)
    queue.settings = QueueSettings(backoff_base_seconds=1.0, backoff_max_seconds=300.0)
    ceiling = min(300.0, 2 ** (attempts - 1))
    assert ceiling / 2 <= queue.backoff_seconds(attempts) <= ceiling


def test_a_lost_lease_is_reclaimed_and_the_old_token_is_refused(store):
    store.queue.enqueue(TaskSpec(name="slow"))
    first = store.queue.claim("w1", lease_seconds=0.2)[0]
    second = store.queue.claim("w2", wait_seconds=5)[0]
    assert second.id == first.id and second.token > first.token and second.attempt == 2
    with pytest.raises(StaleLease, match="the lease was lost"):
        store.queue.complete(first.id, first.token)
    assert store.queue.heartbeat([(first.id, first.token)]) == [first.id]
    store.queue.complete(second.id, second.token)
    attempts = store.queue.task(first.id).history
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "lease_expired")]
    assert (store.queue.task(first.id).status, store.queue.task(first.id).attempts) == ("succeeded", 2)


def test_a_completion_commits_its_effects_with_it(store):
    store.states.create("model", "m1", triggered_by="t")
    store.queue.enqueue(TaskSpec(name="qc"))
    claimed = store.queue.claim("w")[0]
    store.queue.complete(claimed.id, claimed.token, result={"ok": True}, effects=Effects(
        transitions=[TransitionRequest(kind="model", entity_id="m1", trigger="dataset_uploaded", triggered_by="qc")],
        tasks=[TaskSpec(name="next")]))
    assert store.states.current("model", "m1")[0] == "QUALITY_CHECK_PENDING"
    assert store.queue.task(claimed.id).result == {"ok": True}
    assert store.queue.claim("w")[0].name == "next"


def test_a_completion_with_illegal_effects_commits_nothing(store):
    store.states.create("model", "m1", triggered_by="t")
    store.queue.enqueue(TaskSpec(name="qc"))
    claimed = store.queue.claim("w")[0]
    with pytest.raises(Exception, match="model m1 is in state REGISTERED"):
        store.queue.complete(claimed.id, claimed.token, effects=Effects(
            transitions=[TransitionRequest(kind="model", entity_id="m1", trigger="evaluation_started", triggered_by="qc")],
            tasks=[TaskSpec(name="next")]))
    assert store.queue.task(claimed.id).status == "running"
    assert store.queue.stats().by_name == {"qc": {"running": 1}}


def test_on_dead_effects_commit_with_the_dead_letter(store):
    store.states.create("model", "m1", triggered_by="t")
    for trigger in ("dataset_uploaded", "quality_check_started", "quality_check_passed", "evaluation_queued", "evaluation_started"):
        store.states.transition("model", "m1", trigger=trigger, triggered_by="t")
    failed = Effects(transitions=[TransitionRequest(kind="model", entity_id="m1", trigger="evaluation_failed",
                                                    triggered_by="queue", reason="evaluation crashed on every attempt")])
    task_id = store.queue.enqueue(TaskSpec(name="evaluate", max_attempts=1, on_dead=failed))
    claimed = store.queue.claim("w")[0]
    store.queue.fail(claimed.id, claimed.token, error="crash")
    assert store.states.current("model", "m1")[0] == "EVALUATION_FAILED"
    assert store.queue.dead_letter(task_id).last_error == "crash"


def test_on_retry_effects_commit_with_each_retried_failure_and_survive_a_restart(db):
    started_then_crashed = [
        TransitionRequest(kind="model", entity_id="m1", trigger="evaluation_started", triggered_by="queue"),
        TransitionRequest(kind="model", entity_id="m1", trigger="attempt_failed", triggered_by="queue")]
    gave_up = Effects(transitions=[TransitionRequest(kind="model", entity_id="m1", to_state="EVALUATION_FAILED",
                                                     triggered_by="queue")])
    with Store.open(db, MACHINES, settings=FAST) as store:
        store.states.create("model", "m1", triggered_by="t")
        for trigger in ("dataset_uploaded", "quality_check_started", "quality_check_passed", "evaluation_queued"):
            store.states.transition("model", "m1", trigger=trigger, triggered_by="t")
        task_id = store.queue.enqueue(TaskSpec(name="evaluate", max_attempts=3,
                                               on_retry=Effects(transitions=started_then_crashed), on_dead=gave_up))
        claimed = store.queue.claim("w")[0]
        store.queue.fail(claimed.id, claimed.token, error="CUDA out of memory")
        assert store.states.current("model", "m1")[0] == "RETRYING"
    with Store.open(db, MACHINES, settings=FAST) as store:  # the effects travel with the task
        for error in ("disk full", "killed"):
            claimed = store.queue.claim("w", wait_seconds=2)[0]
            store.queue.fail(claimed.id, claimed.token, error=error)
        history = store.states.history("model", "m1")
        assert [(h.from_state, h.to_state) for h in history[-5:]] == [
            ("EVALUATION_QUEUED", "EVALUATION_RUNNING"), ("EVALUATION_RUNNING", "RETRYING"),
            ("RETRYING", "EVALUATION_RUNNING"), ("EVALUATION_RUNNING", "RETRYING"), ("RETRYING", "EVALUATION_FAILED")]
        assert [h.metadata["error"] for h in history[-5:]] == ["CUDA out of memory"] * 2 + ["disk full"] * 2 + ["killed"]
        assert history[-1].metadata["attempt"] == 3 and history[-1].metadata["task_id"] == task_id
        assert store.queue.dead_letter(task_id).last_error == "killed"


def test_refused_on_retry_effects_do_not_stop_the_retry(store):
    store.states.create("model", "m1", triggered_by="t")
    task_id = store.queue.enqueue(TaskSpec(name="evaluate", max_attempts=2, on_retry=Effects(transitions=[
        TransitionRequest(kind="model", entity_id="m1", trigger="attempt_failed", triggered_by="queue")])))
    claimed = store.queue.claim("w")[0]
    assert store.queue.fail(claimed.id, claimed.token, error="crash") == "retrying"
    assert store.states.current("model", "m1") == ("REGISTERED", 1)
    assert store.queue.task(task_id).status == "retrying"


def test_queued_delayed_retrying_and_running_tasks_survive_a_restart(db):
    with Store.open(db, MACHINES, settings=FAST) as store:
        queued = store.queue.enqueue(TaskSpec(name="queued", args=[1, 2]))
        delayed = store.queue.enqueue(TaskSpec(name="delayed", delay_seconds=0.5))
        retrying = store.queue.enqueue(TaskSpec(name="retrying"))
        running = store.queue.enqueue(TaskSpec(name="running"))
        claimed = {c.name: c for c in store.queue.claim("w", limit=2, names=["retrying", "running"])}
        store.queue.fail(claimed["retrying"].id, claimed["retrying"].token, error="first try failed")
    with Store.open(db, MACHINES, settings=FAST) as store:
        statuses = {t: store.queue.task(t).status for t in (queued, delayed, retrying, running)}
        assert statuses == {queued: "queued", delayed: "queued", retrying: "retrying", running: "running"}
        got = set()
        deadline = time.monotonic() + 10
        while len(got) < 4 and time.monotonic() < deadline:
            for task in store.queue.claim("w2", limit=4, wait_seconds=0.5):
                got.add(task.id)
                store.queue.complete(task.id, task.token)
        assert got == {queued, delayed, retrying, running}
        assert store.queue.task(running).attempts == 2 and store.queue.task(retrying).attempts == 2


def test_release_returns_a_task_without_counting_the_attempt(store):
    task_id = store.queue.enqueue(TaskSpec(name="t"))
    claimed = store.queue.claim("w")[0]
    store.queue.release(claimed.id, claimed.token)
    again = store.queue.claim("w")[0]
    assert again.id == task_id and again.attempt == 1


def test_stats_and_cleanup(store):
    assert store.queue.stats().oldest_waiting_seconds is None  # nothing waits
    for i in range(3):
        store.queue.enqueue(TaskSpec(name="done", args=i))
    before_enqueue = time.time()
    store.queue.enqueue(TaskSpec(name="waiting"))
    after_enqueue = time.time()
    store.queue.enqueue(TaskSpec(name="later", delay_seconds=3600))  # not due: not waiting yet
    for claimed in store.queue.claim("w", names=["done"], limit=3):
        store.queue.complete(claimed.id, claimed.token)
    before_stats = time.time()
    stats = store.queue.stats()
    after_stats = time.time()
    assert stats.by_status == {"succeeded": 3, "queued": 2}
    assert stats.by_name == {"done": {"succeeded": 3}, "waiting": {"queued": 1}, "later": {"queued": 1}}
    # The age of "waiting", the oldest due task (bracketed by the clock readings around both calls).
    assert before_stats - after_enqueue - 0.001 <= stats.oldest_waiting_seconds <= after_stats - before_enqueue + 0.001
    assert stats.attempts_total == 3
    assert store.queue.cleanup(older_than_days=1) == 0
    assert store.queue.cleanup(older_than_days=0) == 3
    assert store.queue.stats().by_status == {"queued": 2}


def test_export_writes_parquet_readable_by_polars_and_duckdb(store, tmp_path):
    import duckdb
    import polars as pl

    store.states.create("model", "m1", triggered_by="t")
    store.queue.enqueue_many([TaskSpec(name="t", args=i) for i in range(3)])
    target = store.export(tmp_path / "snapshot")
    history = pl.read_parquet(target / "state_history.parquet")
    assert history.select("entity_id", "to_state").rows() == [("m1", "REGISTERED")]
    # Every table is there, row for row, and DuckDB reads it back (the files and the export's own schema);
    # views (migration 0007's monitoring views) are queries, exported as such, not data.
    live = {name: store.query(f'SELECT count(*) FROM "{name}"')[0][0]
            for (name,) in store.query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                                       "AND table_type = 'BASE TABLE'")}
    with duckdb.connect() as con:
        exported = {name: con.execute(f"SELECT count(*) FROM read_parquet('{target / name}.parquet')").fetchone()[0]
                    for name in live}
        assert exported == live and live["tasks"] == 3 and live["schema_migrations"] > 0
        con.execute(f"IMPORT DATABASE '{target}'")
        assert con.execute("SELECT entity_id, state FROM entity_states").fetchall() == [("m1", "REGISTERED")]
        assert con.execute("SELECT state, entries FROM workflow_metrics").fetchall() == [("REGISTERED", 1)]
        assert con.execute("SELECT count(*) FROM tasks WHERE status = 'queued'").fetchone()[0] == 3


def test_worker_pool_runs_tasks_retries_crashes_and_dead_letters_bad_args(store):
    registry = TaskRegistry()
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    class Args(msgspec.Struct):
        n: int

    @registry.task("square", args_type=Args)
    def square(args: Args, context) -> Completion:
        with lock:
            seen.append((args.n, context.attempt))
        if args.n == 3 and context.attempt == 1:
            raise RuntimeError("transient")
        if args.n == 4:
            raise PermanentTaskError("n=4 can never work")
        return Completion(result=args.n * args.n)

    ids = store.queue.enqueue_many([TaskSpec(name="square", args={"n": n}) for n in range(5)])
    bad = store.queue.enqueue(TaskSpec(name="square", args={"n": "five"}))
    pool = WorkerPool(store.queue, registry, workers=3, max_prefetch=2, lease_seconds=1, heartbeat_seconds=0.2).start()
    try:
        wait_for(lambda: store.queue.stats().by_status.get("succeeded") == 4 and store.queue.stats().dead_letters == 2,
                 what="4 successes and 2 dead letters")
    finally:
        pool.stop()
    assert [store.queue.task(i).result for i in ids[:4]] == [0, 1, 4, 9]
    assert store.queue.task(ids[3]).attempts == 2
    assert store.queue.task(ids[4]).attempts == 1  # permanent: no retry
    assert "do not decode" in store.queue.dead_letter(bad).last_error and "$.n" in store.queue.dead_letter(bad).last_error


def test_graceful_stop_releases_claimed_tasks_it_did_not_start(store):
    """A worker that has claimed several tasks at once and is told to stop while running the
    first finishes that one and hands the rest back untouched (queued, attempts 0)."""
    registry = TaskRegistry()
    started = threading.Event()
    ran: list[str] = []

    @registry.task("quick")
    def quick(args, context):
        pass

    @registry.task("gated")
    def gated(args, context):
        ran.append(args)
        started.set()
        # Stop the pool while this task runs (stop() joins the workers, so from another thread)
        # and finish only once the stop is seen: the rest of this claim must then go back.
        threading.Thread(target=pool.stop, daemon=True).start()
        assert pool._stopping.wait(10)

    pool = WorkerPool(store.queue, registry, workers=1, max_prefetch=4, lease_seconds=30, heartbeat_seconds=1).start()
    # Quick tasks first: they teach the pool that tasks are short, so its next claim is a batch.
    store.queue.enqueue_many([TaskSpec(name="quick", args=i) for i in range(20)])
    wait_for(lambda: store.queue.stats().by_status == {"succeeded": 20}, what="the quick tasks")
    gated_ids = store.queue.enqueue_many([TaskSpec(name="gated", args=f"g{i}") for i in range(4)])
    assert started.wait(10), "the gated task never started"
    pool.stop()
    assert ran == ["g0"]
    assert store.queue.stats().by_status == {"succeeded": 21, "queued": 3}
    for task_id in gated_ids[1:]:
        task = store.queue.task(task_id)
        assert (task.status, task.attempts) == ("queued", 0)


def test_an_operation_that_breaks_mid_way_leaves_nothing_of_its_commit_and_the_store_goes_on(store):
    """A bug in an operation (not a refusal): what it staged is not written, the in-memory
    views are reloaded from the file (the half-staged task is not handed out), the caller
    gets the error, and the next operations commit."""

    def half_then_bug(batch, now):
        store.queue._op_enqueue([store.queue.tasks.encode(TaskSpec(name="half-done"))], batch, now)
        raise RuntimeError("a bug after staging a task")

    with pytest.raises(RuntimeError, match="a bug after staging a task"):
        store.writer.submit(half_then_bug).result(timeout=30)
    assert store.query("SELECT count(*) FROM tasks WHERE name = 'half-done'") == [(0,)]
    assert store.queue.claim("w1", names=["half-done"]) == []
    task_id = store.queue.enqueue(TaskSpec(name="after"))
    assert [task.id for task in store.queue.claim("w1", names=["after"])] == [task_id]


def test_a_waiting_claim_is_woken_by_the_commit_that_makes_a_task_ready(db):
    """Its own polling is minutes apart here, so only the wake-up can answer it in time."""
    with Store.open(db, MACHINES, settings=QueueSettings(reap_interval_seconds=120.0)) as store:
        got: list = []
        waiting = threading.Thread(target=lambda: got.extend(store.queue.claim("w1", wait_seconds=600)), daemon=True)
        waiting.start()
        wait_for(lambda: store.queue.stats().by_status == {} and waiting.is_alive(), what="the claim to wait")
        task_id = store.queue.enqueue(TaskSpec(name="wake"))
        waiting.join(30)
        assert not waiting.is_alive(), "the waiting claim was not woken by the enqueue"
        assert [task.id for task in got] == [task_id]


def test_a_read_left_unfetched_by_an_operation_does_not_fail_its_group_commit(store):
    """An operation reading with fetchone() on the writer's connection (as the outbox's
    delivery mark does) and, in the same cycle, rows staged for the commit: DuckDB refuses to
    scan the staged frame while that result is unfinished unless the writer finishes it."""

    def read_then_stage(batch, now):
        assert store.writer.connection.execute("SELECT id FROM tasks").fetchone() is not None
        return store.queue._op_enqueue([store.queue.tasks.encode(TaskSpec(name="after-a-read"))], batch, now)

    store.queue.enqueue_many([TaskSpec(name="first"), TaskSpec(name="second")])
    store.writer.submit(read_then_stage).result(timeout=30)
    assert store.query("SELECT count(*) FROM tasks WHERE name = 'after-a-read'") == [(1,)]

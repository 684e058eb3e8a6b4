"""Tasks that wait for a prerequisite, and tasks a user's mistake ends: real DuckDB files, real
worker threads, the real control plane's socket."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dropwire.functions.evaluation.states import MACHINES
from dropwire.functions.platform.tasks import Completion, NotYet, Refused, TaskRegistry
from dropwire.local_emulator.control import ControlClient, ControlServer
from dropwire.local_emulator.workers import WorkerPool
from dropwire.storage.records import Effects, InvocationRecord, TaskSpec, TransitionRequest, WaitFor
from dropwire.storage.settings import QueueSettings
from dropwire.storage.store import Store
from tests.conftest import wait_for

# Re-checks so slow that only a commit of the prerequisite can run a waiting task in time.
SLOW_RECHECKS = QueueSettings(lease_seconds=2.0, heartbeat_seconds=0.2, backoff_base_seconds=60.0,
                              backoff_max_seconds=60.0, reap_interval_seconds=0.05)
MISSING = "use-cases/u/config.json: use_case 'u' does not exist; upload use-cases/u/use-case.json first"


def _record(outcome: str, error: str | None) -> InvocationRecord:
    return InvocationRecord(function="f", source="upload", event={"key": "use-cases/u/config.json"},
                            started_at=time.time(), duration_ms=1.0, outcome=outcome, error=error)


def _invocations(store: Store, task_id: int) -> list[tuple[int, str, str]]:
    return store.query("SELECT attempt, outcome, error FROM invocations WHERE task_id = ? ORDER BY started_at",
                       [task_id])


def test_a_waiting_task_runs_again_as_soon_as_its_prerequisite_commits(tmp_path):
    with Store.open(tmp_path / "q.duckdb", MACHINES, settings=SLOW_RECHECKS) as store:
        task_id = store.queue.enqueue(TaskSpec(name="config", max_attempts=1))
        claimed, = store.queue.claim("w")
        assert store.queue.wait_for(claimed.id, claimed.token, error=MISSING, waits_for=WaitFor(kind="use_case", entity_id="u"),
                                    invocation=_record("waiting", MISSING)) == "waiting"
        # Visible as waiting, with why; the attempt is not counted (max_attempts 1 still holds one).
        status = store.queue.task(task_id)
        assert (status.status, status.last_error, status.attempts) == ("waiting", MISSING, 0)
        assert store.queue.stats().by_status == {"waiting": 1}
        assert store.queue.claim("w", wait_seconds=0.5) == []  # its re-check is 30-60 s away
        # Another entity's change does not wake it; its own does.
        store.states.create("use_case", "other", triggered_by="test")
        assert store.queue.claim("w", wait_seconds=0.5) == []
        store.states.create("use_case", "u", triggered_by="test")
        again, = store.queue.claim("w", wait_seconds=3)
        assert (again.id, again.attempt) == (task_id, 1)
        store.queue.complete(again.id, again.token, invocation=_record("succeeded", None))
        assert [outcome for _, outcome, _ in _invocations(store, task_id)] == ["waiting", "succeeded"]
        assert store.queue.dead_letters() == []


def test_a_prerequisite_that_committed_while_the_handler_ran_is_not_missed(tmp_path):
    with Store.open(tmp_path / "q.duckdb", MACHINES, settings=SLOW_RECHECKS) as store:
        store.queue.enqueue(TaskSpec(name="config"))
        claimed, = store.queue.claim("w")
        # The handler saw no use case (version 0); it was created before its report came in.
        store.states.create("use_case", "u", triggered_by="test")
        store.queue.wait_for(claimed.id, claimed.token, error=MISSING, waits_for=WaitFor(kind="use_case", entity_id="u"))
        assert store.queue.claim("w", wait_seconds=3)[0].id == claimed.id


def test_past_its_bound_a_waiting_task_is_refused_with_the_same_message_and_no_dead_letter(tmp_path):
    bounded = QueueSettings(lease_seconds=2.0, heartbeat_seconds=0.2, backoff_base_seconds=60.0,
                            backoff_max_seconds=60.0, reap_interval_seconds=0.05, wait_max_seconds=0.5)
    with Store.open(tmp_path / "q.duckdb", MACHINES, settings=bounded) as store:
        task_id = store.queue.enqueue(TaskSpec(name="config", on_dead=Effects(transitions=[TransitionRequest(
            kind="use_case", entity_id="nowhere", trigger="cancel", triggered_by="test")])))
        waits = WaitFor(kind="use_case", entity_id="u")
        claimed, = store.queue.claim("w")
        assert store.queue.wait_for(claimed.id, claimed.token, error=MISSING, waits_for=waits,
                                    invocation=_record("waiting", MISSING)) == "waiting"
        # Its last re-check comes at the bound, not after a whole backoff.
        claimed, = store.queue.claim("w", wait_seconds=3)
        assert store.queue.wait_for(claimed.id, claimed.token, error=MISSING, waits_for=waits,
                                    invocation=_record("waiting", MISSING)) == "refused"
        status = store.queue.task(task_id)
        assert status.status == "refused" and status.last_error.startswith(MISSING + " (waited ")
        assert status.finished_at is not None
        assert store.queue.dead_letters() == [] and store.queue.stats().dead_letters == 0
        (_, first, _), (_, last, error) = _invocations(store, task_id)
        assert (first, last, error) == ("waiting", "refused", status.last_error)


def test_a_refusal_is_final_commits_no_failure_effects_and_is_no_dead_letter(tmp_path):
    with Store.open(tmp_path / "q.duckdb", MACHINES) as store:
        store.states.create("use_case", "u", triggered_by="test")
        task_id = store.queue.enqueue(TaskSpec(name="retry", max_attempts=3, on_dead=Effects(transitions=[
            TransitionRequest(kind="use_case", entity_id="u", trigger="cancel", triggered_by="test")])))
        claimed, = store.queue.claim("w")
        message = "evaluation-retry: model 'u/m' is REGISTERED; this step runs only in EVALUATION_FAILED"
        assert store.queue.refuse(claimed.id, claimed.token, error=message, invocation=_record("refused", message)) == "refused"
        assert store.queue.task(task_id).status == "refused" and store.queue.task(task_id).last_error == message
        assert store.queue.claim("w", wait_seconds=0.3) == []
        assert store.queue.dead_letters() == [] and store.states.current("use_case", "u")[0] == "TEMPLATE_GENERATION"
        assert _invocations(store, task_id) == [(1, "refused", message)]
        assert store.queue.cleanup(0) == 1  # a refused task is finished: cleanup takes it


def test_a_waiting_task_survives_a_restart_and_is_rechecked(tmp_path):
    path = tmp_path / "q.duckdb"
    quick = QueueSettings(lease_seconds=2.0, heartbeat_seconds=0.2, backoff_base_seconds=0.2, backoff_max_seconds=0.2,
                          reap_interval_seconds=0.05)
    with Store.open(path, MACHINES, settings=quick) as store:
        task_id = store.queue.enqueue(TaskSpec(name="config"))
        claimed, = store.queue.claim("w")
        store.queue.wait_for(claimed.id, claimed.token, error=MISSING, waits_for=WaitFor(kind="use_case", entity_id="u"))
    with Store.open(path, MACHINES, settings=quick) as store:
        assert store.queue.task(task_id).status == "waiting"
        assert store.queue.claim("w", wait_seconds=3)[0].id == task_id


@pytest.mark.slow  # a real process or server: not in the fast tier
def test_workers_park_and_refuse_through_the_control_plane(tmp_path):
    """NotYet and Refused raised by a task, run by a worker pool in another 'process' (the
    control plane's socket): one waits and runs once its entity exists, one is refused."""
    registry = TaskRegistry()
    ran: list[str] = []

    @registry.task("needs-u")
    def needs_u(args, context):
        try:
            client.states.current("use_case", "u")
        except Exception:
            raise NotYet(MISSING, kind="use_case", entity_id="u") from None
        ran.append("needs-u")
        return Completion(result="done")

    @registry.task("mistake")
    def mistake(args, context):
        raise Refused("a retry of a model that has not failed")

    with Store.open(tmp_path / "q.duckdb", MACHINES, settings=SLOW_RECHECKS) as store:
        server = ControlServer(store, tmp_path / "control.sock", "key").start()
        client = ControlClient(tmp_path / "control.sock", "key")
        pool = WorkerPool(client.queue, registry, workers=2, max_prefetch=4, lease_seconds=2.0, heartbeat_seconds=0.2,
                          claim_wait_seconds=0.2).start()
        try:
            waiting = store.queue.enqueue(TaskSpec(name="needs-u"))
            refused = store.queue.enqueue(TaskSpec(name="mistake", max_attempts=5))
            wait_for(lambda: store.queue.task(waiting).status == "waiting" and store.queue.task(refused).status == "refused",
                     what="one task to wait and one to be refused")
            assert store.queue.task(refused).attempts == 1  # refused at once, not retried
            store.states.create("use_case", "u", triggered_by="test")
            wait_for(lambda: store.queue.task(waiting).status == "succeeded", timeout=5,
                     what="the waiting task to run once use_case u exists")
            assert ran == ["needs-u"] and store.queue.dead_letters() == []
        finally:
            pool.stop()
            client.close()
            server.close()


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(["a", "b", "c", "d"]), early=st.sets(st.sampled_from(["a", "b", "c", "d"])))
def test_whatever_order_entities_appear_in_every_waiting_task_runs_once_each_exists(tmp_path_factory, order, early):
    """Tasks waiting for entities that appear in any order (some before the task even
    reported its wait): each runs again once its own entity exists, never for another's."""
    path = tmp_path_factory.mktemp("waits") / "q.duckdb"
    with Store.open(path, MACHINES, settings=SLOW_RECHECKS) as store:
        ids = {name: store.queue.enqueue(TaskSpec(name="t", args=name)) for name in order}
        claimed = {c.id: c for c in store.queue.claim("w", limit=len(ids))}
        for name in early:
            store.states.create("use_case", name, triggered_by="test")
        for name, task_id in ids.items():
            store.queue.wait_for(task_id, claimed[task_id].token, error=f"use_case {name!r} does not exist",
                                 waits_for=WaitFor(kind="use_case", entity_id=name))
        due = {c.args.decode().strip('"') for c in store.queue.claim("w", limit=len(ids), wait_seconds=1)}
        assert due == set(early)
        for name in order:
            if name not in early:
                store.states.create("use_case", name, triggered_by="test")
                claimed_now = store.queue.claim("w", limit=len(ids), wait_seconds=3)
                assert [c.id for c in claimed_now] == [ids[name]]

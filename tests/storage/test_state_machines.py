"""The engine, the seed's machines, optimistic concurrency and history, on real DuckDB files."""

from __future__ import annotations

import itertools
import threading
from enum import StrEnum

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropwire.functions.evaluation.states import MACHINES, MODEL_EVALUATION, USE_CASE
from dropwire.functions.evaluation.states import ModelEvaluationState as M
from dropwire.functions.evaluation.states import UseCaseState as U
from dropwire.functions.kit.errors import Conflict, IllegalTransition, NotFound, VersionConflict
from dropwire.storage import consistency
from dropwire.storage.records import Effects, EntityCreate, TaskSpec, TransitionRequest
from dropwire.storage.state_machine import StateMachine, Transition, UnknownState
from dropwire.storage.store import Store
from tests.storage.helpers import CYCLE


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "state.duckdb", [*MACHINES, CYCLE]) as opened:
        yield opened


def walk(store: Store, kind: str, entity_id: str, *triggers: str) -> None:
    for trigger in triggers:
        store.states.transition(kind, entity_id, trigger=trigger, triggered_by="test")


def test_the_seed_flow_with_a_re_upload_after_a_failed_quality_check(store):
    store.states.create("model", "m2", triggered_by="team")
    walk(store, "model", "m2", "dataset_uploaded", "quality_check_started", "quality_check_failed", "await_data_fix")
    store.states.transition("model", "m2", trigger="dataset_uploaded", triggered_by="team@example.com", reason="Dataset uploaded",
                            metadata={"file_uploaded": "dataset_fixed.xlsx"})
    walk(store, "model", "m2", "quality_check_started", "quality_check_passed", "evaluation_queued",
         "evaluation_started", "evaluation_failed", "retry", "evaluation_started", "evaluation_succeeded")
    snapshot = store.states.snapshot("model", "m2")
    assert snapshot.state == M.EVALUATION_COMPLETED
    assert [h.seq for h in snapshot.history] == list(range(1, 15))
    refix = snapshot.history[5]
    assert (refix.from_state, refix.to_state, refix.triggered_by, refix.metadata) == (
        M.AWAITING_DATA_FIX, M.QUALITY_CHECK_PENDING, "team@example.com", {"file_uploaded": "dataset_fixed.xlsx"})


def test_use_case_config_retry_after_invalid(store):
    store.states.create("use_case", "uc", triggered_by="team")
    walk(store, "use_case", "uc", "template_sent", "await_config", "config_uploaded", "validation_started",
         "config_invalid", "config_uploaded", "validation_started", "config_valid")
    assert store.states.snapshot("use_case", "uc").state == U.CONFIG_VALIDATED


def test_an_illegal_transition_names_entity_state_and_allowed_moves_and_changes_nothing(store):
    store.states.create("model", "m1", triggered_by="team")
    with pytest.raises(IllegalTransition) as caught:
        store.states.transition("model", "m1", trigger="evaluation_succeeded", triggered_by="test")
    message = caught.value.message
    assert "model m1 is in state REGISTERED" in message
    assert "dataset_uploaded -> QUALITY_CHECK_PENDING" in message
    snapshot = store.states.snapshot("model", "m1")
    assert (snapshot.state, snapshot.version, len(snapshot.history)) == (M.REGISTERED, 1, 1)


def test_a_state_that_does_not_exist_is_refused(store):
    store.states.create("model", "m1", triggered_by="team")
    with pytest.raises(UnknownState, match="there is no state 'DONE'"):
        store.states.transition("model", "m1", to_state="DONE", triggered_by="test")


def test_unknown_entities_and_kinds_get_clear_errors(store):
    with pytest.raises(NotFound, match="model nope does not exist"):
        store.states.transition("model", "nope", trigger="dataset_uploaded", triggered_by="test")
    with pytest.raises(NotFound, match="no state machine for entity kind 'invoice'"):
        store.states.create("invoice", "i1", triggered_by="test")
    store.states.create("model", "dup", triggered_by="test")
    with pytest.raises(Conflict, match="model dup already exists"):
        store.states.create("model", "dup", triggered_by="test")


def test_guards_resume_a_suspended_model_only_to_where_it_was(store):
    store.states.create("model", "m1", triggered_by="team")
    walk(store, "model", "m1", "dataset_uploaded", "suspend")
    with pytest.raises(IllegalTransition, match="blocked by its guard"):
        store.states.transition("model", "m1", trigger="resume", to_state=M.EVALUATION_QUEUED, triggered_by="ops")
    store.states.transition("model", "m1", trigger="resume", triggered_by="ops")
    assert store.states.snapshot("model", "m1").state == M.QUALITY_CHECK_PENDING


def test_a_crashed_phase_reruns_as_the_same_phase(store):
    store.states.create("model", "m1", triggered_by="team")
    walk(store, "model", "m1", "dataset_uploaded", "quality_check_started", "attempt_failed")
    with pytest.raises(IllegalTransition):
        store.states.transition("model", "m1", trigger="evaluation_started", triggered_by="worker")
    walk(store, "model", "m1", "quality_check_started")
    assert store.states.snapshot("model", "m1").state == M.QUALITY_CHECK_RUNNING


def test_a_stale_expected_version_is_a_conflict_that_changes_nothing(store):
    store.states.create("model", "m1", triggered_by="team")
    store.states.transition("model", "m1", trigger="dataset_uploaded", expected_version=1, triggered_by="a")
    with pytest.raises(VersionConflict, match="expected version 1, it is at version 2"):
        store.states.transition("model", "m1", trigger="quality_check_started", expected_version=1, triggered_by="b")
    assert store.states.snapshot("model", "m1").version == 2


def test_an_illegal_part_refuses_the_whole_outbox(store):
    store.states.create("model", "m1", triggered_by="team")
    store.states.create("model", "m2", triggered_by="team")
    with pytest.raises(IllegalTransition):
        store.states.apply(Effects(
            transitions=[TransitionRequest(kind="model", entity_id="m1", trigger="dataset_uploaded", triggered_by="t"),
                         TransitionRequest(kind="model", entity_id="m2", trigger="evaluation_started", triggered_by="t")],
            tasks=[TaskSpec(name="run_quality_check", args={"model": "m1"})],
        ))
    assert store.states.snapshot("model", "m1").state == M.REGISTERED
    assert store.queue.stats().by_status == {}


def test_sixteen_threads_racing_on_one_entity_leave_one_valid_path(store):
    store.states.create("cycle", "hot", triggered_by="test")
    per_thread, conflicts = 10, []

    def racer(name: str) -> None:
        done = 0
        while done < per_thread:
            _, version = store.states.current("cycle", "hot")
            try:
                store.states.transition("cycle", "hot", trigger="next", expected_version=version, triggered_by=name)
                done += 1
            except VersionConflict:
                conflicts.append(name)

    threads = [threading.Thread(target=racer, args=(f"t{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snapshot = store.states.snapshot("cycle", "hot")
    assert snapshot.version == 1 + 16 * per_thread
    assert [h.seq for h in snapshot.history] == list(range(1, snapshot.version + 1))
    assert all(h.from_state == prev.to_state for prev, h in zip(snapshot.history, snapshot.history[1:], strict=False))
    assert conflicts, "16 racing threads should have produced at least one version conflict"
    assert consistency.check(store.writer.cursor(), [*MACHINES, CYCLE]) == []


ENTITY_NUMBERS = itertools.count()
MODEL_TRIGGERS = sorted({t.trigger for t in MODEL_EVALUATION.transitions})
USE_CASE_TRIGGERS = sorted({t.trigger for t in USE_CASE.transitions})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_trigger_sequences_never_leave_a_legal_path(store, data):
    """Whatever triggers arrive, legal or not, the history is a legal path of the machine and
    the current state equals its last row."""
    for machine, triggers in ((MODEL_EVALUATION, MODEL_TRIGGERS), (USE_CASE, USE_CASE_TRIGGERS)):
        entity = f"walk-{next(ENTITY_NUMBERS)}"
        store.states.create(machine.kind, entity, triggered_by="hypothesis")
        for trigger in data.draw(st.lists(st.sampled_from(triggers), max_size=25)):
            before = store.states.snapshot(machine.kind, entity)
            try:
                store.states.transition(machine.kind, entity, trigger=trigger, triggered_by="hypothesis")
            except IllegalTransition:
                assert store.states.snapshot(machine.kind, entity) == before
        snapshot = store.states.snapshot(machine.kind, entity)
        assert snapshot.state == snapshot.history[-1].to_state
        assert snapshot.version == len(snapshot.history)
        for prev, step in zip(snapshot.history, snapshot.history[1:], strict=False):
            assert step.from_state == prev.to_state
            assert any(t.dest == step.to_state and t.trigger == step.trigger for t in machine.allowed(prev.to_state))
    assert consistency.check(store.writer.cursor(), [*MACHINES, CYCLE]) == []


def test_an_entity_created_and_moved_on_in_one_operation_has_its_current_state(store):
    store.states.apply(Effects(
        creates=[EntityCreate(kind="model", entity_id="m1", triggered_by="t")],
        transitions=[TransitionRequest(kind="model", entity_id="m1", trigger="dataset_uploaded", triggered_by="t")],
    ))
    assert store.states.current("model", "m1") == ("QUALITY_CHECK_PENDING", 2)
    assert consistency.check(store.writer.cursor(), [*MACHINES, CYCLE]) == []



def test_an_existing_entity_moved_by_many_pipelined_operations_keeps_every_move_after_a_restart(tmp_path):
    """Pipelined operations share group commits, so one batch holds several images of the same
    existing row: it must be updated (not inserted again) with its latest image."""
    path = tmp_path / "pipelined.duckdb"
    with Store.open(path, [CYCLE]) as store:
        store.states.create("cycle", "c1", triggered_by="t")
        futures = [store.states.apply_async(Effects(transitions=[
            TransitionRequest(kind="cycle", entity_id="c1", trigger="next", triggered_by="t")])) for _ in range(30)]
        for future in futures:
            future.result()
    with Store.open(path, [CYCLE]) as store:  # what was committed, not the in-memory view
        assert store.states.current("cycle", "c1") == ("A", 31)  # 30 moves round A -> B -> C -> A
        assert store.query("SELECT count(*) FROM entity_states")[0][0] == 1
        assert [h.seq for h in store.states.history("cycle", "c1")] == list(range(1, 32))
        assert consistency.check(store.writer.cursor(), [CYCLE]) == []


class Fork(StrEnum):
    S = "S"
    X = "X"
    Y = "Y"


# One trigger, two destinations: only naming the target state picks one.
FORK = StateMachine("fork", Fork, "S", (Transition("S", "X", "go"), Transition("S", "Y", "go")))


def test_a_trigger_with_two_destinations_needs_the_target_and_every_refusal_says_what_was_asked(tmp_path):
    with Store.open(tmp_path / "fork.duckdb", [FORK]) as store:
        for entity in ("f1", "f2", "f3"):
            store.states.create("fork", entity, triggered_by="test")
        allowed = "Allowed next: go -> X, go -> Y"
        with pytest.raises(IllegalTransition) as ambiguous:
            store.states.transition("fork", "f1", trigger="go", triggered_by="test")
        assert ambiguous.value.message == f"fork f1 is in state S: trigger 'go' is ambiguous: name the target state too. {allowed}"
        with pytest.raises(IllegalTransition) as unknown_trigger:
            store.states.transition("fork", "f1", trigger="stop", triggered_by="test")
        assert unknown_trigger.value.message == f"fork f1 is in state S: trigger 'stop' is not allowed. {allowed}"
        with pytest.raises(IllegalTransition) as no_move:
            store.states.transition("fork", "f1", to_state="S", triggered_by="test")
        assert no_move.value.message == f"fork f1 is in state S: a move to S is not allowed. {allowed}"
        store.states.transition("fork", "f1", trigger="go", to_state="Y", triggered_by="test")
        store.states.transition("fork", "f2", trigger="go", to_state="X", triggered_by="test")
        store.states.transition("fork", "f3", to_state="Y", triggered_by="test")
        assert [store.states.current("fork", e)[0] for e in ("f1", "f2", "f3")] == ["Y", "X", "Y"]
        with pytest.raises(IllegalTransition, match=r"fork f1 is in state Y: trigger 'go' is not allowed. Allowed next: none \(terminal state\)"):
            store.states.transition("fork", "f1", trigger="go", triggered_by="test")

"""Machines and task registries the storage tests drive, including the ones real
subprocesses (`dropwire control`, `dropwire worker`) load with --tasks: a task whose effect
must commit exactly once, and one that crashes on chosen attempts (retries, dead letters)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import msgspec

from dropwire.functions.platform.tasks import Completion, TaskContext, TaskRegistry
from dropwire.storage.records import Effects, TransitionRequest
from dropwire.storage.state_machine import StateMachine, Transition


class Cycle(StrEnum):
    A = "A"
    B = "B"
    C = "C"


# A machine that never ends, for races and long random walks.
CYCLE = StateMachine("cycle", Cycle, "A", (
    Transition("A", "B", "next"), Transition("B", "C", "next"), Transition("C", "A", "next"),
    Transition("B", "A", "back"),
))


class EffectJob(msgspec.Struct, frozen=True):
    model_id: str
    marker_dir: str
    first_attempt_seconds: float


registry = TaskRegistry()
no_tasks = TaskRegistry()


@registry.task("effect_once", args_type=EffectJob)
def effect_once(job: EffectJob, context: TaskContext) -> Completion:
    """Marks each attempt's start and end on disk; its effect is a transition that is legal
    exactly once, so a second commit of it could not go unnoticed."""
    markers = Path(job.marker_dir)
    (markers / f"started-{context.attempt}-{context.worker}").touch()
    if context.attempt == 1:
        import time

        time.sleep(job.first_attempt_seconds)
    (markers / f"finished-{context.attempt}-{context.worker}").touch()
    return Completion(result={"attempt": context.attempt}, effects=Effects(transitions=[
        TransitionRequest(kind="model", entity_id=job.model_id, trigger="dataset_uploaded",
                          triggered_by=f"task:{context.task_id}", reason=f"attempt {context.attempt}")]))


class FlakyJob(msgspec.Struct, frozen=True):
    model_id: str
    #: How many attempts crash before one succeeds.
    crash_attempts: int


@registry.task("flaky", args_type=FlakyJob)
def flaky(job: FlakyJob, context: TaskContext) -> Completion:
    if context.attempt <= job.crash_attempts:
        raise ConnectionError(f"metrics store unreachable (attempt {context.attempt} of {job.model_id})")
    return Completion(result={"attempt": context.attempt}, effects=Effects(transitions=[
        TransitionRequest(kind="model", entity_id=job.model_id, trigger="dataset_uploaded",
                          triggered_by=f"task:{context.task_id}", reason=f"attempt {context.attempt} worked")]))

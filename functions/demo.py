"""Small in-line tasks that `dropwire control` and `dropwire worker` run by default (`--tasks`
names another registry): a model's quality check and evaluation on a handful of records,
enough to watch the control plane, remote workers, the outbox, retries and dead letters on
the real store. The product's evaluation workflow is functions/evaluation/handlers.py."""

from __future__ import annotations

import msgspec

from dropwire.functions.platform.tasks import Completion, TaskContext, TaskRegistry
from dropwire.storage.records import Effects, TaskSpec, TransitionRequest

registry = TaskRegistry()


class Record(msgspec.Struct, frozen=True):
    truth: str
    prediction: str | None


class ModelJob(msgspec.Struct, frozen=True, kw_only=True):
    model_id: str
    records: list[Record]
    #: How many attempts of the evaluation crash before one succeeds (to show retries).
    crash_attempts: int = 0


def _move(model_id: str, *steps: tuple[str, str], **metadata: object) -> list[TransitionRequest]:
    return [TransitionRequest(kind="model", entity_id=model_id, trigger=trigger, triggered_by="demo.worker",
                              reason=reason, metadata=dict(metadata)) for trigger, reason in steps]


def evaluation_task(job: ModelJob) -> TaskSpec:
    failed = Effects(transitions=_move(job.model_id, ("evaluation_failed", "evaluation crashed on every attempt")))
    return TaskSpec(name="demo.evaluate", args=job, max_attempts=3, on_dead=failed)


@registry.task("demo.quality_check", args_type=ModelJob)
def quality_check(job: ModelJob, context: TaskContext) -> Completion:
    missing = [i + 1 for i, r in enumerate(job.records) if r.prediction is None]
    started = ("quality_check_started", f"quality check attempt {context.attempt}")
    if missing:
        moves = _move(job.model_id, started,
                      ("quality_check_failed", f"{len(missing)} record(s) without a prediction: rows {missing}"),
                      ("await_data_fix", "waiting for a corrected dataset"), issues_count=len(missing))
        return Completion(result={"passed": False, "missing_rows": missing}, effects=Effects(transitions=moves))
    moves = _move(job.model_id, started, ("quality_check_passed", f"{len(job.records)} records, none missing"),
                  ("evaluation_queued", "quality check passed"), issues_count=0)
    return Completion(result={"passed": True}, effects=Effects(transitions=moves, tasks=[evaluation_task(job)]))


@registry.task("demo.evaluate", args_type=ModelJob)
def evaluate(job: ModelJob, context: TaskContext) -> Completion:
    if context.attempt <= job.crash_attempts:
        raise ConnectionError(f"metrics store unreachable (a crash the demo injects on attempt {context.attempt})")
    correct = sum(r.truth == r.prediction for r in job.records)
    accuracy = correct / len(job.records)
    moves = _move(job.model_id, ("evaluation_started", f"attempt {context.attempt}"),
                  ("evaluation_succeeded", f"accuracy {accuracy:.0%}"), accuracy=accuracy)
    return Completion(result={"accuracy": accuracy, "correct": correct, "records": len(job.records)},
                      effects=Effects(transitions=moves))

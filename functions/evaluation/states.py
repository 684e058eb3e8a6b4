"""The domain's state machines: a use case's lifecycle and each model's evaluation lifecycle
(seed 1), with the workflow states of seed 3 where they belong: RETRYING after a crashed
attempt, QUOTA_EXCEEDED when an external quota stops evaluation, PARTIALLY_PROCESSED when
only part of a dataset could be evaluated, SUSPENDED for manual intervention."""

from __future__ import annotations

from enum import StrEnum

from dropwire.storage.state_machine import GuardContext, StateMachine, Transition


class UseCaseState(StrEnum):
    TEMPLATE_GENERATION = "TEMPLATE_GENERATION"
    TEMPLATE_SENT = "TEMPLATE_SENT"
    AWAITING_CONFIG = "AWAITING_CONFIG"
    CONFIG_RECEIVED = "CONFIG_RECEIVED"
    CONFIG_VALIDATION_RUNNING = "CONFIG_VALIDATION_RUNNING"
    CONFIG_VALIDATED = "CONFIG_VALIDATED"
    CONFIG_INVALID = "CONFIG_INVALID"
    QUALITY_CHECK_RUNNING = "QUALITY_CHECK_RUNNING"
    QUALITY_CHECK_PASSED = "QUALITY_CHECK_PASSED"
    QUALITY_CHECK_FAILED = "QUALITY_CHECK_FAILED"
    SUSPENDED = "SUSPENDED"
    ARCHIVED = "ARCHIVED"
    CANCELLED = "CANCELLED"


class ModelEvaluationState(StrEnum):
    REGISTERED = "REGISTERED"
    QUALITY_CHECK_PENDING = "QUALITY_CHECK_PENDING"
    QUALITY_CHECK_RUNNING = "QUALITY_CHECK_RUNNING"
    QUALITY_CHECK_PASSED = "QUALITY_CHECK_PASSED"
    QUALITY_CHECK_FAILED = "QUALITY_CHECK_FAILED"
    AWAITING_DATA_FIX = "AWAITING_DATA_FIX"
    EVALUATION_QUEUED = "EVALUATION_QUEUED"
    EVALUATION_RUNNING = "EVALUATION_RUNNING"
    EVALUATION_COMPLETED = "EVALUATION_COMPLETED"
    EVALUATION_FAILED = "EVALUATION_FAILED"
    RETRYING = "RETRYING"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    PARTIALLY_PROCESSED = "PARTIALLY_PROCESSED"
    SUSPENDED = "SUSPENDED"
    ARCHIVED = "ARCHIVED"


def _came_from(state: str):
    def guard(context: GuardContext) -> bool:
        return context.previous_state == state

    return guard


def _suspend_and_resume(states: type[StrEnum], resumable: list[str]) -> list[Transition]:
    """SUSPENDED is entered from any working state and resumes only to the state it left."""
    out = []
    suspended = states["SUSPENDED"]
    for state in resumable:
        out.append(Transition(state, suspended, "suspend"))
        out.append(Transition(suspended, state, "resume", guard=_came_from(state),
                              guard_description=f"resume goes back to the state it was suspended from, here only if that was {state}"))
    return out


U = UseCaseState
USE_CASE = StateMachine(
    kind="use_case",
    states=UseCaseState,
    initial=U.TEMPLATE_GENERATION,
    transitions=tuple(
        [
            Transition(U.TEMPLATE_GENERATION, U.TEMPLATE_SENT, "template_sent"),
            Transition(U.TEMPLATE_SENT, U.AWAITING_CONFIG, "await_config"),
            Transition(U.AWAITING_CONFIG, U.CONFIG_RECEIVED, "config_uploaded"),
            Transition(U.CONFIG_RECEIVED, U.CONFIG_VALIDATION_RUNNING, "validation_started"),
            Transition(U.CONFIG_VALIDATION_RUNNING, U.CONFIG_VALIDATED, "config_valid"),
            Transition(U.CONFIG_VALIDATION_RUNNING, U.CONFIG_INVALID, "config_invalid"),
            # A corrected config may be uploaded after a failed validation, or to replace a valid one.
            Transition(U.CONFIG_INVALID, U.CONFIG_RECEIVED, "config_uploaded"),
            Transition(U.CONFIG_VALIDATED, U.CONFIG_RECEIVED, "config_uploaded"),
            # The use case's own quality-check phase: running while its models' datasets are checked.
            Transition(U.CONFIG_VALIDATED, U.QUALITY_CHECK_RUNNING, "quality_check_started"),
            Transition(U.QUALITY_CHECK_RUNNING, U.QUALITY_CHECK_PASSED, "quality_check_passed"),
            Transition(U.QUALITY_CHECK_RUNNING, U.QUALITY_CHECK_FAILED, "quality_check_failed"),
            Transition(U.QUALITY_CHECK_FAILED, U.QUALITY_CHECK_RUNNING, "quality_check_started"),
            Transition(U.QUALITY_CHECK_PASSED, U.QUALITY_CHECK_RUNNING, "quality_check_started"),
        ]
        + _suspend_and_resume(UseCaseState, [U.AWAITING_CONFIG, U.CONFIG_VALIDATED, U.QUALITY_CHECK_RUNNING,
                                             U.QUALITY_CHECK_PASSED, U.QUALITY_CHECK_FAILED])
        + [Transition(s, U.ARCHIVED, "archive") for s in UseCaseState if s not in (U.ARCHIVED, U.CANCELLED)]
        + [Transition(s, U.CANCELLED, "cancel") for s in UseCaseState if s not in (U.ARCHIVED, U.CANCELLED)]
    ),
)

M = ModelEvaluationState
MODEL_EVALUATION = StateMachine(
    kind="model",
    states=ModelEvaluationState,
    initial=M.REGISTERED,
    transitions=tuple(
        [
            Transition(M.REGISTERED, M.QUALITY_CHECK_PENDING, "dataset_uploaded"),
            Transition(M.QUALITY_CHECK_PENDING, M.QUALITY_CHECK_RUNNING, "quality_check_started"),
            Transition(M.QUALITY_CHECK_RUNNING, M.QUALITY_CHECK_PASSED, "quality_check_passed"),
            Transition(M.QUALITY_CHECK_RUNNING, M.QUALITY_CHECK_FAILED, "quality_check_failed"),
            Transition(M.QUALITY_CHECK_FAILED, M.AWAITING_DATA_FIX, "await_data_fix"),
            # A fixed dataset starts over; so does a new dataset for an evaluated model.
            Transition(M.AWAITING_DATA_FIX, M.QUALITY_CHECK_PENDING, "dataset_uploaded"),
            Transition(M.EVALUATION_COMPLETED, M.QUALITY_CHECK_PENDING, "dataset_uploaded"),
            Transition(M.QUALITY_CHECK_PASSED, M.EVALUATION_QUEUED, "evaluation_queued"),
            Transition(M.EVALUATION_QUEUED, M.EVALUATION_RUNNING, "evaluation_started"),
            Transition(M.EVALUATION_RUNNING, M.EVALUATION_COMPLETED, "evaluation_succeeded"),
            Transition(M.EVALUATION_RUNNING, M.EVALUATION_FAILED, "evaluation_failed"),
            # A crash (not a data problem) in either phase waits in RETRYING, then reruns that
            # same phase, or fails for good once its retries are spent.
            Transition(M.QUALITY_CHECK_RUNNING, M.RETRYING, "attempt_failed"),
            Transition(M.EVALUATION_RUNNING, M.RETRYING, "attempt_failed"),
            Transition(M.RETRYING, M.QUALITY_CHECK_RUNNING, "quality_check_started", guard=_came_from(M.QUALITY_CHECK_RUNNING),
                       guard_description="only a quality check that crashed reruns as a quality check"),
            Transition(M.RETRYING, M.EVALUATION_RUNNING, "evaluation_started", guard=_came_from(M.EVALUATION_RUNNING),
                       guard_description="only an evaluation that crashed reruns as an evaluation"),
            Transition(M.RETRYING, M.EVALUATION_FAILED, "retries_exhausted"),
            Transition(M.QUALITY_CHECK_RUNNING, M.EVALUATION_FAILED, "evaluation_failed"),
            # Retry from EVALUATION_FAILED goes back through the queue (seed: "retry from EVALUATION_QUEUED").
            Transition(M.EVALUATION_FAILED, M.EVALUATION_QUEUED, "retry"),
            Transition(M.EVALUATION_FAILED, M.QUALITY_CHECK_PENDING, "dataset_uploaded"),
            Transition(M.EVALUATION_RUNNING, M.QUOTA_EXCEEDED, "quota_exceeded"),
            Transition(M.QUOTA_EXCEEDED, M.EVALUATION_QUEUED, "quota_reset"),
            Transition(M.EVALUATION_RUNNING, M.PARTIALLY_PROCESSED, "partially_processed"),
            Transition(M.PARTIALLY_PROCESSED, M.EVALUATION_QUEUED, "retry"),
            Transition(M.PARTIALLY_PROCESSED, M.EVALUATION_COMPLETED, "accept_partial"),
        ]
        + _suspend_and_resume(ModelEvaluationState, [M.QUALITY_CHECK_PENDING, M.AWAITING_DATA_FIX, M.EVALUATION_QUEUED,
                                                     M.EVALUATION_FAILED, M.QUOTA_EXCEEDED, M.PARTIALLY_PROCESSED])
        + [Transition(s, M.ARCHIVED, "archive") for s in ModelEvaluationState if s != M.ARCHIVED]
    ),
)

MACHINES = (USE_CASE, MODEL_EVALUATION)

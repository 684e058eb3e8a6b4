"""A batch's lifecycle (OpenAI's statuses), kept in the store: every transition is in
state_history with who moved it and why, and the per-status timestamps of a batch object
are read from there."""

from __future__ import annotations

from enum import StrEnum

from dropwire.storage.state_machine import StateMachine, Transition

KIND = "batch"


class BatchState(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


B = BatchState
TERMINAL = (B.FAILED, B.COMPLETED, B.EXPIRED, B.CANCELLED)
BATCH = StateMachine(
    kind=KIND,
    states=BatchState,
    initial=B.VALIDATING,
    transitions=(
        Transition(B.VALIDATING, B.IN_PROGRESS, "validated"),
        Transition(B.VALIDATING, B.FAILED, "validation_failed"),
        Transition(B.IN_PROGRESS, B.FINALIZING, "finalize"),
        Transition(B.FINALIZING, B.COMPLETED, "complete"),
        Transition(B.IN_PROGRESS, B.CANCELLING, "cancel"),
        # OpenAI lets a batch be cancelled while its file is still being validated.
        Transition(B.VALIDATING, B.CANCELLING, "cancel"),
        Transition(B.CANCELLING, B.CANCELLED, "cancelled"),
        Transition(B.IN_PROGRESS, B.EXPIRED, "expire"),
    ),
)

MACHINES = (BATCH,)

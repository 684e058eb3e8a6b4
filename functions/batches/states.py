"""A batch's lifecycle (OpenAI's statuses), kept in the store: every transition is in
state_history with who moved it and why, and the per-status timestamps of a batch object
are read from there.

Two workflow states sit beside OpenAI's, in the same machine (so one history, one version
and the same optimistic checks hold for them): `quota_exceeded`, while the upstream's or a
local quota is spent and the batch's chunks are parked on the queue's timer until the reset,
and `suspended`, held by an operator; and `partially_processed`, finished with some lines
succeeded and others failed for good. OpenAI's batch object has no such statuses and its
clients know only OpenAI's, so the object shows the first two as `in_progress` and the last
as `completed` (OPENAI_STATUS): to them the batch is still running, only slower, or done
with an error file; /api/v1/workflow/status shows the real state."""

from __future__ import annotations

from enum import StrEnum

from dropwire.storage.state_machine import GuardContext, StateMachine, Transition

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
    QUOTA_EXCEEDED = "quota_exceeded"
    SUSPENDED = "suspended"
    PARTIALLY_PROCESSED = "partially_processed"


B = BatchState
TERMINAL = (B.FAILED, B.COMPLETED, B.EXPIRED, B.CANCELLED, B.PARTIALLY_PROCESSED)
#: Workflow states and the OpenAI status a batch object shows for them.
OPENAI_STATUS: dict[str, BatchState] = {B.QUOTA_EXCEEDED: B.IN_PROGRESS, B.SUSPENDED: B.IN_PROGRESS, B.PARTIALLY_PROCESSED: B.COMPLETED}
#: States whose chunks wait on the queue's timer rather than run.
PARKED = (B.QUOTA_EXCEEDED, B.SUSPENDED)


def openai_status(state: str) -> str:
    return OPENAI_STATUS.get(state, state)


def _came_from(state: str):
    def guard(context: GuardContext) -> bool:
        return context.previous_state == state

    return guard


BATCH = StateMachine(
    kind=KIND,
    states=BatchState,
    initial=B.VALIDATING,
    transitions=(
        Transition(B.VALIDATING, B.IN_PROGRESS, "validated"),
        Transition(B.VALIDATING, B.FAILED, "validation_failed"),
        Transition(B.IN_PROGRESS, B.FINALIZING, "finalize"),
        Transition(B.FINALIZING, B.COMPLETED, "complete"),
        # Some lines succeeded and others failed for good: OpenAI says completed (with an error file).
        Transition(B.FINALIZING, B.PARTIALLY_PROCESSED, "complete_partially"),
        Transition(B.IN_PROGRESS, B.CANCELLING, "cancel"),
        # OpenAI lets a batch be cancelled while its file is still being validated.
        Transition(B.VALIDATING, B.CANCELLING, "cancel"),
        Transition(B.CANCELLING, B.CANCELLED, "cancelled"),
        Transition(B.IN_PROGRESS, B.EXPIRED, "expire"),
        # A quota spent: finished lines kept, the rest parked until the reset (or resumed by hand).
        Transition(B.IN_PROGRESS, B.QUOTA_EXCEEDED, "quota_exceeded"),
        # Another chunk meeting the quota meanwhile (its reset noted), not a refusal of its park.
        Transition(B.QUOTA_EXCEEDED, B.QUOTA_EXCEEDED, "quota_exceeded"),
        Transition(B.QUOTA_EXCEEDED, B.IN_PROGRESS, "quota_reset"),
        Transition(B.QUOTA_EXCEEDED, B.CANCELLING, "cancel"),
        # An operator holds the batch and lets it go again, back to the state it left.
        Transition(B.IN_PROGRESS, B.SUSPENDED, "suspend"),
        Transition(B.QUOTA_EXCEEDED, B.SUSPENDED, "suspend"),
        Transition(B.SUSPENDED, B.IN_PROGRESS, "resume", guard=_came_from(B.IN_PROGRESS),
                   guard_description="resume goes back to in_progress only if it was suspended from there"),
        Transition(B.SUSPENDED, B.QUOTA_EXCEEDED, "resume", guard=_came_from(B.QUOTA_EXCEEDED),
                   guard_description="resume goes back to quota_exceeded only if it was suspended from there"),
        Transition(B.SUSPENDED, B.CANCELLING, "cancel"),
    ),
)

MACHINES = (BATCH,)

"""An analysis's lifecycle (kind ``training_analysis``): queued when requested, running, then
completed, partial (some analyzer ran out of time or failed) or failed (MLflow unreachable,
the run unknown, its artifacts unreadable). The store's state and history are then the
history of analyses, queryable in DuckDB."""

from __future__ import annotations

from enum import StrEnum

from dropwire.storage.state_machine import StateMachine, Transition

KIND = "training_analysis"


class AnalysisState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"


A = AnalysisState
TRAINING_ANALYSIS = StateMachine(
    kind=KIND,
    states=AnalysisState,
    initial=A.QUEUED,
    transitions=(
        Transition(A.QUEUED, A.RUNNING, "started"),
        Transition(A.RUNNING, A.COMPLETED, "completed"),
        Transition(A.RUNNING, A.PARTIAL, "partial"),
        Transition(A.RUNNING, A.FAILED, "failed"),
    ),
)

MACHINES = (TRAINING_ANALYSIS,)

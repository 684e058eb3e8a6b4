"""An export's lifecycle (kind `curation_export`, one entity per batch and schema), kept in the
store with every transition in state_history: who moved it, why, and the error when it failed.

    exported  the Label Studio import JSON is written to the bucket (and, with no Label Studio
              configured, that is where it stays)
    imported  every task is in the Label Studio project
    reviewed  reviewed annotations were pulled back as an evaluation dataset (again on each
              pull that finds new reviews)
    failed    lines that do not fit the schema, or Label Studio down or refusing: the error is
              in the transition; running the export again goes on from what Label Studio holds
"""

from __future__ import annotations

from enum import StrEnum

from dropwire.storage.state_machine import StateMachine, Transition

KIND = "curation_export"


class ExportState(StrEnum):
    EXPORTED = "exported"
    IMPORTED = "imported"
    REVIEWED = "reviewed"
    FAILED = "failed"


E = ExportState
EXPORT = StateMachine(
    kind=KIND,
    states=ExportState,
    initial=E.EXPORTED,
    transitions=(
        *(Transition(state, E.EXPORTED, "export") for state in ExportState),
        Transition(E.EXPORTED, E.IMPORTED, "import"),
        Transition(E.EXPORTED, E.FAILED, "fail"),
        Transition(E.IMPORTED, E.REVIEWED, "pull"),
        Transition(E.REVIEWED, E.REVIEWED, "pull"),
    ),
)

MACHINES = (EXPORT,)

"""Workflows of every kind at a glance, from entity_states (committed data)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import msgspec

from dropwire.storage.state_machine import StateMachine

Query = Callable[[str, list], list[tuple]]


class Waiting(msgspec.Struct, kw_only=True, frozen=True):
    entity_id: str
    state: str
    since: float
    waiting_seconds: float


class KindStatus(msgspec.Struct, kw_only=True, frozen=True):
    kind: str
    counts: dict[str, int]
    #: The entity that has waited longest in a state that is not final (None: nothing waits).
    oldest_waiting: Waiting | None


class WorkflowStatus(msgspec.Struct, kw_only=True, frozen=True):
    kinds: list[KindStatus]


def status(query: Query, machines: Iterable[StateMachine], now: float | None = None) -> WorkflowStatus:
    now = time.time() if now is None else now
    out = []
    for machine in machines:
        counts = dict(query("SELECT state, count(*) FROM entity_states WHERE kind = ? GROUP BY state ORDER BY state",
                            [machine.kind]))
        open_states = sorted(s for s in machine.state_names if not machine.is_terminal(s))
        oldest = query("SELECT entity_id, state, epoch(updated_at) FROM entity_states WHERE kind = ? AND "
                       "list_contains(?, state) ORDER BY updated_at, entity_id LIMIT 1", [machine.kind, open_states])
        waiting = (Waiting(entity_id=oldest[0][0], state=oldest[0][1], since=oldest[0][2],
                           waiting_seconds=max(0.0, now - oldest[0][2])) if oldest else None)
        out.append(KindStatus(kind=machine.kind, counts=counts, oldest_waiting=waiting))
    return WorkflowStatus(kinds=out)

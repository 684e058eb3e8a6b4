"""State and history: entities moved by their state machines, and the outbox rule.

Promises:
- `apply(effects)` creates entities, applies transitions, queues the tasks and records the
  notifications they cause, all in one transaction; any illegal part (unknown kind, entity
  exists or is missing, a version that moved on, a transition the machine refuses, a task or
  notification that is malformed) refuses the whole and changes nothing.
- Every transition appends one history row, numbered 1, 2, 3... per entity; an entity's
  version is its last history row's number.
- Reads (`current`, `history`, `snapshot`, `entities`) see committed data only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

import duckdb
import msgspec

from dropwire.functions.kit.errors import Conflict, DropwireError, NotFound, VersionConflict
from dropwire.storage.commit_group import EPOCH, INT32, STRING, CommitGroup, TableSpec
from dropwire.storage.outbox import Outbox
from dropwire.storage.records import (
    Applied,
    Effects,
    EntityCreate,
    EntitySnapshot,
    TaskSpec,
    TransitionRecord,
    TransitionRequest,
)
from dropwire.storage.state_machine import GuardContext, StateMachine, machine_registry
from dropwire.storage.task_planning import EncodedTask, LiveTasks
from dropwire.storage.writer import Facet, Writer

ENTITY_STATES = TableSpec(
    "entity_states",
    (("kind", STRING), ("entity_id", STRING), ("state", STRING), ("version", INT32), ("previous_state", STRING),
     ("created_at", EPOCH), ("updated_at", EPOCH)),
    key=("kind", "entity_id"),
    timestamps=frozenset({"created_at", "updated_at"}),
    immutable=frozenset({"created_at"}),
)
STATE_HISTORY = TableSpec(
    "state_history",
    (("kind", STRING), ("entity_id", STRING), ("seq", INT32), ("from_state", STRING), ("to_state", STRING),
     ("trigger", STRING), ("triggered_by", STRING), ("reason", STRING), ("metadata", STRING), ("happened_at", EPOCH)),
    timestamps=frozenset({"happened_at"}),
)

_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class _Entity:
    state: str
    version: int
    previous_state: str | None
    created_at: float


class States(Facet):
    def __init__(self, writer: Writer, machines: Iterable[StateMachine], tasks: LiveTasks, outbox: Outbox) -> None:
        super().__init__(writer)
        self.machines = machine_registry(machines)
        self.tasks = tasks
        self.outbox = outbox
        self._entities: dict[tuple[str, str], _Entity] = {}
        #: Told of each entity a staged operation creates or moves, in the writer's thread
        #: (the queue runs the tasks waiting for it again).
        self.changed: Callable[[tuple[str, str], CommitGroup, float], None] | None = None

    def load(self, con: duckdb.DuckDBPyConnection, *, restart_grace: bool) -> None:
        self._entities = {
            (kind, eid): _Entity(state, version, prev, created)
            for kind, eid, state, version, prev, created in con.execute(
                "SELECT kind, entity_id, state, version, previous_state, epoch(created_at) FROM entity_states"
            ).fetchall()
        }

    def version_now(self, kind: str, entity_id: str) -> int:
        """The entity's version in the writer's view, staged changes included (0: no such
        entity). For the writer's thread only."""
        entity = self._entities.get((kind, entity_id))
        return entity.version if entity is not None else 0

    def machine(self, kind: str) -> StateMachine:
        try:
            return self.machines[kind]
        except KeyError:
            raise NotFound(f"no state machine for entity kind {kind!r}; known kinds: {sorted(self.machines)}", kind=kind) from None

    # ------------------------------------------------------------------ writes

    def apply(self, effects: Effects) -> Applied:
        """Create entities, apply transitions and enqueue the tasks they cause, all in one
        transaction; any illegal part refuses the whole and changes nothing."""
        return self.apply_async(effects).result()

    def apply_async(self, effects: Effects) -> Future:
        """Like apply, but returns a future, so one caller can pipeline many operations into
        one group commit; each future resolves once its own part is durable."""
        encoded = [self.tasks.encode(spec) for spec in effects.tasks]
        return self.writer.submit(partial(self.stage, effects, encoded, None))

    def create(self, kind: str, entity_id: str, *, triggered_by: str, reason: str = "created",
               metadata: dict[str, Any] | None = None, tasks: Iterable[TaskSpec] = ()) -> TransitionRecord:
        return self.apply(Effects(
            creates=[EntityCreate(kind=kind, entity_id=entity_id, triggered_by=triggered_by, reason=reason, metadata=metadata or {})],
            tasks=list(tasks),
        )).transitions[0]

    def transition(self, kind: str, entity_id: str, *, trigger: str | None = None, to_state: str | None = None,
                   expected_version: int | None = None, triggered_by: str, reason: str = "",
                   metadata: dict[str, Any] | None = None, tasks: Iterable[TaskSpec] = ()) -> TransitionRecord:
        return self.apply(Effects(
            transitions=[TransitionRequest(kind=kind, entity_id=entity_id, trigger=trigger, to_state=to_state,
                                           expected_version=expected_version, triggered_by=triggered_by,
                                           reason=reason, metadata=metadata or {})],
            tasks=list(tasks),
        )).transitions[0]

    def stage(self, effects: Effects, encoded_tasks: list[EncodedTask],
              completing: Callable[[CommitGroup, float], None] | None, batch: CommitGroup, now: float) -> Applied:
        """The operation behind `apply`, for other facets' operations too (a task's success,
        retry or death commits its effects): plan everything, refuse (raising, nothing
        changed) when any part is illegal, else run `completing` and stage it all."""
        overlay: dict[tuple[str, str], _Entity] = {}
        records: list[TransitionRecord] = []
        for create in effects.creates:
            machine = self.machine(create.kind)
            key = (create.kind, create.entity_id)
            existing = overlay.get(key) or self._entities.get(key)
            if existing is not None:
                raise Conflict(f"{create.kind} {create.entity_id} already exists (state {existing.state})",
                               kind=create.kind, entity_id=create.entity_id, state=existing.state)
            overlay[key] = _Entity(machine.initial, 1, None, now)
            records.append(TransitionRecord(kind=create.kind, entity_id=create.entity_id, seq=1, from_state=None,
                                            to_state=machine.initial, trigger="create", triggered_by=create.triggered_by,
                                            reason=create.reason, metadata=create.metadata, happened_at=now))
        for request in effects.transitions:
            machine = self.machine(request.kind)
            key = (request.kind, request.entity_id)
            current = overlay.get(key) or self._entities.get(key)
            if current is None:
                raise NotFound(f"{request.kind} {request.entity_id} does not exist", kind=request.kind, entity_id=request.entity_id)
            if request.expected_version is not None and request.expected_version != current.version:
                raise VersionConflict(
                    f"{request.kind} {request.entity_id} changed first: expected version {request.expected_version}, "
                    f"it is at version {current.version} in state {current.state}; reload and retry",
                    kind=request.kind, entity_id=request.entity_id, expected=request.expected_version,
                    actual=current.version, state=current.state,
                )
            if request.trigger is None and request.to_state is None:
                raise DropwireError(f"a transition of {request.kind} {request.entity_id} must name a trigger or a target state")
            chosen = machine.resolve(
                GuardContext(request.entity_id, current.state, current.previous_state, request.metadata),
                trigger=request.trigger, to_state=request.to_state,
            )
            overlay[key] = _Entity(chosen.dest, current.version + 1, current.state, current.created_at)
            records.append(TransitionRecord(kind=request.kind, entity_id=request.entity_id, seq=current.version + 1,
                                            from_state=current.state, to_state=chosen.dest, trigger=chosen.trigger,
                                            triggered_by=request.triggered_by, reason=request.reason,
                                            metadata=request.metadata, happened_at=now))
        metadata_json = [_json.encode(r.metadata).decode() for r in records]
        notification_rows = [self.outbox.plan(request, now) for request in effects.notifications]
        new_tasks = self.tasks.plan(encoded_tasks, now)
        if completing is not None:
            completing(batch, now)
        # Commit the plan to the views and the batch.
        for key, entity in overlay.items():
            # New to the view, not version 1: an entity created and moved on in one operation is still a new row.
            new = key not in self._entities
            self._entities[key] = entity
            batch.add(ENTITY_STATES, (key[0], key[1], entity.state, entity.version, entity.previous_state,
                                      entity.created_at, now), new=new)
        for record, meta in zip(records, metadata_json, strict=False):
            batch.add(STATE_HISTORY, (record.kind, record.entity_id, record.seq, record.from_state, record.to_state,
                                      record.trigger, record.triggered_by, record.reason, meta, now))
        task_ids = []
        for task, is_new in new_tasks:
            if is_new:
                self.tasks.stage_new(task, batch, now)
            task_ids.append(task.id)
        for row in notification_rows:
            self.outbox.stage(row, batch)
        if self.changed is not None:
            for key in overlay:
                self.changed(key, batch, now)
        return Applied(transitions=records, task_ids=task_ids)

    # ------------------------------------------------------------------ reads (committed data only)

    def history(self, kind: str, entity_id: str) -> list[TransitionRecord]:
        rows = self.writer.cursor().execute(
            'SELECT kind, entity_id, seq, from_state, to_state, "trigger", triggered_by, reason, metadata, epoch(happened_at) '
            "FROM state_history WHERE kind = ? AND entity_id = ? ORDER BY seq", [kind, entity_id]
        ).fetchall()
        return [TransitionRecord(kind=k, entity_id=e, seq=s, from_state=f, to_state=t, trigger=tr, triggered_by=by,
                                 reason=r, metadata=msgspec.json.decode(m) if m else {}, happened_at=at)
                for k, e, s, f, t, tr, by, r, m, at in rows]

    def current(self, kind: str, entity_id: str) -> tuple[str, int]:
        """(state, version) as committed, without the history."""
        row = self.writer.cursor().execute(
            "SELECT state, version FROM entity_states WHERE kind = ? AND entity_id = ?", [kind, entity_id]
        ).fetchone()
        if row is None:
            raise NotFound(f"{kind} {entity_id} does not exist", kind=kind, entity_id=entity_id)
        return row[0], row[1]

    def snapshot(self, kind: str, entity_id: str) -> EntitySnapshot:
        """An entity's state machine rebuilt from the store, with its full history."""
        machine = self.machine(kind)
        state, version = self.current(kind, entity_id)
        return EntitySnapshot(kind=kind, entity_id=entity_id, state=state, version=version,
                              history=self.history(kind, entity_id),
                              allowed=[f"{t.trigger} -> {t.dest}" for t in machine.allowed(state)])

    def entities(self, kind: str) -> list[tuple[str, str, int]]:
        """(entity id, state, version) of every entity of a kind."""
        return self.writer.cursor().execute(
            "SELECT entity_id, state, version FROM entity_states WHERE kind = ? ORDER BY created_at, entity_id", [kind]
        ).fetchall()

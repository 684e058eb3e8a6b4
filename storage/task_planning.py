"""New tasks joining the queue: every facet that queues work (state changes, receipts,
schedules, the queue itself) plans its tasks here, so ids, idempotency keys and checks are
the same for all.

Promises:
- `encode` refuses, in the caller's thread, a task the store does not know (when it was
  opened with `known_tasks`), a `max_attempts` below 1, or arguments that are not JSON.
- `plan` gives each new task the next id, above every id ever given: a finished task deleted
  by `queue cleanup` leaves its id in `id_high_water` (`stage_high_water`, in the deleting
  transaction), so ids are never reused, across deletes and restarts; a task whose idempotency key was used before (by a
  live or finished task, or earlier in the same plan) is not planned again: the first one
  stands for it.
- The view (`index`) holds every live (queued, running, retrying, waiting) task and every key used;
  on opening, a running task's lease is extended by one full lease (heartbeats live in
  memory only, so its worker gets time to report in).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import duckdb
import msgspec

from dropwire.functions.kit.errors import DropwireError, UnknownTask
from dropwire.storage.commit_group import EPOCH, INT32, INT64, STRING, CommitGroup, TableSpec
from dropwire.storage.records import TaskSpec
from dropwire.storage.settings import QueueSettings
from dropwire.storage.task_index import QUEUED, RUNNING, LiveTask, TaskIndex
from dropwire.storage.writer import Facet, Writer

TASKS = TableSpec(
    "tasks",
    (("id", INT64), ("name", STRING), ("args", STRING), ("priority", INT32), ("status", STRING), ("attempts", INT32),
     ("max_attempts", INT32), ("not_before", EPOCH), ("claimed_at", EPOCH), ("lease_expires", EPOCH), ("token", INT64),
     ("worker", STRING), ("idempotency_key", STRING), ("last_error", STRING), ("result", STRING), ("on_dead", STRING),
     ("on_retry", STRING), ("created_at", EPOCH), ("updated_at", EPOCH), ("finished_at", EPOCH)),
    key=("id",),
    timestamps=frozenset({"not_before", "claimed_at", "lease_expires", "created_at", "updated_at", "finished_at"}),
    immutable=frozenset({"name", "args", "priority", "max_attempts", "idempotency_key", "on_dead", "on_retry", "created_at"}),
)

ID_HIGH_WATER = TableSpec("id_high_water", (("name", STRING), ("last_id", INT64)), key=("name",))

#: A task checked and its arguments encoded as JSON, ready to plan.
EncodedTask = tuple[TaskSpec, str]

_json = msgspec.json.Encoder()


class FinishedRef:
    """Stands for a finished task found through its idempotency key: only its id matters."""

    __slots__ = ("id",)

    def __init__(self, task_id: int) -> None:
        self.id = task_id


class LiveTasks(Facet):
    def __init__(self, writer: Writer, settings: QueueSettings, known_tasks: Iterable[str] | None) -> None:
        super().__init__(writer)
        self.settings = settings
        self.known_tasks = frozenset(known_tasks) if known_tasks is not None else None
        self.index = TaskIndex()
        self._next_id = 1

    def load(self, con: duckdb.DuckDBPyConnection, *, restart_grace: bool) -> None:
        self.index = TaskIndex()
        now = time.time()
        # A task written "later" than now means the clock was moved back since: keep its
        # remaining delay as if the clock had run on, rather than park it for the jump too.
        ahead = dict(con.execute("SELECT id, epoch(updated_at) - ? FROM tasks WHERE status IN ('queued', 'retrying', 'waiting') "
                                 "AND updated_at > to_timestamp(?)", [now, now]).fetchall())
        for row in con.execute(
            "SELECT id, name, args, priority, status, attempts, max_attempts, epoch(not_before), epoch(created_at), "
            "epoch(claimed_at), epoch(lease_expires), token, worker, idempotency_key, last_error, on_dead, on_retry "
            "FROM tasks WHERE status IN ('queued', 'running', 'retrying', 'waiting')"
        ).fetchall():
            task = LiveTask(*row)
            if task.id in ahead:
                task.not_before = max(now, task.not_before - ahead[task.id])
            if task.status == RUNNING and restart_grace:
                # Heartbeats live in memory only: after a restart the task's worker gets one
                # full lease to report in before the task runs again.
                task.lease_expires = max(task.lease_expires or 0.0, now + self.settings.lease_seconds)
            self.index.add(task)
        for (key, task_id) in con.execute(
            "SELECT idempotency_key, id FROM tasks WHERE idempotency_key IS NOT NULL AND status NOT IN ('queued', 'running', 'retrying', 'waiting')"
        ).fetchall():
            self.index.by_key[key] = task_id
        self._next_id = con.execute(
            "SELECT greatest((SELECT coalesce(max(id), 0) FROM tasks), "
            "(SELECT coalesce(max(last_id), 0) FROM id_high_water WHERE name = 'tasks')) + 1").fetchone()[0]  # pyright: ignore[reportOptionalSubscript]  # an aggregate answers one row

    def begin_cycle(self, now: float) -> None:
        self.index.promote_due(now)

    def stage_high_water(self, batch: CommitGroup) -> None:
        """Keep the highest id given so far (with what this cycle planned), for a cycle that
        deletes tasks: max(id) of what is left would hand their ids out again."""
        batch.add(ID_HIGH_WATER, ("tasks", self._next_id - 1))

    def next_deadline(self) -> float | None:
        return self.index.next_deadline()

    def encode(self, spec: TaskSpec) -> EncodedTask:
        """Check a task and encode its arguments (in the caller's thread, not the writer's)."""
        if self.known_tasks is not None and spec.name not in self.known_tasks:
            raise UnknownTask(f"unknown task {spec.name!r}; registered tasks: {sorted(self.known_tasks)}", task=spec.name)
        if spec.max_attempts is not None and spec.max_attempts < 1:
            raise DropwireError(f"task {spec.name!r}: max_attempts must be at least 1, got {spec.max_attempts}")
        for effects in (spec.on_retry, spec.on_dead):
            for follow_up in effects.tasks if effects is not None else ():
                self.encode(follow_up)
        try:
            return spec, _json.encode(spec.args).decode()
        except (TypeError, msgspec.EncodeError, UnicodeEncodeError) as exc:  # e.g. a key that is not UTF-8
            raise DropwireError(f"arguments of task {spec.name!r} cannot be encoded as JSON: {exc}", task=spec.name) from None

    def plan(self, encoded: list[EncodedTask], now: float) -> list[tuple[LiveTask | FinishedRef, bool]]:
        """Each task with whether it is new; an idempotency key already used gives the first task."""
        planned: list[tuple[LiveTask | FinishedRef, bool]] = []
        seen_keys: dict[str, LiveTask] = {}
        next_id = self._next_id
        for spec, args in encoded:
            key = spec.idempotency_key
            if key is not None and key in seen_keys:
                planned.append((seen_keys[key], False))
                continue
            if key is not None and key in self.index.by_key:
                existing_id = self.index.by_key[key]
                planned.append((self.index.live.get(existing_id) or FinishedRef(existing_id), False))
                continue
            task = LiveTask(
                id=next_id, name=spec.name, args=args,
                priority=spec.priority, status=QUEUED, attempts=0,
                max_attempts=spec.max_attempts or self.settings.max_attempts,
                not_before=now + max(0.0, spec.delay_seconds), created_at=now, idempotency_key=key,
                on_dead=_json.encode(spec.on_dead).decode() if spec.on_dead is not None else None,
                on_retry=_json.encode(spec.on_retry).decode() if spec.on_retry is not None else None,
            )
            next_id += 1
            if key is not None:
                seen_keys[key] = task
            planned.append((task, True))
        self._next_id = next_id
        return planned

    def plan_one(self, encoded: EncodedTask, now: float) -> LiveTask:
        """`plan` for one task."""
        (task, _), = self.plan([encoded], now)
        return task

    def stage_new(self, task: LiveTask, batch: CommitGroup, now: float) -> None:
        """Add a planned task to the view and stage its row."""
        self.index.add(task)
        batch.add(TASKS, task.row(now), new=True)

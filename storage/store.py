"""The state store: the one owner of the DuckDB file.

Every write (entity creation, transition, enqueue, claim, completion, failure) is an
operation handed to one writer thread. The writer validates each operation against its
in-memory view of current states and live tasks, stages the rows of many operations into
one batch, commits the batch in one DuckDB transaction, and only then answers the callers
(group commit). An operation either stages all its rows or none, so a transition and the
tasks it causes always commit together (the outbox). Reads go to DuckDB through per-thread
cursors and see only committed data.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import duckdb
import msgspec

from dropwire.storage import migrate
from dropwire.storage.batch import Batch
from dropwire.storage.database import connect
from dropwire.storage.errors import (
    Conflict,
    DropwireError,
    NotFound,
    StaleLease,
    StoreClosed,
    UnknownTask,
    VersionConflict,
)
from dropwire.storage.read_only_query import run_read_only_query
from dropwire.storage.records import (
    Admission,
    Applied,
    ClaimedTask,
    DeadLetter,
    Done,
    Effects,
    EntityCreate,
    EntitySnapshot,
    InvocationRecord,
    NotificationRecord,
    NotificationRequest,
    ObjectReceipt,
    QueueStats,
    TaskAttempt,
    TaskSpec,
    TaskStatus,
    TransitionRecord,
    TransitionRequest,
)
from dropwire.storage.settings import QueueSettings
from dropwire.storage.state_machine import GuardContext, StateMachine, machine_registry
from dropwire.storage.task_index import DEAD, QUEUED, RETRYING, RUNNING, SUCCEEDED, LiveTask, TaskIndex

log = logging.getLogger("dropwire.store")

_json = msgspec.json.Encoder()
NOTIFICATION_STATUSES = ("pending", "sent", "recorded", "failed")
_STOP = object()


class StoreWriteFailed(DropwireError):
    http_status = 503
    code = "store_write_failed"


@dataclass(frozen=True, slots=True)
class _Entity:
    state: str
    version: int
    previous_state: str | None
    created_at: float


@dataclass(slots=True)
class _Op:
    fn: Callable[[Batch, float], Any]
    future: Future


class Store:
    """Open with `Store.open(path, machines)`; close with `close()` (or use as a context manager)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        path: Path,
        machines: Iterable[StateMachine],
        settings: QueueSettings,
        known_tasks: Iterable[str] | None,
    ) -> None:
        self.path = path
        self.settings = settings
        self.machines = machine_registry(machines)
        self.known_tasks = frozenset(known_tasks) if known_tasks is not None else None
        self._con = con
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursor_lock = threading.Lock()
        self._ops: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        self._closed = False
        self._work = threading.Condition()
        self._work_generation = 0
        self._entities: dict[tuple[str, str], _Entity] = {}
        self._index = TaskIndex()
        self._next_task_id = 1
        self._next_token = 1
        self._next_notification_id = 1
        self._sequencers: dict[tuple[str, str, str], str] = {}
        self._schedule_fires: dict[str, float] = {}
        self._load_views(restart_grace=True)
        self._writer = threading.Thread(target=self._run_writer, name="dropwire-store-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        path: Path | str,
        machines: Iterable[StateMachine] = (),
        *,
        settings: QueueSettings | None = None,
        known_tasks: Iterable[str] | None = None,
    ) -> "Store":
        path = Path(path)
        con = connect(path)
        try:
            migrate.upgrade(con)
        except BaseException:
            con.close()
            raise
        return cls(con, path, machines, settings or QueueSettings(), known_tasks)

    def close(self) -> None:
        """Finish every submitted operation, stop the writer, close the file."""
        if self._closed:
            return
        self._closed = True
        self._ops.put(_STOP)
        self._writer.join()
        with self._cursor_lock:
            for cursor in self._cursors:
                cursor.close()
        self._con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writer thread

    def _submit(self, fn: Callable[[Batch, float], Any]) -> Future:
        if self._closed:
            raise StoreClosed(f"the store for {self.path} is closed")
        future: Future = Future()
        self._ops.put(_Op(fn, future))
        return future

    def _call(self, fn: Callable[[Batch, float], Any]) -> Any:
        return self._submit(fn).result()

    def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            deadline = self._index.next_deadline()
            timeout = self.settings.reap_interval_seconds
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.time()))
            ops: list[_Op] = []
            try:
                first = self._ops.get(timeout=timeout)
                while True:
                    if first is _STOP:
                        stopping = True
                    else:
                        ops.append(first)
                    if len(ops) >= self.settings.max_batch:
                        break
                    first = self._ops.get_nowait()
            except queue.Empty:
                pass
            self._cycle(ops)

    def _cycle(self, ops: list[_Op]) -> None:
        now = time.time()
        batch = Batch()
        outcomes: list[tuple[Future, Any, BaseException | None]] = []
        broken = False
        self._index.promote_due(now)
        for op in ops:
            try:
                outcomes.append((op.future, op.fn(batch, now), None))
            except DropwireError as exc:
                outcomes.append((op.future, None, exc))
            except Exception as exc:  # a bug: the view may be half-changed, so drop the batch
                log.exception("store operation failed unexpectedly; the batch is rolled back")
                outcomes.append((op.future, None, exc))
                broken = True
        if not broken:
            self._reap_expired_leases(batch, now)
        try:
            if broken:
                raise StoreWriteFailed("an operation in this group commit failed unexpectedly; nothing was written, retry")
            if batch:
                self._con.execute("BEGIN TRANSACTION")
                batch.flush(self._con)
                self._con.execute("COMMIT")
        except Exception as exc:
            if self._con_in_transaction():
                self._con.execute("ROLLBACK")
            self._load_views(restart_grace=False)
            failure = exc if isinstance(exc, DropwireError) else StoreWriteFailed(f"writing to {self.path} failed, nothing was written: {exc}")
            for future, _, own in outcomes:
                future.set_exception(own or failure)
            return
        for future, result, exc in outcomes:
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)
        if self._index.has_ready(None):
            with self._work:
                self._work_generation += 1
                self._work.notify_all()

    def _con_in_transaction(self) -> bool:
        try:
            self._con.execute("BEGIN TRANSACTION")
        except duckdb.Error:
            return True
        self._con.execute("ROLLBACK")
        return False

    def _load_views(self, *, restart_grace: bool) -> None:
        """Rebuild the in-memory views from what is committed."""
        con = self._con
        self._entities = {
            (kind, eid): _Entity(state, version, prev, created)
            for kind, eid, state, version, prev, created in con.execute(
                "SELECT kind, entity_id, state, version, previous_state, epoch(created_at) FROM entity_states"
            ).fetchall()
        }
        self._index = TaskIndex()
        now = time.time()
        for row in con.execute(
            "SELECT id, name, args, priority, status, attempts, max_attempts, epoch(not_before), epoch(created_at), "
            "epoch(claimed_at), epoch(lease_expires), token, worker, idempotency_key, last_error, on_dead, on_retry "
            "FROM tasks WHERE status IN ('queued', 'running', 'retrying')"
        ).fetchall():
            task = LiveTask(*row)
            if task.status == RUNNING and restart_grace:
                # Heartbeats live in memory only: after a restart the task's worker gets one
                # full lease to report in before the task runs again.
                task.lease_expires = max(task.lease_expires or 0.0, now + self.settings.lease_seconds)
            self._index.add(task)
        for (key, task_id) in con.execute(
            "SELECT idempotency_key, id FROM tasks WHERE idempotency_key IS NOT NULL AND status NOT IN ('queued', 'running', 'retrying')"
        ).fetchall():
            self._index.by_key[key] = task_id
        self._sequencers = {}
        for function, bucket, key, sequencer in con.execute(
            'SELECT function, bucket, "key", sequencer FROM object_receipts WHERE sequencer IS NOT NULL'
        ).fetchall():
            latest = self._sequencers.get((function, bucket, key))
            if latest is None or sequencer_before(latest, sequencer):
                self._sequencers[(function, bucket, key)] = sequencer
        self._schedule_fires = dict(con.execute("SELECT schedule, epoch(last_fire) FROM schedule_runs").fetchall())
        self._next_task_id = (con.execute("SELECT max(id) FROM tasks").fetchone()[0] or 0) + 1
        self._next_token = (con.execute("SELECT max(token) FROM tasks").fetchone()[0] or 0) + 1
        self._next_notification_id = (con.execute("SELECT max(id) FROM notifications").fetchone()[0] or 0) + 1

    # ------------------------------------------------------------------ entities and transitions

    def _machine(self, kind: str) -> StateMachine:
        try:
            return self.machines[kind]
        except KeyError:
            raise NotFound(f"no state machine for entity kind {kind!r}; known kinds: {sorted(self.machines)}", kind=kind) from None

    def apply(self, effects: Effects) -> Applied:
        """Create entities, apply transitions and enqueue the tasks they cause, all in one
        transaction; any illegal part refuses the whole and changes nothing."""
        return self.apply_async(effects).result()

    def apply_async(self, effects: Effects) -> Future:
        """Like apply, but returns a future, so one caller can pipeline many operations into
        one group commit; each future resolves once its own part is durable."""
        encoded = [self._encode_task(spec) for spec in effects.tasks]
        return self._submit(partial(self._op_apply, effects, encoded, None))

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

    def _op_apply(self, effects: Effects, encoded_tasks: list[tuple[TaskSpec, str]],
                  completing: Callable[[Batch, float], None] | None, batch: Batch, now: float) -> Applied:
        # Plan everything first; nothing below the planning touches the view until all of it is legal.
        overlay: dict[tuple[str, str], _Entity] = {}
        records: list[TransitionRecord] = []
        for create in effects.creates:
            machine = self._machine(create.kind)
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
            machine = self._machine(request.kind)
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
        notification_rows = [self._notification_row(request, now) for request in effects.notifications]
        new_tasks = self._plan_tasks(encoded_tasks, now)
        if completing is not None:
            completing(batch, now)
        # Commit the plan to the view and the batch.
        for key, entity in overlay.items():
            # New to the view, not version 1: an entity created and moved on in one operation is still a new row.
            new = key not in self._entities
            self._entities[key] = entity
            batch.add("entity_states", (key[0], key[1], entity.state, entity.version, entity.previous_state, entity.created_at, now),
                      new=new)
        for record, meta in zip(records, metadata_json):
            batch.add("state_history", (record.kind, record.entity_id, record.seq, record.from_state, record.to_state,
                                        record.trigger, record.triggered_by, record.reason, meta, now))
        task_ids = []
        for task, is_new in new_tasks:
            if is_new:
                self._index.add(task)
                batch.add("tasks", task.row(now), new=True)
            task_ids.append(task.id)
        for row in notification_rows:
            batch.add("notifications", (self._next_notification_id, *row), new=True)
            self._next_notification_id += 1
        return Applied(transitions=records, task_ids=task_ids)

    @staticmethod
    def _notification_row(request: NotificationRequest, now: float) -> tuple:
        """A notification's row (without its id), or a refusal that names what is wrong."""
        if not request.kind or not request.subject:
            raise DropwireError(f"a notification needs a kind and a subject, got kind={request.kind!r} subject={request.subject!r}")
        for address in request.recipients:
            if "@" not in address or any(c.isspace() for c in address):
                raise DropwireError(f"notification {request.kind!r}: {address!r} is not an e-mail address", kind=request.kind)
        try:
            metadata = _json.encode(request.metadata).decode()
        except (TypeError, msgspec.EncodeError) as exc:
            raise DropwireError(f"metadata of notification {request.kind!r} cannot be encoded as JSON: {exc}") from None
        return (request.kind, _json.encode(request.recipients).decode(), request.subject, request.body,
                _json.encode(request.attachments).decode(), request.entity_kind, request.entity_id, metadata,
                "pending", 0, now, now, now)

    # ------------------------------------------------------------------ queue: enqueue

    def _encode_task(self, spec: TaskSpec) -> tuple[TaskSpec, str]:
        if self.known_tasks is not None and spec.name not in self.known_tasks:
            raise UnknownTask(f"unknown task {spec.name!r}; registered tasks: {sorted(self.known_tasks)}", task=spec.name)
        if spec.max_attempts is not None and spec.max_attempts < 1:
            raise DropwireError(f"task {spec.name!r}: max_attempts must be at least 1, got {spec.max_attempts}")
        for effects in (spec.on_retry, spec.on_dead):
            for follow_up in effects.tasks if effects is not None else ():
                self._encode_task(follow_up)
        try:
            return spec, _json.encode(spec.args).decode()
        except (TypeError, msgspec.EncodeError) as exc:
            raise DropwireError(f"arguments of task {spec.name!r} cannot be encoded as JSON: {exc}", task=spec.name) from None

    def _plan_tasks(self, encoded: list[tuple[TaskSpec, str]], now: float) -> list[tuple[LiveTask, bool]]:
        planned: list[tuple[LiveTask, bool]] = []
        seen_keys: dict[str, LiveTask] = {}
        next_id = self._next_task_id
        for spec, args in encoded:
            key = spec.idempotency_key
            if key is not None and key in seen_keys:
                planned.append((seen_keys[key], False))
                continue
            if key is not None and key in self._index.by_key:
                existing_id = self._index.by_key[key]
                planned.append((self._index.live.get(existing_id) or _FinishedRef(existing_id), False))
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
        self._next_task_id = next_id
        return planned

    def enqueue(self, spec: TaskSpec) -> int:
        """Durably queue one task; with an idempotency key already used, the first task's id."""
        return self.apply(Effects(tasks=[spec])).task_ids[0]

    def enqueue_many(self, specs: Iterable[TaskSpec]) -> list[int]:
        return self.apply(Effects(tasks=list(specs))).task_ids

    def enqueue_async(self, spec: TaskSpec) -> Future:
        """Like enqueue, pipelined (see apply_async); the future's result is an `Applied`."""
        return self.apply_async(Effects(tasks=[spec]))

    # ------------------------------------------------------------------ queue: workers

    def claim(self, worker: str, *, names: Iterable[str] | None = None, limit: int = 1,
              lease_seconds: float | None = None, wait_seconds: float = 0.0) -> list[ClaimedTask]:
        """Lease up to `limit` ready tasks (highest priority, then oldest), each with a fresh
        fencing token. With `wait_seconds`, block until work arrives or the wait ends."""
        wanted = frozenset(names) if names is not None else None
        lease = lease_seconds or self.settings.lease_seconds
        give_up = time.monotonic() + wait_seconds
        while True:
            generation = self._work_generation
            claimed = self._call(partial(self._op_claim, worker, wanted, limit, lease))
            remaining = give_up - time.monotonic()
            if claimed or remaining <= 0 or self._closed:
                return claimed
            with self._work:
                if self._work_generation == generation:
                    self._work.wait(min(remaining, self.settings.reap_interval_seconds * 5))

    def _op_claim(self, worker: str, names: frozenset[str] | None, limit: int, lease: float,
                  batch: Batch, now: float) -> list[ClaimedTask]:
        claimed = []
        while len(claimed) < limit:
            task = self._index.pop_ready(names)
            if task is None:
                break
            task.status, task.attempts = RUNNING, task.attempts + 1
            task.token, self._next_token = self._next_token, self._next_token + 1
            task.worker, task.claimed_at, task.lease_expires = worker, now, now + lease
            self._index.schedule(task)
            batch.add("tasks", task.row(now))
            claimed.append(ClaimedTask(id=task.id, name=task.name, args=task.args.encode(), attempt=task.attempts,
                                       max_attempts=task.max_attempts, token=task.token, lease_expires=task.lease_expires))
        return claimed

    def _leased(self, task_id: int, token: int, action: str) -> LiveTask:
        task = self._index.live.get(task_id)
        if task is None or task.status != RUNNING or task.token != token:
            if task is None:
                status = "finished or unknown"
            elif task.status != RUNNING:
                status = f"{task.status}, waiting for another attempt"
            else:
                status = f"leased to {task.worker} with token {task.token}"
            raise StaleLease(
                f"cannot {action} task {task_id} with fencing token {token}: the lease was lost "
                f"(the task is {status}); its work must not be committed",
                task_id=task_id, token=token,
            )
        return task

    def heartbeat(self, leases: Iterable[tuple[int, int]], lease_seconds: float | None = None) -> list[int]:
        """Extend the leases held; returns the ids of tasks whose lease was already lost.
        Leases live in memory: a heartbeat costs no disk write."""
        return self._call(partial(self._op_heartbeat, list(leases), lease_seconds or self.settings.lease_seconds))

    def _op_heartbeat(self, leases: list[tuple[int, int]], lease: float, batch: Batch, now: float) -> list[int]:
        lost = []
        for task_id, token in leases:
            task = self._index.live.get(task_id)
            if task is None or task.status != RUNNING or task.token != token:
                lost.append(task_id)
                continue
            task.lease_expires = now + lease
            self._index.schedule(task)
        return lost

    def complete(self, task_id: int, token: int, *, result: Any = None, effects: Effects | None = None,
                 invocation: InvocationRecord | None = None, wait: bool = True) -> Any:
        """Mark a leased task done and commit its effects in the same transaction. A stale
        token (the lease was lost and the task handed to someone else) is refused."""
        prepared = self._prepare(Done(task_id=task_id, token=token, result=result, effects=effects or Effects(),
                                      invocation=invocation))
        future = self._submit(lambda batch, now: self._complete_one(*prepared, batch, now))
        return future.result() if wait else future

    def complete_many(self, done: list[Done], *, wait: bool = True) -> Any:
        """Hand in many successes in one operation (one future, one group commit). Each stays
        atomic on its own: the result lists, per task, None or the error that refused it."""
        prepared = [self._prepare(item) for item in done]

        def op(batch: Batch, now: float) -> list[DropwireError | None]:
            outcomes: list[DropwireError | None] = []
            for item in prepared:
                try:
                    self._complete_one(*item, batch, now)
                    outcomes.append(None)
                except DropwireError as exc:
                    outcomes.append(exc)
            return outcomes

        future = self._submit(op)
        return future.result() if wait else future

    def _prepare(self, done: Done) -> tuple[Done, list[tuple[TaskSpec, str]], str | None]:
        """The encoding work, done in the caller's thread rather than the writer's."""
        return (done, [self._encode_task(spec) for spec in done.effects.tasks],
                _json.encode(done.result).decode() if done.result is not None else None)

    def _complete_one(self, done: Done, encoded: list[tuple[TaskSpec, str]], result_json: str | None,
                      batch: Batch, now: float) -> Applied:
        self._leased(done.task_id, done.token, "complete")

        def finish(batch: Batch, now: float) -> None:
            task = self._index.live[done.task_id]
            task.status, task.last_error = SUCCEEDED, None
            # The task row itself records the successful attempt (attempts, worker, claimed_at,
            # finished_at); task_attempts keeps failures only, so a success costs one UPDATE.
            batch.add("tasks", task.row(now, result=result_json, finished_at=now))
            self._log_invocation(task, done.invocation, batch)
            self._index.forget(task)

        effects = done.effects
        if not (effects.creates or effects.transitions or effects.tasks or effects.notifications):
            finish(batch, now)  # nothing to plan: the common case of a task without effects
            return Applied(transitions=[], task_ids=[])
        return self._op_apply(effects, encoded, finish, batch, now)

    def fail(self, task_id: int, token: int, *, error: str, traceback: str | None = None,
             retryable: bool = True, invocation: InvocationRecord | None = None, wait: bool = True) -> Any:
        """Record a failed attempt: retry later with exponential backoff and jitter, or move
        the task to the dead letters once its attempts are spent (or it cannot succeed)."""

        def op(batch: Batch, now: float) -> str:
            task = self._leased(task_id, token, "fail")
            self._log_invocation(task, invocation, batch)
            return self._settle_failure(task, "failed", error, traceback, retryable, batch, now)

        future = self._submit(op)
        return future.result() if wait else future

    @staticmethod
    def _log_invocation(task: LiveTask, invocation: InvocationRecord | None, batch: Batch) -> None:
        if invocation is not None:
            batch.add("invocations", (task.id, task.attempts, invocation.function, invocation.source,
                                      _json.encode(invocation.event).decode(), task.worker, invocation.started_at,
                                      invocation.duration_ms, invocation.outcome, invocation.error))

    def release(self, task_id: int, token: int) -> None:
        """Give back a claimed task that was never started; the attempt is not counted."""

        def op(batch: Batch, now: float) -> None:
            task = self._leased(task_id, token, "release")
            task.status, task.attempts, task.worker = QUEUED, task.attempts - 1, None
            task.lease_expires = task.claimed_at = None
            task.not_before = now
            self._index.schedule(task)
            batch.add("tasks", task.row(now))

        self._call(op)

    def backoff_seconds(self, attempts: int) -> float:
        """Exponential backoff with equal jitter: between half and all of base * 2^(n-1), capped."""
        ceiling = min(self.settings.backoff_max_seconds, self.settings.backoff_base_seconds * 2 ** (attempts - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _settle_failure(self, task: LiveTask, outcome: str, error: str, traceback: str | None,
                        retryable: bool, batch: Batch, now: float) -> str:
        batch.add("task_attempts", (task.id, task.attempts, task.token, task.worker, task.claimed_at or now, now,
                                    outcome, error, traceback))
        task.last_error, task.lease_expires = error, None
        if retryable and task.attempts < task.max_attempts:
            task.status, task.not_before = RETRYING, now + self.backoff_seconds(task.attempts)
            self._index.schedule(task)
            if task.on_retry is not None:
                self._apply_failure_effects(task, task.on_retry, error, batch, now)
            batch.add("tasks", task.row(now))
            return RETRYING
        task.status = DEAD
        if task.on_dead is not None:
            refused = self._apply_failure_effects(task, task.on_dead, error, batch, now)
            if refused is not None:
                error = f"{error} (its on-dead effects were refused: {refused})"
        batch.add("tasks", task.row(now, finished_at=now))
        batch.add("dead_letters", (task.id, task.name, task.args, task.attempts, error, now, None, None), new=True)
        self._index.forget(task)
        log.warning("task %s (%s) moved to dead letters after %d attempt(s): %s", task.id, task.name, task.attempts, error)
        return DEAD

    def _apply_failure_effects(self, task: LiveTask, encoded: str, error: str, batch: Batch, now: float) -> str | None:
        """Commit a task's on-retry or on-dead effects with its failure, the error added to
        what they record. When they are no longer legal (the entity moved on), nothing of them
        commits and the refusal is returned."""
        effects = msgspec.json.decode(encoded, type=Effects)
        failure = {"error": error, "task_id": task.id, "attempt": task.attempts}
        effects = Effects(
            creates=effects.creates, tasks=effects.tasks,
            transitions=[msgspec.structs.replace(t, metadata=t.metadata | failure) for t in effects.transitions],
            notifications=[msgspec.structs.replace(n, metadata=n.metadata | failure,
                                                   body=f"{n.body}\n\nError (task {task.id}, attempt {task.attempts}): {error}")
                           for n in effects.notifications])
        try:
            self._op_apply(effects, [self._encode_task(spec) for spec in effects.tasks], None, batch, now)
        except DropwireError as exc:
            log.info("task %s: effects of its failure not applied: %s", task.id, exc.message)
            return exc.message
        return None

    def _reap_expired_leases(self, batch: Batch, now: float) -> None:
        for task in self._index.pop_expired(now):
            self._settle_failure(task, "lease_expired",
                                 f"lease expired: worker {task.worker} stopped heartbeating (attempt {task.attempts})",
                                 None, True, batch, now)

    # ------------------------------------------------------------------ object events, outputs, schedules

    def admit(self, offers: list[tuple[ObjectReceipt, TaskSpec]]) -> list[Admission]:
        """For each object event offered to a function, queue its task unless the same
        (function, bucket, key, version) was admitted before (duplicate) or a newer event for
        the key was (stale). All in one group commit."""
        encoded = [(receipt, self._encode_task(spec)) for receipt, spec in offers]

        def op(batch: Batch, now: float) -> list[Admission]:
            return [self._admit_one(receipt, spec, batch, now) for receipt, spec in encoded]

        return self._call(op)

    def _admit_one(self, receipt: ObjectReceipt, encoded: tuple[TaskSpec, str], batch: Batch, now: float) -> Admission:
        dedupe = f"object:{receipt.function}:{receipt.bucket}:{receipt.key}:{receipt.version}"
        if dedupe in self._index.by_key:
            return Admission(outcome="duplicate", task_id=self._index.by_key[dedupe],
                             reason=f"{receipt.bucket}/{receipt.key} version {receipt.version} was already admitted for {receipt.function}")
        place = (receipt.function, receipt.bucket, receipt.key)
        latest = self._sequencers.get(place)
        if receipt.sequencer and latest and sequencer_before(receipt.sequencer, latest):
            return Admission(outcome="stale", reason=f"event sequencer {receipt.sequencer} is older than "
                                                     f"{latest}, already admitted for {receipt.bucket}/{receipt.key}")
        spec, args = encoded
        (task, _), = self._plan_tasks([(msgspec.structs.replace(spec, idempotency_key=dedupe), args)], now)
        self._index.add(task)
        batch.add("tasks", task.row(now), new=True)
        batch.add("object_receipts", (receipt.function, receipt.bucket, receipt.key, receipt.version, receipt.sequencer,
                                      receipt.event_name, task.id, now))
        if receipt.sequencer:
            self._sequencers[place] = receipt.sequencer
        return Admission(outcome="accepted", task_id=task.id)

    def record_output(self, bucket: str, key: str, *, hop: int, function: str, task_id: int) -> None:
        """Note, before a handler writes it, that an object comes from a handler `hop` hops
        away from an outside upload."""
        def op(batch: Batch, now: float) -> None:
            batch.execute("INSERT OR REPLACE INTO object_lineage VALUES (?, ?, ?, ?, ?, to_timestamp(?))",
                          (bucket, key, hop, function, task_id, now))

        self._call(op)

    def hops_of(self, objects: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """How many handler hops produced each (bucket, key); objects from outside are left out."""
        if not objects:
            return {}
        rows = self._cursor().execute(
            'SELECT bucket, "key", hop FROM object_lineage WHERE (bucket, "key") IN (SELECT unnest(?), unnest(?))',
            [[b for b, _ in objects], [k for _, k in objects]]).fetchall()
        return {(b, k): hop for b, k, hop in rows}

    def fire_schedule(self, schedule: str, fire_time: float, spec: TaskSpec) -> int | None:
        """Queue a schedule's run for `fire_time` unless a run at or after it was already
        queued; returns the task id, or None when it was."""
        encoded = self._encode_task(spec)

        def op(batch: Batch, now: float) -> int | None:
            last = self._schedule_fires.get(schedule)
            if last is not None and last >= fire_time:
                return None
            (task, _), = self._plan_tasks([encoded], now)
            self._index.add(task)
            batch.add("tasks", task.row(now), new=True)
            batch.add("schedule_runs", (schedule, fire_time, task.id, now), new=last is None)
            self._schedule_fires[schedule] = fire_time
            return task.id

        return self._call(op)

    def last_fire(self, schedule: str) -> float | None:
        row = self._cursor().execute("SELECT epoch(last_fire) FROM schedule_runs WHERE schedule = ?", [schedule]).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ notifications (the outbox's delivery side)

    def mark_notification(self, notification_id: int, *, status: str, attempts: int, last_error: str | None = None,
                          next_attempt_at: float | None = None, eml_path: str | None = None,
                          email_sent: bool = False, webhook_sent: bool = False) -> None:
        """Record a delivery attempt: which channels succeeded (their first success time is
        kept), the status, the attempts so far, the error and when to try again."""
        if status not in NOTIFICATION_STATUSES:
            raise DropwireError(f"notification status must be one of {NOTIFICATION_STATUSES}, got {status!r}")

        def op(batch: Batch, now: float) -> None:
            if self._con.execute("SELECT 1 FROM notifications WHERE id = ?", [notification_id]).fetchone() is None:
                raise NotFound(f"no notification {notification_id}", notification_id=notification_id)
            batch.execute(
                "UPDATE notifications SET status = ?, attempts = ?, last_error = ?, "
                "next_attempt_at = to_timestamp(?), eml_path = coalesce(?, eml_path), "
                "email_sent_at = CASE WHEN ? THEN coalesce(email_sent_at, to_timestamp(?)) ELSE email_sent_at END, "
                "webhook_sent_at = CASE WHEN ? THEN coalesce(webhook_sent_at, to_timestamp(?)) ELSE webhook_sent_at END, "
                "updated_at = to_timestamp(?) WHERE id = ?",
                (status, attempts, last_error, next_attempt_at if next_attempt_at is not None else now, eml_path,
                 email_sent, now, webhook_sent, now, now, notification_id))

        self._call(op)

    def pending_notifications(self, limit: int = 100) -> list[NotificationRecord]:
        """Pending notifications whose next attempt is due, oldest first."""
        return self._notifications("WHERE status = 'pending' AND next_attempt_at <= now()", [], limit)

    def notifications(self, status: str | None = None, limit: int = 100) -> list[NotificationRecord]:
        """The newest notifications, optionally of one status."""
        if status is not None and status not in NOTIFICATION_STATUSES:
            raise DropwireError(f"notification status must be one of {NOTIFICATION_STATUSES}, got {status!r}")
        where, params = ("WHERE status = ?", [status]) if status is not None else ("", [])
        return self._notifications(where, params, limit, newest_first=True)

    def _notifications(self, where: str, params: list, limit: int, newest_first: bool = False) -> list[NotificationRecord]:
        rows = self._cursor().execute(
            "SELECT id, kind, subject, body, recipients, attachments, entity_kind, entity_id, metadata, status, attempts, "
            "last_error, epoch(created_at), epoch(next_attempt_at), epoch(email_sent_at), epoch(webhook_sent_at), eml_path "
            f"FROM notifications {where} ORDER BY id {'DESC' if newest_first else ''} LIMIT ?", [*params, limit]).fetchall()
        return [NotificationRecord(id=i, kind=k, subject=s, body=b, recipients=msgspec.json.decode(r),
                                   attachments=msgspec.json.decode(a), entity_kind=ek, entity_id=ei,
                                   metadata=msgspec.json.decode(m), status=st, attempts=at, last_error=e, created_at=c,
                                   next_attempt_at=n, email_sent_at=es, webhook_sent_at=ws, eml_path=p)
                for i, k, s, b, r, a, ek, ei, m, st, at, e, c, n, es, ws, p in rows]

    # ------------------------------------------------------------------ dead letters and cleanup

    def replay_dead_letter(self, task_id: int, *, triggered_by: str = "operator") -> int:
        """Queue a dead task again as a new task with fresh attempts; the dead letter records it."""
        row = self._cursor().execute(
            "SELECT d.name, d.args, t.priority, t.max_attempts, d.replayed_task_id, t.on_dead, t.on_retry FROM dead_letters d "
            "JOIN tasks t ON t.id = d.task_id WHERE d.task_id = ?", [task_id]
        ).fetchone()
        if row is None:
            raise NotFound(f"no dead letter for task {task_id}", task_id=task_id)
        name, args, priority, max_attempts, replayed, on_dead, on_retry = row
        if replayed is not None:
            raise Conflict(f"dead letter {task_id} was already replayed as task {replayed}", task_id=task_id, replayed_task_id=replayed)

        def op(batch: Batch, now: float) -> int:
            (task, _), = self._plan_tasks(
                [(TaskSpec(name=name, priority=priority, max_attempts=max_attempts,
                           on_dead=msgspec.json.decode(on_dead, type=Effects) if on_dead else None,
                           on_retry=msgspec.json.decode(on_retry, type=Effects) if on_retry else None), args)], now)
            self._index.add(task)
            batch.add("tasks", task.row(now), new=True)
            batch.execute("UPDATE dead_letters SET replayed_task_id = ?, replayed_at = to_timestamp(?) WHERE task_id = ?",
                          (task.id, now, task_id))
            return task.id

        new_id = self._call(op)
        log.info("dead letter %s replayed as task %s by %s", task_id, new_id, triggered_by)
        return new_id

    def cleanup(self, older_than_days: float) -> int:
        """Delete finished tasks (succeeded, or dead and already replayed) older than N days,
        with their attempts. Returns how many tasks went."""
        if older_than_days < 0:
            raise DropwireError(f"older_than_days must not be negative, got {older_than_days}")

        def op(batch: Batch, now: float) -> int:
            cutoff = now - older_than_days * 86400
            doomed = self._con.execute(
                "SELECT t.id, t.idempotency_key FROM tasks t LEFT JOIN dead_letters d ON d.task_id = t.id "
                "WHERE t.finished_at < to_timestamp(?) AND (t.status = 'succeeded' OR (t.status = 'dead' AND d.replayed_task_id IS NOT NULL))",
                [cutoff],
            ).fetchall()
            if doomed:
                ids = [task_id for task_id, _ in doomed]
                batch.execute("DELETE FROM task_attempts WHERE task_id IN (SELECT unnest(?::BIGINT[]))", (ids,))
                batch.execute("DELETE FROM dead_letters WHERE task_id IN (SELECT unnest(?::BIGINT[]))", (ids,))
                batch.execute("DELETE FROM tasks WHERE id IN (SELECT unnest(?::BIGINT[]))", (ids,))
                for _, key in doomed:
                    if key is not None:
                        self._index.by_key.pop(key, None)
            return len(doomed)

        return self._call(op)

    # ------------------------------------------------------------------ reads (committed data only)

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            if self._closed:
                raise StoreClosed(f"the store for {self.path} is closed")
            cursor = self._con.cursor()
            self._local.cursor = cursor
            with self._cursor_lock:
                self._cursors.append(cursor)
        return cursor

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        """One SELECT over the committed state, for inspection, that cannot write (see
        read_only_query): writes must go through the writer thread, whose views would
        otherwise silently go out of step."""
        return run_read_only_query(self._cursor(), sql, params)

    def history(self, kind: str, entity_id: str) -> list[TransitionRecord]:
        rows = self._cursor().execute(
            'SELECT kind, entity_id, seq, from_state, to_state, "trigger", triggered_by, reason, metadata, epoch(happened_at) '
            "FROM state_history WHERE kind = ? AND entity_id = ? ORDER BY seq", [kind, entity_id]
        ).fetchall()
        return [TransitionRecord(kind=k, entity_id=e, seq=s, from_state=f, to_state=t, trigger=tr, triggered_by=by,
                                 reason=r, metadata=msgspec.json.decode(m) if m else {}, happened_at=at)
                for k, e, s, f, t, tr, by, r, m, at in rows]

    def current(self, kind: str, entity_id: str) -> tuple[str, int]:
        """(state, version) as committed, without the history."""
        row = self._cursor().execute(
            "SELECT state, version FROM entity_states WHERE kind = ? AND entity_id = ?", [kind, entity_id]
        ).fetchone()
        if row is None:
            raise NotFound(f"{kind} {entity_id} does not exist", kind=kind, entity_id=entity_id)
        return row[0], row[1]

    def snapshot(self, kind: str, entity_id: str) -> EntitySnapshot:
        """An entity's state machine rebuilt from the store, with its full history."""
        machine = self._machine(kind)
        state, version = self.current(kind, entity_id)
        return EntitySnapshot(kind=kind, entity_id=entity_id, state=state, version=version,
                              history=self.history(kind, entity_id),
                              allowed=[f"{t.trigger} -> {t.dest}" for t in machine.allowed(state)])

    def entities(self, kind: str) -> list[tuple[str, str, int]]:
        """(entity id, state, version) of every entity of a kind."""
        return self._cursor().execute(
            "SELECT entity_id, state, version FROM entity_states WHERE kind = ? ORDER BY created_at, entity_id", [kind]
        ).fetchall()

    def _attempts(self, task_id: int) -> list[TaskAttempt]:
        return [TaskAttempt(attempt=a, token=t, worker=w, started_at=str(s), finished_at=str(f), outcome=o, error=e, traceback=tb)
                for a, t, w, s, f, o, e, tb in self._cursor().execute(
                    "SELECT attempt, token, worker, started_at, finished_at, outcome, error, traceback "
                    "FROM task_attempts WHERE task_id = ? ORDER BY attempt", [task_id]).fetchall()]

    def task(self, task_id: int) -> TaskStatus:
        row = self._cursor().execute(
            "SELECT id, name, status, args, priority, attempts, max_attempts, not_before, worker, last_error, result, "
            "created_at, finished_at FROM tasks WHERE id = ?", [task_id]
        ).fetchone()
        if row is None:
            raise NotFound(f"no task {task_id}", task_id=task_id)
        i, name, status, args, prio, attempts, max_attempts, not_before, worker, err, result, created, finished = row
        return TaskStatus(id=i, name=name, status=status, args=msgspec.json.decode(args), priority=prio, attempts=attempts,
                          max_attempts=max_attempts, not_before=str(not_before), worker=worker, last_error=err,
                          result=msgspec.json.decode(result) if result else None, created_at=str(created),
                          finished_at=str(finished) if finished else None, history=self._attempts(task_id))

    def stats(self) -> QueueStats:
        cur = self._cursor()
        by_name: dict[str, dict[str, int]] = {}
        by_status: dict[str, int] = {}
        for name, status, count in cur.execute("SELECT name, status, count(*) FROM tasks GROUP BY ALL ORDER BY ALL").fetchall():
            by_name.setdefault(name, {})[status] = count
            by_status[status] = by_status.get(status, 0) + count
        oldest, attempts_total, max_seen = cur.execute(
            "SELECT (SELECT epoch(now()) - epoch(min(not_before)) FROM tasks WHERE status = 'queued' AND not_before <= now()), "
            "coalesce(sum(attempts), 0), coalesce(max(attempts), 0) FROM tasks"
        ).fetchone()
        dead = cur.execute("SELECT count(*) FROM dead_letters WHERE replayed_task_id IS NULL").fetchone()[0]
        return QueueStats(by_status=by_status, by_name=by_name,
                          oldest_waiting_seconds=round(oldest, 3) if oldest is not None else None,
                          attempts_total=int(attempts_total), max_attempts_seen=int(max_seen), dead_letters=dead)

    def dead_letters(self, *, include_replayed: bool = False) -> list[DeadLetter]:
        where = "" if include_replayed else "WHERE replayed_task_id IS NULL"
        return [DeadLetter(task_id=t, name=n, args=msgspec.json.decode(a), attempts=at, last_error=e, died_at=str(d), replayed_task_id=r)
                for t, n, a, at, e, d, r in self._cursor().execute(
                    f"SELECT task_id, name, args, attempts, last_error, died_at, replayed_task_id FROM dead_letters {where} ORDER BY died_at"
                ).fetchall()]

    def dead_letter(self, task_id: int) -> DeadLetter:
        for letter in self.dead_letters(include_replayed=True):
            if letter.task_id == task_id:
                return msgspec.structs.replace(letter, history=self._attempts(task_id))
        raise NotFound(f"no dead letter for task {task_id}", task_id=task_id)

    def export(self, directory: Path | str) -> Path:
        """Write a consistent snapshot of every table as Parquet (readable by DuckDB and polars)."""
        target = Path(directory)
        if target.exists() and any(target.iterdir()):
            raise Conflict(f"export directory {target} is not empty; choose a new one")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._cursor().execute(f"EXPORT DATABASE '{target.as_posix()}' (FORMAT parquet)")
        return target


def sequencer_before(a: str, b: str) -> bool:
    """S3 sequencers order the events of one key: right-pad with zeros, compare as strings."""
    width = max(len(a), len(b))
    return a.upper().ljust(width, "0") < b.upper().ljust(width, "0")


class _FinishedRef:
    """Stands for a finished task found through its idempotency key: only its id matters."""

    __slots__ = ("id",)

    def __init__(self, task_id: int) -> None:
        self.id = task_id

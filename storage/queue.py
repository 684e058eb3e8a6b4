"""The durable queue and its dead letters.

Promises:
- `enqueue` returns once the task is committed; a used idempotency key returns the first
  task's id and queues nothing.
- `claim` leases ready tasks (highest priority, then oldest), each with a fresh fencing token;
  with `wait_seconds` it blocks until work arrives or the wait ends.
- A lease lives while its worker heartbeats (in memory: a heartbeat costs no disk write); an
  expired lease counts as a failed attempt.
- `complete` commits the success and the task's effects in one transaction; `fail` records the
  attempt and retries later (exponential backoff with jitter) or, once the attempts are spent
  or the failure cannot be retried, moves the task to the dead letters with its on-dead
  effects. A completion, failure or release with a stale token is refused (`StaleLease`):
  that work must not commit.
- `wait_for` parks a task whose prerequisite is not there yet (not a failure, the attempt not
  counted): it runs again as soon as a change of the entity it waits for commits (or at once
  if one committed while it ran), else when its backoff ends; once it has waited
  `wait_max_seconds` since it was queued it is refused with the same message. `refuse`
  ends a task the user's mistake stopped (final, status refused): never a dead letter.
- A dead letter can be replayed once, as a new task with fresh attempts; `cleanup` deletes
  finished tasks (succeeded, refused, or dead and replayed) older than N days with their attempts;
  their ids are never given again, and their object receipts still refuse a duplicate.
- Reads (`task`, `stats`, `dead_letters`, `dead_letter`) see committed data only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from functools import partial
from typing import Any

import msgspec

from dropwire.functions.kit.backoff import equal_jitter
from dropwire.functions.kit.errors import Conflict, DropwireError, NotFound, StaleLease
from dropwire.storage.commit_group import EPOCH, INT32, INT64, STRING, CommitGroup, TableSpec
from dropwire.storage.records import (
    Applied,
    ClaimedTask,
    DeadLetter,
    Done,
    Effects,
    InvocationRecord,
    QueueStats,
    TaskAttempt,
    TaskSpec,
    TaskStatus,
    WaitFor,
)
from dropwire.storage.settings import QueueSettings
from dropwire.storage.states import States
from dropwire.storage.task_index import (
    CLAIMABLE,
    DEAD,
    QUEUED,
    REFUSED,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    WAITING,
    LiveTask,
)
from dropwire.storage.task_planning import TASKS, EncodedTask, LiveTasks
from dropwire.storage.writer import Facet, Writer

log = logging.getLogger("dropwire.store")

TASK_ATTEMPTS = TableSpec(
    "task_attempts",
    (("task_id", INT64), ("attempt", INT32), ("token", INT64), ("worker", STRING), ("started_at", EPOCH),
     ("finished_at", EPOCH), ("outcome", STRING), ("error", STRING), ("traceback", STRING)),
    timestamps=frozenset({"started_at", "finished_at"}),
)
DEAD_LETTERS = TableSpec(
    "dead_letters",
    (("task_id", INT64), ("name", STRING), ("args", STRING), ("attempts", INT32), ("last_error", STRING),
     ("died_at", EPOCH), ("replayed_task_id", INT64), ("replayed_at", EPOCH)),
    key=("task_id",),
    timestamps=frozenset({"died_at", "replayed_at"}),
    immutable=frozenset({"name", "args", "attempts", "last_error", "died_at"}),
)
INVOCATIONS = TableSpec(
    "invocations",
    (("task_id", INT64), ("attempt", INT32), ("function", STRING), ("source", STRING), ("event", STRING),
     ("worker", STRING), ("started_at", EPOCH), ("duration_ms", EPOCH), ("outcome", STRING), ("error", STRING)),
    timestamps=frozenset({"started_at"}),
)

_json = msgspec.json.Encoder()


class Queue(Facet):
    def __init__(self, writer: Writer, settings: QueueSettings, tasks: LiveTasks, states: States) -> None:
        super().__init__(writer)
        self.settings = settings
        self.tasks = tasks
        self.states = states
        states.changed = self._prerequisite_changed
        self._work = threading.Condition()
        self._work_generation = 0
        self._next_token = 1

    def load(self, con, *, restart_grace: bool) -> None:
        self._next_token = (con.execute("SELECT max(token) FROM tasks").fetchone()[0] or 0) + 1  # pyright: ignore[reportOptionalSubscript]  # an aggregate answers one row

    def end_cycle(self, batch: CommitGroup, now: float) -> None:
        for task in self.tasks.index.pop_expired(now):
            self._settle_failure(task, "lease_expired",
                                 f"lease expired: worker {task.worker} stopped heartbeating (attempt {task.attempts})",
                                 None, True, batch, now)

    def committed(self) -> None:
        if self.tasks.index.has_ready():
            with self._work:
                self._work_generation += 1
                self._work.notify_all()

    # ------------------------------------------------------------------ enqueue

    def enqueue(self, spec: TaskSpec) -> int:
        """Durably queue one task; with an idempotency key already used, the first task's id."""
        return self.enqueue_async(spec).result().task_ids[0]

    def enqueue_many(self, specs: Iterable[TaskSpec]) -> list[int]:
        encoded = [self.tasks.encode(spec) for spec in specs]
        return self.writer.call(partial(self._op_enqueue, encoded)).task_ids

    def enqueue_async(self, spec: TaskSpec) -> Future:
        """Like enqueue, pipelined (see States.apply_async); the future's result is an `Applied`."""
        return self.writer.submit(partial(self._op_enqueue, [self.tasks.encode(spec)]))

    def _op_enqueue(self, encoded: list[EncodedTask], batch: CommitGroup, now: float) -> Applied:
        # Tasks alone, no state change: nothing to refuse once encoded, so no planning pass.
        task_ids = []
        for task, is_new in self.tasks.plan(encoded, now):
            if is_new:
                self.tasks.stage_new(task, batch, now)
            task_ids.append(task.id)
        return Applied(transitions=[], task_ids=task_ids)

    def wake(self, key_prefix: str) -> int:
        """Make the waiting tasks whose idempotency key starts with `key_prefix` due now (a
        parked workflow resumed by hand); how many moved."""
        def op(batch: CommitGroup, now: float) -> int:
            moved = 0
            for task in list(self.tasks.index.live.values()):
                if (task.status in CLAIMABLE and task.idempotency_key
                        and task.idempotency_key.startswith(key_prefix)):
                    task.not_before = now
                    self.tasks.index.schedule(task)  # the old heap entry goes stale (lazy deletion)
                    batch.add(TASKS, task.row(now))
                    moved += 1
            return moved

        return self.writer.call(op)

    # ------------------------------------------------------------------ workers

    def claim(self, worker: str, *, names: Iterable[str] | None = None, limit: int = 1,
              lease_seconds: float | None = None, wait_seconds: float = 0.0) -> list[ClaimedTask]:
        """Lease up to `limit` ready tasks (highest priority, then oldest), each with a fresh
        fencing token. With `wait_seconds`, block until work arrives or the wait ends."""
        wanted = frozenset(names) if names is not None else None
        lease = lease_seconds or self.settings.lease_seconds
        give_up = time.monotonic() + wait_seconds
        while True:
            generation = self._work_generation
            claimed = self.writer.call(partial(self._op_claim, worker, wanted, limit, lease))
            remaining = give_up - time.monotonic()
            if claimed or remaining <= 0 or self.writer.closed:
                return claimed
            with self._work:
                if self._work_generation == generation:
                    self._work.wait(min(remaining, self.settings.reap_interval_seconds * 5))

    def _op_claim(self, worker: str, names: frozenset[str] | None, limit: int, lease: float,
                  batch: CommitGroup, now: float) -> list[ClaimedTask]:
        claimed = []
        index = self.tasks.index
        while len(claimed) < limit:
            task = index.pop_ready(names)
            if task is None:
                break
            task.status, task.attempts = RUNNING, task.attempts + 1
            task.token, self._next_token = self._next_token, self._next_token + 1
            task.worker, task.claimed_at, task.lease_expires = worker, now, now + lease
            index.schedule(task)
            batch.add(TASKS, task.row(now))
            claimed.append(ClaimedTask(id=task.id, name=task.name, args=task.args.encode(), attempt=task.attempts,
                                       max_attempts=task.max_attempts, token=task.token, lease_expires=task.lease_expires))
        return claimed

    def _leased(self, task_id: int, token: int, action: str) -> LiveTask:
        task = self.tasks.index.live.get(task_id)
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
        return self.writer.call(partial(self._op_heartbeat, list(leases), lease_seconds or self.settings.lease_seconds))

    def _op_heartbeat(self, leases: list[tuple[int, int]], lease: float, batch: CommitGroup, now: float) -> list[int]:
        lost = []
        index = self.tasks.index
        for task_id, token in leases:
            task = index.live.get(task_id)
            if task is None or task.status != RUNNING or task.token != token:
                lost.append(task_id)
                continue
            task.lease_expires = now + lease
            index.schedule(task)
        return lost

    def complete(self, task_id: int, token: int, *, result: Any = None, effects: Effects | None = None,
                 invocation: InvocationRecord | None = None, wait: bool = True) -> Any:
        """Mark a leased task done and commit its effects in the same transaction. A stale
        token (the lease was lost and the task handed to someone else) is refused."""
        prepared = self._prepare(Done(task_id=task_id, token=token, result=result, effects=effects or Effects(),
                                      invocation=invocation))
        future = self.writer.submit(lambda batch, now: self._complete_one(*prepared, batch, now))
        return future.result() if wait else future

    def complete_many(self, done: list[Done], *, wait: bool = True) -> Any:
        """Hand in many successes in one operation (one future, one group commit). Each stays
        atomic on its own: the result lists, per task, None or the error that refused it."""
        prepared = [self._prepare(item) for item in done]

        def op(batch: CommitGroup, now: float) -> list[DropwireError | None]:
            outcomes: list[DropwireError | None] = []
            for item in prepared:
                try:
                    self._complete_one(*item, batch, now)
                    outcomes.append(None)
                except DropwireError as exc:
                    outcomes.append(exc)
            return outcomes

        future = self.writer.submit(op)
        return future.result() if wait else future

    def _prepare(self, done: Done) -> tuple[Done, list[EncodedTask], str | None]:
        """The encoding work, done in the caller's thread rather than the writer's."""
        return (done, [self.tasks.encode(spec) for spec in done.effects.tasks],
                _json.encode(done.result).decode() if done.result is not None else None)

    def _complete_one(self, done: Done, encoded: list[EncodedTask], result_json: str | None,
                      batch: CommitGroup, now: float) -> Applied:
        self._leased(done.task_id, done.token, "complete")

        def finish(batch: CommitGroup, now: float) -> None:
            index = self.tasks.index
            task = index.live[done.task_id]
            task.status, task.last_error = SUCCEEDED, None
            # The task row itself records the successful attempt (attempts, worker, claimed_at,
            # finished_at); task_attempts keeps failures only, so a success costs one UPDATE.
            batch.add(TASKS, task.row(now, result=result_json, finished_at=now))
            self._log_invocation(task, done.invocation, batch)
            index.forget(task)

        effects = done.effects
        if not (effects.creates or effects.transitions or effects.tasks or effects.notifications):
            finish(batch, now)  # nothing to plan: the common case of a task without effects
            return Applied(transitions=[], task_ids=[])
        return self.states.stage(effects, encoded, finish, batch, now)

    def fail(self, task_id: int, token: int, *, error: str, traceback: str | None = None,
             retryable: bool = True, invocation: InvocationRecord | None = None, wait: bool = True) -> Any:
        """Record a failed attempt: retry later with exponential backoff and jitter, or move
        the task to the dead letters once its attempts are spent (or it cannot succeed)."""

        def op(batch: CommitGroup, now: float) -> str:
            task = self._leased(task_id, token, "fail")
            self._log_invocation(task, invocation, batch)
            return self._settle_failure(task, "failed", error, traceback, retryable, batch, now)

        future = self.writer.submit(op)
        return future.result() if wait else future

    @staticmethod
    def _log_invocation(task: LiveTask, invocation: InvocationRecord | None, batch: CommitGroup) -> None:
        if invocation is not None:
            batch.add(INVOCATIONS, (task.id, task.attempts, invocation.function, invocation.source,
                                    _json.encode(invocation.event).decode(), task.worker, invocation.started_at,
                                    invocation.duration_ms, invocation.outcome, invocation.error))

    def wait_for(self, task_id: int, token: int, *, error: str, waits_for: WaitFor,
                 invocation: InvocationRecord | None = None, wait: bool = True) -> Any:
        """A task whose prerequisite is not there yet (`error` says which, `waits_for` names it)
        waits for it: see the module's promises. Returns the task's new status."""

        def op(batch: CommitGroup, now: float) -> str:
            task = self._leased(task_id, token, "park")
            give_up = task.created_at + self.settings.wait_max_seconds
            entity = (waits_for.kind, waits_for.entity_id)
            if now >= give_up:
                waiters = self.tasks.index.waiting.get(entity)
                if waiters is not None:
                    waiters.discard(task.id)
                refusal = f"{error} (waited {now - task.created_at:.0f}s for it)"
                if invocation is not None:
                    self._log_invocation(task, msgspec.structs.replace(invocation, outcome=REFUSED, error=refusal), batch)
                return self._settle_refusal(task, refusal, batch, now)
            self._log_invocation(task, invocation, batch)
            task.status, task.attempts, task.waits, task.last_error = WAITING, task.attempts - 1, task.waits + 1, error
            task.worker = task.lease_expires = task.claimed_at = None
            if self.states.version_now(*entity) != waits_for.seen_version:
                task.not_before = now  # it changed while the handler ran: look again now
            else:
                task.not_before = min(now + self.backoff_seconds(task.waits), give_up)
                self.tasks.index.waiting.setdefault(entity, set()).add(task.id)
            self.tasks.index.schedule(task)
            batch.add(TASKS, task.row(now))
            return WAITING

        future = self.writer.submit(op)
        return future.result() if wait else future

    def _prerequisite_changed(self, entity: tuple[str, str], batch: CommitGroup, now: float) -> None:
        """A change of `entity` is staged: the tasks waiting for it run again once it commits
        (the next cycle promotes them, after this one's commit)."""
        index = self.tasks.index
        for task_id in index.waiting.pop(entity, ()):
            task = index.live.get(task_id)
            if task is not None and task.status == WAITING:
                task.not_before = now
                index.schedule(task)
                batch.add(TASKS, task.row(now))

    def refuse(self, task_id: int, token: int, *, error: str, invocation: InvocationRecord | None = None,
               wait: bool = True) -> Any:
        """The handler refused what the user asked (a retry in the wrong state, an upload that
        is not taken now): final, with its message; no retry, no dead letter, no on-dead effects."""

        def op(batch: CommitGroup, now: float) -> str:
            task = self._leased(task_id, token, "refuse")
            self._log_invocation(task, invocation, batch)
            return self._settle_refusal(task, error, batch, now)

        future = self.writer.submit(op)
        return future.result() if wait else future

    def _settle_refusal(self, task: LiveTask, error: str, batch: CommitGroup, now: float) -> str:
        task.status, task.last_error, task.lease_expires = REFUSED, error, None
        batch.add(TASKS, task.row(now, finished_at=now))
        self.tasks.index.forget(task)
        log.info("task %s (%s) refused: %s", task.id, task.name, error)
        return REFUSED

    def release(self, task_id: int, token: int) -> None:
        """Give back a claimed task that was never started; the attempt is not counted."""

        def op(batch: CommitGroup, now: float) -> None:
            task = self._leased(task_id, token, "release")
            task.status, task.attempts, task.worker = QUEUED, task.attempts - 1, None
            task.lease_expires = task.claimed_at = None
            task.not_before = now
            self.tasks.index.schedule(task)
            batch.add(TASKS, task.row(now))

        self.writer.call(op)

    def backoff_seconds(self, attempts: int) -> float:
        """Exponential backoff with equal jitter: between half and all of base * 2^(n-1), capped."""
        return equal_jitter(attempts, self.settings.backoff_base_seconds, self.settings.backoff_max_seconds)

    def _settle_failure(self, task: LiveTask, outcome: str, error: str, traceback: str | None,
                        retryable: bool, batch: CommitGroup, now: float) -> str:
        batch.add(TASK_ATTEMPTS, (task.id, task.attempts, task.token, task.worker, task.claimed_at or now, now,
                                  outcome, error, traceback))
        task.last_error, task.lease_expires = error, None
        if retryable and task.attempts < task.max_attempts:
            task.status, task.not_before = RETRYING, now + self.backoff_seconds(task.attempts)
            self.tasks.index.schedule(task)
            if task.on_retry is not None:
                self._apply_failure_effects(task, task.on_retry, error, batch, now)
            batch.add(TASKS, task.row(now))
            return RETRYING
        task.status = DEAD
        if task.on_dead is not None:
            refused = self._apply_failure_effects(task, task.on_dead, error, batch, now)
            if refused is not None:
                error = f"{error} (its on-dead effects were refused: {refused})"
        batch.add(TASKS, task.row(now, finished_at=now))
        batch.add(DEAD_LETTERS, (task.id, task.name, task.args, task.attempts, error, now, None, None), new=True)
        self.tasks.index.forget(task)
        log.warning("task %s (%s) moved to dead letters after %d attempt(s): %s", task.id, task.name, task.attempts, error)
        return DEAD

    def _apply_failure_effects(self, task: LiveTask, encoded: str, error: str, batch: CommitGroup, now: float) -> str | None:
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
            self.states.stage(effects, [self.tasks.encode(spec) for spec in effects.tasks], None, batch, now)
        except DropwireError as exc:
            log.info("task %s: effects of its failure not applied: %s", task.id, exc.message)
            return exc.message
        return None

    # ------------------------------------------------------------------ dead letters and cleanup

    def replay_dead_letter(self, task_id: int, *, triggered_by: str = "operator") -> int:
        """Queue a dead task again as a new task with fresh attempts; the dead letter records it."""
        row = self.writer.cursor().execute(
            "SELECT d.name, d.args, t.priority, t.max_attempts, d.replayed_task_id, t.on_dead, t.on_retry FROM dead_letters d "
            "JOIN tasks t ON t.id = d.task_id WHERE d.task_id = ?", [task_id]
        ).fetchone()
        if row is None:
            raise NotFound(f"no dead letter for task {task_id}", task_id=task_id)
        name, args, priority, max_attempts, replayed, on_dead, on_retry = row
        if replayed is not None:
            raise Conflict(f"dead letter {task_id} was already replayed as task {replayed}", task_id=task_id, replayed_task_id=replayed)

        def op(batch: CommitGroup, now: float) -> int:
            task = self.tasks.plan_one(
                (TaskSpec(name=name, priority=priority, max_attempts=max_attempts,
                          on_dead=msgspec.json.decode(on_dead, type=Effects) if on_dead else None,
                          on_retry=msgspec.json.decode(on_retry, type=Effects) if on_retry else None), args), now)
            self.tasks.stage_new(task, batch, now)
            batch.execute("UPDATE dead_letters SET replayed_task_id = ?, replayed_at = to_timestamp(?) WHERE task_id = ?",
                          (task.id, now, task_id))
            return task.id

        new_id = self.writer.call(op)
        log.info("dead letter %s replayed as task %s by %s", task_id, new_id, triggered_by)
        return new_id

    def cleanup(self, older_than_days: float) -> int:
        """Delete finished tasks (succeeded, refused, or dead and already replayed) older than N days,
        with their attempts. Returns how many tasks went."""
        if older_than_days < 0:
            raise DropwireError(f"older_than_days must not be negative, got {older_than_days}")

        def op(batch: CommitGroup, now: float) -> int:
            cutoff = now - older_than_days * 86400
            doomed = self.writer.connection.execute(
                "SELECT t.id, t.idempotency_key FROM tasks t LEFT JOIN dead_letters d ON d.task_id = t.id "
                "WHERE t.finished_at < to_timestamp(?) AND (t.status IN ('succeeded', 'refused') "
                "OR (t.status = 'dead' AND d.replayed_task_id IS NOT NULL))",
                [cutoff],
            ).fetchall()
            if doomed:
                ids = [task_id for task_id, _ in doomed]
                batch.execute("DELETE FROM task_attempts WHERE task_id IN (SELECT unnest(?::BIGINT[]))", (ids,))
                batch.execute("DELETE FROM dead_letters WHERE task_id IN (SELECT unnest(?::BIGINT[]))", (ids,))
                batch.execute("DELETE FROM tasks WHERE id IN (SELECT unnest(?::BIGINT[]))", (ids,))
                self.tasks.stage_high_water(batch)  # their ids stay given
                for _, key in doomed:
                    if key is not None:
                        self.tasks.index.by_key.pop(key, None)
            return len(doomed)

        return self.writer.call(op)

    # ------------------------------------------------------------------ reads (committed data only)

    def _attempts(self, task_id: int) -> list[TaskAttempt]:
        return [TaskAttempt(attempt=a, token=t, worker=w, started_at=str(s), finished_at=str(f), outcome=o, error=e, traceback=tb)
                for a, t, w, s, f, o, e, tb in self.writer.cursor().execute(
                    "SELECT attempt, token, worker, started_at, finished_at, outcome, error, traceback "
                    "FROM task_attempts WHERE task_id = ? ORDER BY attempt", [task_id]).fetchall()]

    def task(self, task_id: int) -> TaskStatus:
        row = self.writer.cursor().execute(
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
        cur = self.writer.cursor()
        by_name: dict[str, dict[str, int]] = {}
        by_status: dict[str, int] = {}
        for name, status, count in cur.execute("SELECT name, status, count(*) FROM tasks GROUP BY ALL ORDER BY ALL").fetchall():
            by_name.setdefault(name, {})[status] = count
            by_status[status] = by_status.get(status, 0) + count
        oldest, attempts_total, max_seen = cur.execute(
            "SELECT (SELECT epoch(now()) - epoch(min(not_before)) FROM tasks WHERE status = 'queued' AND not_before <= now()), "
            "coalesce(sum(attempts), 0), coalesce(max(attempts), 0) FROM tasks"
        ).fetchone()
        dead = cur.execute("SELECT count(*) FROM dead_letters WHERE replayed_task_id IS NULL").fetchone()[0]  # pyright: ignore[reportOptionalSubscript]  # an aggregate answers one row
        return QueueStats(by_status=by_status, by_name=by_name,
                          oldest_waiting_seconds=round(oldest, 3) if oldest is not None else None,
                          attempts_total=int(attempts_total), max_attempts_seen=int(max_seen), dead_letters=dead)

    def dead_letters(self, *, include_replayed: bool = False) -> list[DeadLetter]:
        where = "" if include_replayed else "WHERE replayed_task_id IS NULL"
        return [DeadLetter(task_id=t, name=n, args=msgspec.json.decode(a), attempts=at, last_error=e, died_at=str(d), replayed_task_id=r)
                for t, n, a, at, e, d, r in self.writer.cursor().execute(
                    f"SELECT task_id, name, args, attempts, last_error, died_at, replayed_task_id FROM dead_letters {where} ORDER BY died_at"
                ).fetchall()]

    def dead_letter(self, task_id: int) -> DeadLetter:
        for letter in self.dead_letters(include_replayed=True):
            if letter.task_id == task_id:
                return msgspec.structs.replace(letter, history=self._attempts(task_id))
        raise NotFound(f"no dead letter for task {task_id}", task_id=task_id)

"""The writer thread's in-memory view of live tasks: ready heaps per task name, a heap of
delayed tasks, and a heap of lease deadlines. Only the writer thread touches it, so it needs
no locks; heap entries are checked against the task on pop (lazy deletion)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

QUEUED, RUNNING, RETRYING, SUCCEEDED, DEAD = "queued", "running", "retrying", "succeeded", "dead"
#: Waiting for a prerequisite (another file's effect) to commit; refused: a user's mistake
#: (final, never a dead letter).
WAITING, REFUSED = "waiting", "refused"
#: Statuses a task may be claimed from when due.
CLAIMABLE = (QUEUED, RETRYING, WAITING)
LIVE = (*CLAIMABLE, RUNNING)
FINISHED = (SUCCEEDED, DEAD, REFUSED)


@dataclass(slots=True)
class LiveTask:
    id: int
    name: str
    args: str
    priority: int
    status: str
    attempts: int
    max_attempts: int
    not_before: float
    created_at: float
    claimed_at: float | None = None
    lease_expires: float | None = None
    token: int | None = None
    worker: str | None = None
    idempotency_key: str | None = None
    last_error: str | None = None
    on_dead: str | None = None
    on_retry: str | None = None
    #: How many times it waited for a prerequisite since it was loaded (in memory only: the
    #: backoff of its re-checks starts over after a restart).
    waits: int = 0

    def row(self, now: float, *, result: str | None = None, finished_at: float | None = None) -> tuple:
        """The task's image in the `tasks` table (column order of tasks.TASKS)."""
        return (
            self.id, self.name, self.args, self.priority, self.status, self.attempts, self.max_attempts,
            self.not_before, self.claimed_at, self.lease_expires, self.token, self.worker,
            self.idempotency_key, self.last_error, result, self.on_dead, self.on_retry, self.created_at, now, finished_at,
        )


class TaskIndex:
    def __init__(self) -> None:
        self.live: dict[int, LiveTask] = {}
        self.by_key: dict[str, int] = {}
        self._ready: dict[str, list[tuple[int, int]]] = {}
        self._delayed: list[tuple[float, int]] = []
        self._leases: list[tuple[float, int, int]] = []
        #: (kind, entity id) -> ids of tasks waiting for a change of that entity (in memory only:
        #: after a restart a waiting task is re-run by its backoff, then waits here again).
        self.waiting: dict[tuple[str, str], set[int]] = {}

    def add(self, task: LiveTask) -> None:
        self.live[task.id] = task
        if task.idempotency_key:
            self.by_key[task.idempotency_key] = task.id
        self.schedule(task)

    def schedule(self, task: LiveTask) -> None:
        """Put a queued/retrying/waiting task where a claim will find it, or a running one under its lease."""
        if task.status == RUNNING:
            heapq.heappush(self._leases, (task.lease_expires, task.id, task.token))
        else:
            heapq.heappush(self._delayed, (task.not_before, task.id))

    def forget(self, task: LiveTask) -> None:
        self.live.pop(task.id, None)

    def promote_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            not_before, task_id = heapq.heappop(self._delayed)
            task = self.live.get(task_id)
            if task is not None and task.status in CLAIMABLE and task.not_before == not_before:
                # Higher priority first, then oldest id first.
                heapq.heappush(self._ready.setdefault(task.name, []), (-task.priority, task.id))

    def pop_ready(self, names: frozenset[str] | None) -> LiveTask | None:
        best_name, best = None, None
        for name in (self._ready if names is None else names & self._ready.keys()):
            heap = self._ready[name]
            while heap:
                task = self.live.get(heap[0][1])
                if task is not None and task.status in CLAIMABLE and -heap[0][0] == task.priority:
                    break
                heapq.heappop(heap)  # stale entry
            if heap and (best is None or heap[0] < best):
                best_name, best = name, heap[0]
        if best_name is None:
            return None
        heapq.heappop(self._ready[best_name])
        return self.live[best[1]]

    def pop_expired(self, now: float) -> list[LiveTask]:
        expired = []
        while self._leases and self._leases[0][0] <= now:
            lease_expires, task_id, token = heapq.heappop(self._leases)
            task = self.live.get(task_id)
            if task is not None and task.status == RUNNING and task.token == token and task.lease_expires == lease_expires:
                expired.append(task)
        return expired

    def next_deadline(self) -> float | None:
        """The earliest time something becomes due (a delayed task or a lease expiry)."""
        heads = [h[0] for h in (self._delayed[:1] + self._leases[:1])]
        return min(heads) if heads else None

    def has_ready(self) -> bool:
        """Whether any task is ready to claim (claimers are woken only then)."""
        return any(self._ready.values())

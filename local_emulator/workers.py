"""Worker threads that run registered task functions from the durable queue.

The same pool runs inside the control plane (its backend is the store's queue facet) or in a separate
worker process (its backend is a ControlClient's queue, talking to the control plane). Each worker
claims a few tasks at once, heartbeats their leases from one shared thread, and hands in
completions without waiting for their commit, so completions and the next claim share a
group commit. A completion with a stale fencing token is refused by the store: the work
of a worker whose lease expired never commits."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, Protocol

import msgspec

from dropwire.functions.kit.errors import DropwireError, StaleLease
from dropwire.functions.platform.tasks import (
    Completion,
    ExecutorLost,
    NotYet,
    PermanentTaskError,
    Refused,
    TaskContext,
    TaskFailed,
    TaskRegistry,
)
from dropwire.storage.records import ClaimedTask, Done, InvocationRecord, WaitFor

log = logging.getLogger("dropwire.workers")


class QueueBackend(Protocol):
    def claim(self, worker: str, *, names: Iterable[str] | None = None, limit: int = 1,
              lease_seconds: float | None = None, wait_seconds: float = 0.0) -> list[ClaimedTask]: ...

    def heartbeat(self, leases: Iterable[tuple[int, int]], lease_seconds: float | None = None) -> list[int]: ...

    def complete_many(self, done: list[Done], *, wait: bool = True) -> Any: ...

    def fail(self, task_id: int, token: int, *, error: str, traceback: str | None = None,
             retryable: bool = True, invocation: InvocationRecord | None = None, wait: bool = True) -> Any: ...

    def release(self, task_id: int, token: int) -> None: ...

    def wait_for(self, task_id: int, token: int, *, error: str, waits_for: WaitFor,
                 invocation: InvocationRecord | None = None, wait: bool = True) -> Any: ...

    def refuse(self, task_id: int, token: int, *, error: str, invocation: InvocationRecord | None = None,
               wait: bool = True) -> Any: ...


class WorkerPool:
    def __init__(self, backend: QueueBackend, registry: TaskRegistry, *, workers: int, max_prefetch: int,
                 lease_seconds: float, heartbeat_seconds: float, claim_batch_seconds: float = 0.1,
                 name: str = "worker", claim_wait_seconds: float = 0.5,
                 thread_start: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.registry = registry
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.max_prefetch = max_prefetch
        self.claim_batch_seconds = claim_batch_seconds
        self.claim_wait_seconds = claim_wait_seconds
        self._thread_start = thread_start
        # Exponential moving average of task durations, shared by the pool's workers.
        # Until a first task has run, assume one claim's worth per task (claim one at a time).
        self._mean_task_seconds = claim_batch_seconds
        self._observed = False
        self._name = name
        self._stopping = threading.Event()
        self._held: dict[int, int] = {}  # task id -> fencing token, for heartbeats
        self._held_lock = threading.Lock()
        self._pending: set[Future] = set()
        self._threads = [threading.Thread(target=self._work, args=(f"{name}-{i}",), name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        self._heartbeat = threading.Thread(target=self._beat, name=f"{name}-heartbeat", daemon=True)

    def start(self) -> WorkerPool:
        for thread in self._threads:
            thread.start()
        self._heartbeat.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Graceful stop: each worker finishes the task it is running and releases the ones it
        claimed but has not started; completions still in flight are waited for."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        self._heartbeat.join(timeout)
        for future in list(self._pending):
            with contextlib.suppress(Exception):  # already logged by the callback
                future.result(timeout)

    def _hold(self, task: ClaimedTask) -> None:
        with self._held_lock:
            self._held[task.id] = task.token

    def _drop(self, task_id: int) -> None:
        with self._held_lock:
            self._held.pop(task_id, None)

    def _beat(self) -> None:
        while not self._stopping.wait(self.heartbeat_seconds):
            with self._held_lock:
                leases = list(self._held.items())
            if not leases:
                continue
            try:
                lost = self.backend.heartbeat(leases, self.lease_seconds)
            except DropwireError as exc:
                log.warning("heartbeat failed: %s", exc.message)
                continue
            with self._held_lock:
                # A task finished since the heartbeat was sent is not lost, just done.
                really_lost = [task_id for task_id in lost if task_id in self._held]
                for task_id in really_lost:
                    del self._held[task_id]  # stop heartbeating it; its completion will be refused
            for task_id in really_lost:
                log.warning("lease of task %s was lost; its result will be refused", task_id)

    def _work(self, worker_id: str) -> None:
        if self._thread_start is not None:
            self._thread_start()  # e.g. start this thread's handler process before the first task
        names = self.registry.names()
        while not self._stopping.is_set():
            try:
                claimed = self.backend.claim(worker_id, names=names, limit=self._claim_size(),
                                             lease_seconds=self.lease_seconds, wait_seconds=self.claim_wait_seconds)
            except DropwireError as exc:
                log.error("claim failed: %s", exc.message)
                time.sleep(self.claim_wait_seconds)
                continue
            for task in claimed:
                self._hold(task)
            succeeded: list[tuple[ClaimedTask, Done]] = []
            handed_in = time.perf_counter()
            for position, task in enumerate(claimed):
                if self._stopping.is_set():
                    for unstarted in claimed[position:]:
                        self._release(unstarted)
                    break
                try:
                    done = self._run(worker_id, task)
                except ExecutorLost as exc:
                    self._abandon(exc, task, claimed[position + 1:])
                    break
                if done is not None:
                    succeeded.append((task, done))
                # Successes go in together, but none waits longer than one claim's worth of work.
                if time.perf_counter() - handed_in >= self.claim_batch_seconds:
                    self._hand_in(succeeded)
                    succeeded, handed_in = [], time.perf_counter()
            self._hand_in(succeeded)

    def _abandon(self, lost: ExecutorLost, running: ClaimedTask, unstarted: list[ClaimedTask]) -> None:
        """The executor is gone: a task it was running keeps no lease (it lapses and the queue
        retries it), tasks not handed over go back now, and this worker waits a lease before
        claiming again."""
        if lost.started:
            self._drop(running.id)
            log.error("%s; task %s returns to the queue when its lease expires (%.0fs)", lost.message, running.id,
                      self.lease_seconds)
        else:
            unstarted = [running, *unstarted]
        for task in unstarted:
            self._release(task)
        log.warning("%s: %d claimed task(s) released; claiming again in %.0fs", lost.message, len(unstarted),
                    self.lease_seconds)
        self._stopping.wait(self.lease_seconds)

    def _claim_size(self) -> int:
        return max(1, min(self.max_prefetch, int(self.claim_batch_seconds / max(self._mean_task_seconds, 1e-6))))

    def _release(self, task: ClaimedTask) -> None:
        try:
            self.backend.release(task.id, task.token)
        except StaleLease:
            pass
        finally:
            self._drop(task.id)

    def _run(self, worker_id: str, task: ClaimedTask) -> Done | None:
        """Run one task: its success to hand in, or None after reporting its failure."""
        registered = self.registry.get(task.name)
        context = TaskContext(task.id, task.name, task.attempt, task.max_attempts, worker_id,
                              logging.getLogger(f"dropwire.task.{task.name}"))
        started = time.perf_counter()
        try:
            try:
                args = msgspec.json.decode(task.args, type=registered.args_type)
            except msgspec.ValidationError as exc:
                raise PermanentTaskError(f"arguments of task {task.name!r} (id {task.id}) do not decode: {exc}") from None
            outcome = registered.fn(args, context)
        except ExecutorLost:
            raise
        except NotYet as exc:  # not a failure: the task waits for its prerequisite
            self._observe(time.perf_counter() - started)
            self._watch(self.backend.wait_for(task.id, task.token, error=exc.message, waits_for=exc.waits_for,
                                              invocation=exc.invocation, wait=False), [task])
            return None
        except Refused as exc:  # the user's mistake: final, never a dead letter
            self._observe(time.perf_counter() - started)
            self._watch(self.backend.refuse(task.id, task.token, error=exc.message, invocation=exc.invocation,
                                            wait=False), [task])
            return None
        except Exception as exc:
            self._observe(time.perf_counter() - started)
            failed = exc if isinstance(exc, TaskFailed) else None
            message = exc.message if isinstance(exc, DropwireError) else f"{type(exc).__name__}: {exc}"
            self._watch(self.backend.fail(
                task.id, task.token, error=message,
                traceback=(failed.traceback if failed and failed.traceback else traceback.format_exc()),
                retryable=failed.retryable if failed else True,
                invocation=failed.invocation if failed else None, wait=False), [task])
            return None
        self._observe(time.perf_counter() - started)
        completion = outcome if isinstance(outcome, Completion) else Completion(result=outcome)
        return Done(task_id=task.id, token=task.token, result=completion.result, effects=completion.effects,
                    invocation=completion.invocation)

    def _observe(self, seconds: float) -> None:
        # The first duration replaces the guess: averaging it in took ~15 claims of one or two
        # short tasks, each waiting for a commit, before claims reached max_prefetch.
        if not self._observed:
            self._mean_task_seconds, self._observed = seconds, True
        else:
            self._mean_task_seconds += 0.2 * (seconds - self._mean_task_seconds)

    def _hand_in(self, succeeded: list[tuple[ClaimedTask, Done]]) -> None:
        if not succeeded:
            return
        tasks = [task for task, _ in succeeded]
        future = self.backend.complete_many([done for _, done in succeeded], wait=False)

        def refused(outcomes: list[DropwireError | None]) -> None:
            for task, outcome in zip(tasks, outcomes, strict=False):
                if isinstance(outcome, StaleLease):
                    log.warning("%s", outcome.message)
                elif outcome is not None:
                    # The task ran, but what it asked to change is not legal now: a failed attempt.
                    log.warning("task %s finished but its effects were refused: %s", task.id, outcome.message)
                    self._watch(self.backend.fail(task.id, task.token, error=outcome.message, wait=False), [task])

        self._watch(future, tasks, on_result=refused)

    def _watch(self, future: Future, tasks: list[ClaimedTask],
               on_result: Callable[[Any], None] | None = None) -> None:
        """Keep an in-flight report until it commits (stop() waits for them), then stop
        heartbeating its tasks. Runs its callback in the writer's thread: never block here."""
        self._pending.add(future)

        def settled(f: Future) -> None:
            self._pending.discard(f)
            for task in tasks:
                self._drop(task.id)
            exc = f.exception()
            if exc is not None:
                if isinstance(exc, StaleLease):
                    log.warning("%s", exc.message)
                else:
                    log.error("reporting task(s) %s failed: %s", [t.id for t in tasks], exc)
            elif on_result is not None:
                on_result(f.result())

        future.add_done_callback(settled)

"""Which forecast the device computes next: two lanes, shared futures, O(1) staleness.

The forecast job kind's queues (the device owner in device.py runs them with the other kinds).

- Interactive lane: a stack, popped last-in-first-out (the most recent click first), always
  before background work. A repeated click on a queued index moves it to the top.
- Background lane: a cursor per dataset that walks its indices lazily, a small chunk at a
  time, round-robin over datasets; nothing is enqueued ahead of time, so a backlog of 10^5
  indices costs nothing until the device is free for it.
- One job (one future) per (dataset, index): identical requests share it; an interactive
  request for an index the background has not reached yet is queued interactively
  (promoted) and the cursor later skips it; one for an index in flight joins that job.
- Range watchers (a batch consumer) wait for specific indices at background priority: an
  index the cursor will reach gets a future its job takes over when the cursor gets there;
  one behind the cursor (evicted from the result cache, or never walked) is queued in the
  dataset's revisit heap, which its background chunks serve first. Only what was asked for
  is ever queued, and the watcher holds the results themselves, so they need not survive in
  the result cache.
- Each registration of a dataset gets a fresh generation. Deleting it drops its state in
  O(1): every queued or in-flight job of the old generation is stale from that moment, is
  skipped when popped, and is never cached; its waiters get an error at once.
- The background lane can be paused (an operator holding precompute back, a test holding
  the lane still to see what comes first): nothing new is taken from it, interactive work
  goes on, and range watchers wait until it resumes; a chunk already in flight finishes.

One threading lock guards all of it; it is never held across an await or a device call.
Futures are resolved outside the lock.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from dropwire.runtime.device import Lane
from dropwire.runtime.errors import DatasetGone, DatasetNotFound

if TYPE_CHECKING:
    from dropwire.runtime.caches import BoundedCache
    from dropwire.runtime.dataset import Dataset

# How far one background take may scan past already computed indices before it lets go
# of the lock (the worker asks again at once).
SCAN_LIMIT_PER_CHUNK = 64


@dataclass(eq=False)
class Job:
    dataset: Dataset
    index: int
    generation: int
    lane: Lane
    future: Future = field(default_factory=Future)
    # Popped by the worker (in flight); a later stack entry for it is skipped.
    taken: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.dataset.handle, self.index)


@dataclass(frozen=True)
class Batch:
    lane: Lane
    jobs: list[Job]


@dataclass(eq=False)
class _DatasetState:
    dataset: Dataset
    generation: int
    # Uploaded through process-and-cache: kept until deleted or evicted.
    persistent: bool = False
    # Quick draws using it right now; a transient dataset goes when the last one ends.
    holds: int = 0
    background: bool = False
    cursor: int = 0
    jobs: set[Job] = field(default_factory=set)
    # Futures of watched indices no job has taken yet, and those of them behind the cursor.
    awaited: dict[int, Future] = field(default_factory=dict)
    revisit: list[int] = field(default_factory=list)
    # Has an entry in the background rotation.
    rotating: bool = False

    def has_background_work(self) -> bool:
        return bool(self.revisit) or (self.background and self.cursor <= self.dataset.last_index)


class SchedulerStats(msgspec.Struct, frozen=True):
    datasets: int
    interactive_queued: int
    in_flight: int
    background_datasets: int
    background_remaining: int
    # Indices range watchers wait for that no job has taken yet.
    awaited: int
    background_paused: bool
    computed_interactive: int
    computed_background: int
    coalesced: int
    promoted: int
    stale_dropped: int
    failed: int


class Scheduler:
    def __init__(self, *, batch_size: int, background_chunk: int) -> None:
        self.batch_size = batch_size
        self.background_chunk = background_chunk
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._datasets: dict[str, _DatasetState] = {}
        self._pending: dict[tuple[str, int], Job] = {}
        self._stack: list[Job] = []
        self._rotation: deque[str] = deque()
        self._generations = itertools.count(1)
        self._closed: Exception | None = None
        self._background_paused = False
        self._results: BoundedCache | None = None
        self._model_version = ""
        self._computed = {Lane.INTERACTIVE: 0, Lane.BACKGROUND: 0}
        self._coalesced = 0
        self._promoted = 0
        self._stale_dropped = 0
        self._failed = 0
        self._on_work: Callable[[], None] = lambda: None

    def on_work(self, wake: Callable[[], None]) -> None:
        """Called (under the lock; it must not block) whenever new work is queued."""
        self._on_work = wake

    def attach_results(self, results: BoundedCache, model_version: str) -> None:
        """The result cache comes after the model (start-up order: queues, model, caches)."""
        with self._lock:
            self._results = results
            self._model_version = model_version

    def result_key(self, handle: str, index: int) -> tuple[str, int, str]:
        return (handle, index, self._model_version)

    # -- datasets -------------------------------------------------------------------------

    def add_dataset(self, dataset: Dataset, *, background: bool) -> bool:
        """Register (or re-register) an uploaded dataset; True when it was not known."""
        with self._lock:
            self._raise_if_closed()
            state, created = self._state_for(dataset)
            state.persistent = True
            if background and not state.background:
                state.background = True
                state.cursor = dataset.first_index
                self._rotate(state)
            return created

    def hold(self, dataset: Dataset) -> None:
        """A quick draw uses the dataset; no background work is started for it."""
        with self._lock:
            self._raise_if_closed()
            state, _ = self._state_for(dataset)
            state.holds += 1

    def release(self, handle: str) -> bool:
        """A quick draw is done; True when that removed the dataset (nothing else kept it)."""
        with self._lock:
            state = self._datasets.get(handle)
            if state is None:
                return False
            state.holds = max(0, state.holds - 1)
            if state.holds or state.persistent:
                return False
            waiters = self._forget(handle)
        _fail(waiters, DatasetGone(f"dataset {handle[:12]} was removed", handle=handle))
        return True

    def remove_dataset(self, handle: str, error: Exception) -> bool:
        """Drop a dataset and all its pending work at once; its waiters get ``error``."""
        with self._lock:
            if handle not in self._datasets:
                return False
            waiters = self._forget(handle)
        _fail(waiters, error)
        return True

    def pause_background(self, paused: bool) -> None:
        """Hold the background lane (True) or let it go on (False)."""
        with self._lock:
            self._background_paused = paused
            if not paused:
                self._notify()

    def background_progress(self, handle: str) -> tuple[bool, int]:
        """(precompute requested, indices the background cursor has not reached yet)."""
        with self._lock:
            state = self._datasets.get(handle)
            if state is None or not state.background:
                return False, 0
            return True, max(0, state.dataset.last_index - state.cursor + 1)

    # -- requests -------------------------------------------------------------------------

    def submit(self, handle: str, index: int) -> tuple[Future, bool]:
        """An interactive request: (future, answered from the cache)."""
        with self._lock:
            state = self._requestable(handle)
            cached = self._results.get(self.result_key(handle, index))
            if cached is not None:
                done: Future = Future()
                done.set_result(cached)
                return done, True
            job = self._pending.get((handle, index))
            if job is not None:
                self._coalesced += 1
                if job.lane is Lane.INTERACTIVE and not job.taken:
                    self._stack.append(job)  # clicked again: the most recent click again
                    self._notify()
                return job.future, False
            if state.background and index >= state.cursor:
                self._promoted += 1
            # A range watcher's future for it (if any) becomes this job's: one future per index.
            job = Job(state.dataset, index, state.generation, Lane.INTERACTIVE, future=state.awaited.pop(index, None) or Future())
            self._pending[job.key] = job
            state.jobs.add(job)
            self._stack.append(job)
            self._notify()
            return job.future, False

    def _requestable(self, handle: str) -> _DatasetState:
        """The dataset's state for a new request (under the lock), or why there is none."""
        self._raise_if_closed()
        state = self._datasets.get(handle)
        if state is None:
            raise DatasetNotFound(f"no dataset with handle {handle!r}", handle=handle)
        assert self._results is not None, "attach_results() comes before the first request"
        return state

    def watch(self, handle: str, indices: range) -> list[Future]:
        """Futures of the forecasts at ``indices`` at background priority: never ahead of
        interactive work, and without promoting anything. Cached results resolve at once,
        indices in flight are joined; the rest wait for the background lane."""
        futures: list[Future] = []
        with self._lock:
            state = self._requestable(handle)
            for index in indices:
                cached = self._results.get(self.result_key(handle, index))
                if cached is not None:
                    done: Future = Future()
                    done.set_result(cached)
                    futures.append(done)
                    continue
                job = self._pending.get((handle, index))
                if job is not None:
                    self._coalesced += 1
                    futures.append(job.future)
                    continue
                future = state.awaited.get(index)
                if future is None:
                    future = state.awaited[index] = Future()
                    if not (state.background and index >= state.cursor):
                        heapq.heappush(state.revisit, index)  # the cursor will not get there
                futures.append(future)
            if state.revisit:
                self._rotate(state)
        return futures

    # -- the device worker's side ---------------------------------------------------------

    def next_batch(self, timeout: float) -> Batch | None:
        """Interactive jobs first (LIFO, up to batch_size), else one background chunk; None
        when there is nothing after ``timeout`` seconds or the scheduler is closed."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._closed is None:
                jobs = self._pop_interactive()
                if jobs:
                    return Batch(Lane.INTERACTIVE, jobs)
                jobs, more = self._take_background()
                if jobs:
                    return Batch(Lane.BACKGROUND, jobs)
                if more:
                    return None  # a long already-computed stretch: let go of the lock, ask again
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._wake.wait(remaining)
            return None

    def next_background(self) -> Batch | None:
        """One background chunk, without waiting (None also after a long computed stretch:
        the device asks again)."""
        with self._lock:
            if self._closed is not None or self._results is None:
                return None
            jobs, more = self._take_background()
            if more and not jobs:
                self._notify()  # more to scan: come back at once
            return Batch(Lane.BACKGROUND, jobs) if jobs else None

    def next_interactive(self) -> Batch | None:
        """Interactive jobs only, without waiting: what a paused background batch lets in."""
        with self._lock:
            jobs = self._pop_interactive() if self._closed is None else []
            return Batch(Lane.INTERACTIVE, jobs) if jobs else None

    def interactive_waiting(self) -> bool:
        """Whether a background batch should pause for interactive work now."""
        with self._lock:
            return any(not job.taken and self._current(job) for job in reversed(self._stack))

    def drop_stale(self, jobs: list[Job]) -> list[Job]:
        """The jobs still worth computing; the others are counted and forgotten."""
        with self._lock:
            current = [job for job in jobs if self._current(job)]
            self._stale_dropped += len(jobs) - len(current)
            return current

    def abandon_if_stale(self, jobs: list[Job]) -> bool:
        """True (and counted as dropped) when none of the jobs is current any more."""
        with self._lock:
            if any(self._current(job) for job in jobs):
                return False
            self._stale_dropped += len(jobs)
            return True

    def finish(self, jobs: list[Job], results: list[Any]) -> None:
        """Cache and deliver results of current jobs; results of stale jobs are dropped."""
        delivered = []
        with self._lock:
            for job, result in zip(jobs, results, strict=False):
                self._release_job(job)
                if not self._current(job):
                    self._stale_dropped += 1
                    continue
                assert self._results is not None
                self._results.put(
                    self.result_key(*job.key), result, result.nbytes, group=job.dataset.handle
                )
                self._computed[job.lane] += 1
                delivered.append((job, result))
        for job, result in delivered:
            _resolve(job.future, result=result)

    def fail(self, jobs: list[Job], error: Exception) -> None:
        with self._lock:
            for job in jobs:
                self._release_job(job)
            self._failed += len(jobs)
        _fail([job.future for job in jobs], error)

    def close(self, error: Exception) -> None:
        """Refuse new work and fail everything queued or in flight with ``error``."""
        with self._lock:
            if self._closed is not None:
                return
            self._closed = error
            waiters = [job.future for job in self._pending.values()]
            self._pending.clear()
            self._stack.clear()
            self._rotation.clear()
            for state in self._datasets.values():
                state.jobs.clear()
                waiters.extend(state.awaited.values())
                state.awaited.clear()
                state.revisit.clear()
            self._wake.notify_all()
        _fail(waiters, error)

    def flush(self) -> int:
        """Forget every dataset (after close); returns how many there were."""
        with self._lock:
            count = len(self._datasets)
            self._datasets.clear()
            return count

    def stats(self) -> SchedulerStats:
        with self._lock:
            queued = sum(1 for job in self._pending.values() if not job.taken)
            background = [s for s in self._datasets.values() if s.background and s.cursor <= s.dataset.last_index]
            return SchedulerStats(
                datasets=len(self._datasets),
                interactive_queued=queued,
                in_flight=len(self._pending) - queued,
                background_datasets=len(background),
                background_remaining=sum(s.dataset.last_index - s.cursor + 1 for s in background),
                awaited=sum(len(s.awaited) for s in self._datasets.values()),
                background_paused=self._background_paused,
                computed_interactive=self._computed[Lane.INTERACTIVE],
                computed_background=self._computed[Lane.BACKGROUND],
                coalesced=self._coalesced,
                promoted=self._promoted,
                stale_dropped=self._stale_dropped,
                failed=self._failed,
            )

    # -- internals (lock held) ------------------------------------------------------------

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            raise self._closed

    def _state_for(self, dataset: Dataset) -> tuple[_DatasetState, bool]:
        state = self._datasets.get(dataset.handle)
        if state is not None:
            return state, False
        state = _DatasetState(dataset=dataset, generation=next(self._generations))
        self._datasets[dataset.handle] = state
        return state, True

    def _current(self, job: Job) -> bool:
        state = self._datasets.get(job.dataset.handle)
        return state is not None and state.generation == job.generation

    def _forget(self, handle: str) -> list[Future]:
        state = self._datasets.pop(handle)
        for job in state.jobs:
            if self._pending.get(job.key) is job:
                del self._pending[job.key]
        if self._results is not None:
            self._results.drop_group(handle)
        # Stack entries and the rotation slot are skipped lazily when reached.
        return [job.future for job in state.jobs] + list(state.awaited.values())

    def _notify(self) -> None:
        self._wake.notify()
        self._on_work()

    def _rotate(self, state: _DatasetState) -> None:
        if not state.rotating:
            state.rotating = True
            self._rotation.append(state.dataset.handle)
            self._notify()

    def _release_job(self, job: Job) -> None:
        if self._pending.get(job.key) is job:
            del self._pending[job.key]
        state = self._datasets.get(job.dataset.handle)
        if state is not None:
            state.jobs.discard(job)

    def _pop_interactive(self) -> list[Job]:
        jobs: list[Job] = []
        while self._stack and len(jobs) < self.batch_size:
            job = self._stack.pop()
            if job.taken:
                continue
            if not self._current(job):
                job.taken = True
                self._stale_dropped += 1
                continue
            job.taken = True
            jobs.append(job)
        return jobs

    def _take_background(self) -> tuple[list[Job], bool]:
        """(a chunk of one dataset's next indices, whether it has more to scan): watched
        indices behind its cursor first, then the cursor's."""
        assert self._results is not None
        if self._background_paused:
            return [], False
        for _ in range(len(self._rotation)):
            handle = self._rotation[0]
            state = self._datasets.get(handle)
            if state is None or not state.has_background_work():
                self._rotation.popleft()
                if state is not None:
                    state.rotating = False
                continue
            self._rotation.rotate(-1)  # the next take serves the next dataset
            jobs: list[Job] = []
            while state.revisit and len(jobs) < self.background_chunk:
                index = heapq.heappop(state.revisit)
                future = state.awaited.pop(index, None)
                if future is not None:  # else an interactive job took it over meanwhile
                    jobs.append(self._background_job(state, index, future))
            if jobs:
                return jobs, True
            scanned = 0
            last = state.dataset.last_index
            scan_limit = self.background_chunk * SCAN_LIMIT_PER_CHUNK
            while state.background and state.cursor <= last and len(jobs) < self.background_chunk and scanned < scan_limit:
                index = state.cursor
                state.cursor += 1
                scanned += 1
                if (handle, index) in self._pending or self.result_key(handle, index) in self._results:
                    continue
                jobs.append(self._background_job(state, index, state.awaited.pop(index, None) or Future()))
            if jobs:
                return jobs, True
            if state.has_background_work():
                return [], True
        return [], False

    def _background_job(self, state: _DatasetState, index: int, future: Future) -> Job:
        job = Job(state.dataset, index, state.generation, Lane.BACKGROUND, future=future, taken=True)
        self._pending[job.key] = job
        state.jobs.add(job)
        return job


def _fail(futures: list[Future], error: Exception) -> None:
    for future in futures:
        _resolve(future, error=error)


def _resolve(future: Future, *, result: Any = None, error: Exception | None = None) -> None:
    """Settle a future once; a second settle (close racing a finish) is ignored."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass

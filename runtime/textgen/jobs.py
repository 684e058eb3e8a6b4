"""Text generation and embeddings as a job kind of the device owner (device.py).

- Per model and lane: sequences waiting to join, and one continuous batch on the device.
  Interactive: each unit of work admits what waits (most recent first) and decodes one
  step. Background: a unit admits a few of what waits (oldest first,
  runtime.textgen.background_admit_sequences) or decodes a few steps
  (runtime.textgen.background_decode_steps), yielding between them, so an interactive
  request waits for at most one short background step.
- A request answered whole hears only of its sequences' ends; a stream hears every step.
- Identical seeded requests share one job (one computation); an interactive request that
  finds its twin still waiting in the background lane promotes it.
- A job whose last waiter went away (cancelled, disconnected, timed out) is cancelled: it
  leaves the device at its next step, or is skipped before it joins.
- Embedding inputs are embedded in batches, interactive ones first like the rest.

One lock guards the queues and the jobs' waiters; the device thread alone touches the
batches and never holds the lock across a device step. Listeners are called outside it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import msgspec
import torch
from torch.nn import functional as F

from dropwire.runtime.device import Lane, Work
from dropwire.runtime.errors import ComputeFailed
from dropwire.runtime.textgen.batch import DecodeBatch
from dropwire.runtime.textgen.models import TextModel
from dropwire.runtime.textgen.sequence import Listener, SamplingParams, SequenceJob, Snapshot, decoder_for

if TYPE_CHECKING:
    from dropwire.runtime.textgen.vllm_engine import VllmBatch

Batch = Union[DecodeBatch, "VllmBatch"]


class TextGenStats(msgspec.Struct, frozen=True):
    models: list[str]
    waiting_interactive: int
    waiting_background: int
    # Sequences on the device now (rows of the batches).
    active_interactive: int
    active_background: int
    completed_interactive: int
    completed_background: int
    # Jobs stopped because nobody waited for them any more.
    cancelled: int
    coalesced: int
    promoted: int
    prompt_tokens: int
    completion_tokens: int
    embedding_inputs: int
    failed: int


@dataclass(eq=False)
class EmbeddingJob:
    model: str
    lane: Lane
    inputs: list[list[int]]
    future: Future = field(default_factory=Future)


@dataclass(eq=False)
class _ModelLanes:
    model: TextModel
    waiting: dict[Lane, deque[SequenceJob]] = field(default_factory=lambda: {lane: deque() for lane in Lane})
    batches: dict[Lane, Batch] = field(init=False)
    embeddings: dict[Lane, deque[EmbeddingJob]] = field(default_factory=lambda: {lane: deque() for lane in Lane})

    def __post_init__(self) -> None:
        self.batches = {lane: batch_for(self.model, lane) for lane in Lane}

    def has_work(self, lane: Lane) -> bool:
        return bool(self.waiting[lane] or len(self.batches[lane]) or self.embeddings[lane])


class Subscription:
    """A request's hold on a job; ``cancel`` lets go (the job stops when nobody holds it)."""

    def __init__(self, jobs: TextGenJobs, job: SequenceJob, listener: Listener) -> None:
        self._jobs, self.job, self._listener = jobs, job, listener
        self._active = True

    def cancel(self) -> None:
        if self._active:
            self._active = False
            self._jobs._unsubscribe(self.job, self._listener)


class TextGenJobs:
    name = "textgen"

    def __init__(
        self,
        models: list[TextModel],
        *,
        max_batch: int,
        background_steps: int,
        background_admit: int,
        max_embedding_batch: int,
        wake: Callable[[], None],
        log: logging.Logger,
    ) -> None:
        self._lanes = {model.name: _ModelLanes(model) for model in models}
        self._max_batch = max_batch
        self._background_steps = background_steps
        self._background_admit = background_admit
        self._max_embedding_batch = max_embedding_batch
        self._wake = wake
        self._log = log
        self._lock = threading.Lock()
        self._shared: dict[tuple, SequenceJob] = {}
        self._closed: Exception | None = None
        self._turn = itertools.count()
        self._completed = {Lane.INTERACTIVE: 0, Lane.BACKGROUND: 0}
        self._cancelled = self._coalesced = self._promoted = self._failed = 0
        self._prompt_tokens = self._completion_tokens = self._embedding_inputs = 0

    # -- the event loop's side ------------------------------------------------------------

    def submit(
        self, model: TextModel, prompt: list[int], params: SamplingParams, lane: Lane, listener: Listener, *, shared: bool,
        every_step: bool = True,
    ) -> Subscription:
        """Start (or join, when ``shared`` and an identical one is in flight) a sequence;
        ``listener`` gets a snapshot now and after every device step that changed it, or,
        unless ``every_step`` (a request that answers whole), only the final one: a busy
        background batch then wakes the event loop once per sequence, not once per token."""
        key = (model.name, tuple(prompt), params) if shared else None
        with self._lock:
            if self._closed is not None:
                raise self._closed
            job = self._shared.get(key) if key is not None else None
            if job is not None and job.live:
                self._coalesced += 1
                if lane is Lane.INTERACTIVE and job.lane is Lane.BACKGROUND and not job.admitted:
                    self._lanes[model.name].waiting[Lane.BACKGROUND].remove(job)
                    job.lane = Lane.INTERACTIVE
                    self._lanes[model.name].waiting[Lane.INTERACTIVE].append(job)
                    self._promoted += 1
            else:
                job = SequenceJob(model.name, lane, prompt, params, key, model.eos_ids, decoder_for(model.tokenizer))
                if key is not None:
                    self._shared[key] = job
                self._lanes[model.name].waiting[lane].append(job)
                self._prompt_tokens += len(prompt)
            job.subscribers += 1
            job.listeners[listener] = every_step
            snapshot = job.snapshot()
            self._wake()
        listener(snapshot)
        return Subscription(self, job, listener)

    def embed(self, model: TextModel, inputs: list[list[int]], lane: Lane) -> Future:
        """A future of the inputs' embeddings (a float32 tensor [inputs, dim], L2-normalised)."""
        job = EmbeddingJob(model.name, lane, inputs)
        with self._lock:
            if self._closed is not None:
                raise self._closed
            self._lanes[model.name].embeddings[lane].append(job)
            self._wake()
        return job.future

    def _unsubscribe(self, job: SequenceJob, listener: Listener) -> None:
        with self._lock:
            del job.listeners[listener]
            job.subscribers -= 1
            if job.subscribers == 0 and job.live:
                job.cancelled = True
                self._cancelled += 1
                self._forget(job)
                if not job.admitted:
                    self._lanes[job.model].waiting[job.lane].remove(job)
                self._wake()  # the device drops its row at the next step

    # -- the device's side ----------------------------------------------------------------

    def take(self, lane: Lane) -> Work | None:
        with self._lock:
            if self._closed is not None:
                return None
            ready = [lanes for lanes in self._lanes.values() if lanes.has_work(lane)]
            if not ready:
                return None
            lanes = ready[next(self._turn) % len(ready)]
            if lanes.embeddings[lane]:
                return self._embed(lanes, lane)
        return self._generate(lanes, lane)

    def interactive_waiting(self) -> bool:
        with self._lock:
            return any(lanes.has_work(Lane.INTERACTIVE) for lanes in self._lanes.values())

    def close(self, error: Exception) -> None:
        """Refuse new work; every waiter gets ``error`` now."""
        with self._lock:
            if self._closed is not None:
                return
            self._closed = error
            jobs = []
            for lanes in self._lanes.values():
                for lane in Lane:
                    jobs.extend(lanes.waiting[lane])
                    jobs.extend(lanes.batches[lane].jobs)
                    lanes.waiting[lane].clear()
                    for embedding in lanes.embeddings[lane]:
                        if embedding.future.set_running_or_notify_cancel():
                            embedding.future.set_exception(error)
                    lanes.embeddings[lane].clear()
            for job in jobs:
                job.fail(error)
            self._shared.clear()
        self._publish(jobs)

    def flush(self) -> int:
        """After the device stopped: drop the batches (and their caches); how many rows."""
        rows = 0
        for lanes in self._lanes.values():
            for lane in Lane:
                rows += len(lanes.batches[lane])
                lanes.batches[lane] = batch_for(lanes.model, lane)
        return rows

    def stats(self) -> TextGenStats:
        with self._lock:
            lanes = list(self._lanes.values())
            return TextGenStats(
                models=list(self._lanes),
                waiting_interactive=sum(len(m.waiting[Lane.INTERACTIVE]) for m in lanes),
                waiting_background=sum(len(m.waiting[Lane.BACKGROUND]) for m in lanes),
                active_interactive=sum(len(m.batches[Lane.INTERACTIVE]) for m in lanes),
                active_background=sum(len(m.batches[Lane.BACKGROUND]) for m in lanes),
                completed_interactive=self._completed[Lane.INTERACTIVE],
                completed_background=self._completed[Lane.BACKGROUND],
                cancelled=self._cancelled,
                coalesced=self._coalesced,
                promoted=self._promoted,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                embedding_inputs=self._embedding_inputs,
                failed=self._failed,
            )

    def _generate(self, lanes: _ModelLanes, lane: Lane) -> Work:
        """One unit: newcomers' prefill (that is its device step), else decode steps."""
        batch = lanes.batches[lane]
        try:
            room = self._max_batch - len(batch)
            if lane is Lane.BACKGROUND:
                # A prefill is one device step that an interactive arrival may wait for: kept short.
                room = min(room, self._background_admit)
            joining = self._admit(lanes, lane, room=room)
            if joining:
                batch.join(joining)
                self._finish_step(batch, joining)
                return
            for step in range(1 if lane is Lane.INTERACTIVE else self._background_steps):
                if step:
                    yield
                self._finish_step(batch, [])  # rows cancelled meanwhile leave before the step
                if not len(batch):
                    return
                batch.step()
                self._finish_step(batch, list(batch.jobs))
        except Exception as exc:
            self._log.exception("text generation on %s failed", lanes.model.name)
            self._fail(batch, ComputeFailed(f"text generation on model {lanes.model.name!r} failed: {exc}"))

    def _admit(self, lanes: _ModelLanes, lane: Lane, room: int) -> list[SequenceJob]:
        """Waiting jobs that join the batch now: the most recent first (interactive), the
        oldest first (background)."""
        joining: list[SequenceJob] = []
        with self._lock:
            waiting = lanes.waiting[lane]
            while waiting and len(joining) < room:
                job = waiting.pop() if lane is Lane.INTERACTIVE else waiting.popleft()
                job.admitted = True
                joining.append(job)
        return joining

    def _finish_step(self, batch: Batch, jobs: list[SequenceJob]) -> None:
        with self._lock:
            for job in jobs:
                if job.done:
                    self._forget(job)
            gone = batch.leave()
            for job in gone:
                if job.done:
                    self._completed[job.lane] += 1
                    self._completion_tokens += len(job.tokens)
        self._publish(jobs)

    def _fail(self, batch: Batch, error: Exception) -> None:
        jobs = list(batch.jobs)
        with self._lock:
            for job in jobs:
                job.fail(error)
                self._forget(job)
            self._failed += len(jobs)
            batch.leave()
        self._publish(jobs)

    def _embed(self, lanes: _ModelLanes, lane: Lane) -> Work:
        with self._lock:
            queue = lanes.embeddings[lane]
            taken: list[EmbeddingJob] = []
            while queue and sum(len(job.inputs) for job in taken) < self._max_embedding_batch:
                job = queue.popleft()
                if job.future.set_running_or_notify_cancel():  # else its request gave up waiting
                    taken.append(job)
        if not taken:
            return
        try:
            vectors = embed(lanes.model, [inputs for job in taken for inputs in job.inputs])
        except Exception as exc:
            self._log.exception("embeddings on %s failed", lanes.model.name)
            error = ComputeFailed(f"embeddings on model {lanes.model.name!r} failed: {exc}")
            for job in taken:
                job.future.set_exception(error)
            return
        start = 0
        with self._lock:
            self._embedding_inputs += len(vectors)
        for job in taken:
            job.future.set_result(vectors[start : start + len(job.inputs)])
            start += len(job.inputs)
        yield from ()

    def _forget(self, job: SequenceJob) -> None:
        if job.key is not None and self._shared.get(job.key) is job:
            del self._shared[job.key]

    def _publish(self, jobs: list[SequenceJob]) -> None:
        with self._lock:
            calls: list[tuple[Listener, Snapshot]] = [
                (listener, job.snapshot()) for job in jobs for listener, every_step in job.listeners.items()
                if every_step or job.done
            ]
        for listener, snapshot in calls:
            listener(snapshot)


def batch_for(model: TextModel, lane: Lane) -> Batch:
    """The lane's batch: a KV-cache batch of ours (transformers), or requests in vLLM's engine."""
    if model.backend == "vllm":
        from dropwire.runtime.textgen.vllm_engine import VllmBatch

        return VllmBatch(model, lane)
    return DecodeBatch(model)


def embed(model: TextModel, inputs: list[list[int]]) -> torch.Tensor:
    """Pooled, L2-normalised last hidden states of each input, in one padded forward."""
    longest = max(len(ids) for ids in inputs)
    ids = torch.full((len(inputs), longest), model.pad_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), longest), dtype=torch.long)
    for row, tokens in enumerate(inputs):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    hidden = model.module(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    if model.pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    return F.normalize(pooled, dim=-1).cpu()

"""Text generation on the runtime's device owner, each figure against a baseline measured in
the same run (the embedded test model, transformers backend, CPU unless CUDA is present):

- Batched generation (every request submitted at once, one KV-cache batch) against the same
  requests one at a time: sequences/s and tokens/s. Target >= 5x.
- Interactive p99 latency of short completions while the background lane is saturated
  against the same with the background idle. Target <= 1.5x.

In-process (the job kind and the device owner the HTTP endpoints use), so the figures are
the device's, not HTTP's. No GPU machine was lent to this task: no CUDA or vLLM figures.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from dropwire.runtime.device import DeviceOwner, Lane
from dropwire.runtime.settings import TextGenSettings
from dropwire.runtime.textgen.jobs import TextGenJobs
from dropwire.runtime.textgen.models import load_models
from dropwire.runtime.textgen.sequence import SamplingParams, Snapshot

SETTINGS = TextGenSettings()
LOG = logging.getLogger("bench.textgen")
REQUESTS = 16
TOKENS = 48
SHORT_TOKENS = 8
CLICKS = 200
BLOCK = 25
PROMPTS = ["The fox", "The hare laughed", "A crow sat on", "Slow and steady", "The lion caught a little mouse"]


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        models = load_models(TextGenSettings(), default_dir=Path(folder) / "textgen", device_name="auto", seed=0, log=LOG)
        model = models[0]
        print(f"device: {model.device}; torch intra-op threads: {torch.get_num_threads()}; embedded test model built "
              f"and loaded in {time.perf_counter() - started:.1f} s; max_batch_sequences {SETTINGS.max_batch_sequences}, "
              f"background_decode_steps {SETTINGS.background_decode_steps}")
        owner = DeviceOwner([], LOG)
        jobs = TextGenJobs(models, max_batch=SETTINGS.max_batch_sequences, background_steps=SETTINGS.background_decode_steps,
                           background_admit=SETTINGS.background_admit_sequences, max_embedding_batch=SETTINGS.max_embedding_batch, wake=owner.wake, log=LOG)
        owner.add(jobs)
        owner.start()
        try:
            bench_batching(jobs, model)
            bench_interactive_latency(jobs, model)
        finally:
            jobs.close(RuntimeError("benchmark over"))
            owner.stop(30)


def submit(jobs: TextGenJobs, model, prompt: str, *, tokens: int, seed: int, lane: Lane) -> Future:
    """A future of the final snapshot (sampled at temperature 1, never shared)."""
    done: Future = Future()
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    params = SamplingParams(max_tokens=tokens, temperature=1.0, top_p=1.0, stop=(), seed=seed)

    def listener(snapshot: Snapshot) -> None:
        if snapshot.finish_reason is not None and not done.done():
            done.set_result(snapshot)

    subscription = jobs.submit(model, ids, params, lane, listener, shared=False)
    done.add_done_callback(lambda _: subscription.cancel())
    return done


def bench_batching(jobs: TextGenJobs, model) -> None:
    def run(batched: bool) -> tuple[float, int]:
        started = time.perf_counter()
        if batched:
            futures = [submit(jobs, model, PROMPTS[i % len(PROMPTS)], tokens=TOKENS, seed=i, lane=Lane.BACKGROUND)
                       for i in range(REQUESTS)]
            finals = [future.result(timeout=600) for future in futures]
        else:
            finals = [submit(jobs, model, PROMPTS[i % len(PROMPTS)], tokens=TOKENS, seed=i, lane=Lane.BACKGROUND)
                      .result(timeout=600) for i in range(REQUESTS)]
        return time.perf_counter() - started, sum(final.completion_tokens for final in finals)

    run(batched=False)  # warm-up
    alone_s, alone_tokens = run(batched=False)
    batch_s, batch_tokens = run(batched=True)
    print(f"\nGeneration, {REQUESTS} requests of up to {TOKENS} tokens (temperature 1, same seeds both ways):")
    print(f"  one at a time : {REQUESTS / alone_s:7.1f} sequences/s  {alone_tokens / alone_s:8.0f} tokens/s  "
          f"({alone_tokens} tokens)")
    print(f"  batched       : {REQUESTS / batch_s:7.1f} sequences/s  {batch_tokens / batch_s:8.0f} tokens/s  "
          f"({batch_tokens} tokens)")
    print(f"  ratio         : {alone_s / batch_s:7.2f}x sequences/s, "
          f"{(batch_tokens / batch_s) / (alone_tokens / alone_s):.2f}x tokens/s   (target >= 5x)")


def bench_interactive_latency(jobs: TextGenJobs, model) -> None:
    """Blocks of clicks, idle and saturated in turn, so a drift of the shared machine's load
    falls on both sides alike."""
    rng = np.random.default_rng(0)

    def clicks(seed: int) -> list[float]:
        latencies = []
        for k in range(BLOCK):
            started = time.perf_counter()
            submit(jobs, model, PROMPTS[k % len(PROMPTS)], tokens=SHORT_TOKENS, seed=seed + k,
                   lane=Lane.INTERACTIVE).result(timeout=600)
            latencies.append(time.perf_counter() - started)
            time.sleep(rng.uniform(0.0, 0.005))  # land anywhere in the background's steps
        return latencies

    def saturated(stop: threading.Event) -> None:
        """Keep the background lane full: a new long request whenever one ends."""
        seed = 0

        def another() -> Future:
            nonlocal seed
            seed += 1
            return submit(jobs, model, PROMPTS[seed % len(PROMPTS)], tokens=256, seed=seed, lane=Lane.BACKGROUND)

        pending = [another() for _ in range(SETTINGS.max_batch_sequences * 2)]
        while not stop.is_set():
            pending = [future if not future.done() else another() for future in pending]
            time.sleep(0.01)
        for future in pending:
            future.cancel()  # lets go: the rows leave the device at its next step

    clicks(1000)  # warm-up
    idle: list[float] = []
    busy: list[float] = []
    rows = []
    for block in range(CLICKS // BLOCK // 2):
        idle += clicks(2000 + block * BLOCK)
        stop = threading.Event()
        feeder = threading.Thread(target=saturated, args=(stop,), daemon=True)
        feeder.start()
        while jobs.stats().active_background < SETTINGS.max_batch_sequences:
            time.sleep(0.01)
        busy += clicks(5000 + block * BLOCK)
        rows.append(jobs.stats().active_background)
        stop.set()
        feeder.join(30)
        while jobs.stats().active_background or jobs.stats().waiting_background:
            time.sleep(0.01)
    print(f"\nInteractive latency, {len(idle)} + {len(busy)} short completions ({SHORT_TOKENS} tokens) one after another, "
          f"in blocks of {BLOCK}, idle and saturated in turn:")
    print(f"  background idle      : p50 {np.median(idle) * 1e3:7.1f} ms   p99 {np.percentile(idle, 99) * 1e3:7.1f} ms")
    print(f"  background saturated : p50 {np.median(busy) * 1e3:7.1f} ms   p99 {np.percentile(busy, 99) * 1e3:7.1f} ms   "
          f"({min(rows)}-{max(rows)} background rows on the device)")
    print(f"  p50 ratio            : {np.median(busy) / np.median(idle):7.2f}x")
    print(f"  p99 ratio            : {np.percentile(busy, 99) / np.percentile(idle, 99):7.2f}x   (target <= 1.5x)")

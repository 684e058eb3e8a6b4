"""vLLM's engine as a text-generation backend: the optional extra ``vllm``, CUDA machines only.

vLLM keeps its own continuous batch and paged KV cache, so here it is driven through the
same job kind, lanes and endpoints as the transformers backend: a lane's batch is the set
of its requests inside the model's one engine; a device step is one ``engine.step()``
(which advances every request in the engine); interactive requests get vLLM priority 0 and
background ones 1 (``scheduling_policy="priority"``), so vLLM's scheduler also puts them
first; a sequence that ends here (stop sequence) or is cancelled is aborted in the engine.
Tokens are sampled by vLLM with the request's seed; stop sequences, max_tokens and the text
are decided by the same SequenceJob code as for transformers.

Not exercised by the test suite: the CPU set-up has neither vLLM nor a GPU.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import torch

from dropwire.runtime.device import Lane
from dropwire.runtime.errors import ModelLoadError
from dropwire.runtime.settings import TextModelSettings
from dropwire.runtime.textgen.models import TextModel
from dropwire.runtime.textgen.sequence import SequenceJob

PRIORITY = {Lane.INTERACTIVE: 0, Lane.BACKGROUND: 1}


class VllmEngine:
    """One vLLM engine and which job each of its requests belongs to (both lanes')."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.jobs: dict[str, SequenceJob] = {}

    def step(self) -> None:
        for output in self.engine.step():
            job = self.jobs.get(output.request_id)
            if job is None:
                continue
            generated = output.outputs[0].token_ids if output.outputs else []
            for token in generated[len(job.tokens) :]:
                if job.live:
                    job.accept(int(token))
            if output.finished and job.live:
                job.finish_reason = job.finish_reason or "length"


def load_vllm(spec: TextModelSettings, path: Path, device: torch.device, dtype: str, *, what: str) -> TextModel:
    try:
        from vllm import EngineArgs, LLMEngine  # pyright: ignore[reportMissingImports]
    except ImportError:
        raise ModelLoadError(
            f"{what}: backend 'vllm' needs vLLM, the optional extra `pip install 'dropwire[vllm]'` (GPU machines only)"
        ) from None
    if device.type != "cuda":
        raise ModelLoadError(f"{what}: backend 'vllm' needs a CUDA device (runtime.device), not {device}")
    try:
        engine = LLMEngine.from_engine_args(
            EngineArgs(model=str(path), dtype=dtype, scheduling_policy="priority", seed=0)
        )
    except Exception as exc:  # vLLM raises many types for a model it cannot serve
        raise ModelLoadError(f"{what} cannot be loaded by vLLM: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    tokenizer = engine.get_tokenizer()
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    return TextModel(
        name=spec.name,
        task=spec.task,
        backend="vllm",
        path=path,
        tokenizer=tokenizer,
        module=VllmEngine(engine),
        device=device,
        context_length=int(engine.model_config.max_model_len),
        eos_ids=frozenset(eos),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


class VllmBatch:
    """DecodeBatch's interface for one lane over the model's vLLM engine."""

    def __init__(self, model: TextModel, lane: Lane) -> None:
        self.model = model
        self.lane = lane
        self.jobs: list[SequenceJob] = []
        self._ids: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.jobs)

    def join(self, jobs: list[SequenceJob]) -> None:
        from vllm import SamplingParams  # pyright: ignore[reportMissingImports]
        from vllm.inputs import TokensPrompt  # pyright: ignore[reportMissingImports]

        engine: VllmEngine = self.model.module
        for job in jobs:
            request_id = uuid.uuid4().hex
            params = SamplingParams(
                n=1,
                max_tokens=job.params.max_tokens,
                temperature=job.params.temperature,
                top_p=job.params.top_p,
                seed=job.params.seed,
                detokenize=False,
            )
            engine.engine.add_request(request_id, TokensPrompt(prompt_token_ids=job.prompt), params,
                                      priority=PRIORITY[self.lane])
            engine.jobs[request_id] = job
            self._ids[id(job)] = request_id
        self.jobs.extend(jobs)

    def step(self) -> None:
        self.model.module.step()

    def leave(self) -> list[SequenceJob]:
        gone = [job for job in self.jobs if not job.live]
        if not gone:
            return []
        engine: VllmEngine = self.model.module
        ids = [self._ids.pop(id(job)) for job in gone]
        engine.engine.abort_request(ids)  # a no-op for requests vLLM already finished
        for request_id in ids:
            engine.jobs.pop(request_id, None)
        self.jobs = [job for job in self.jobs if job.live]
        return gone

"""The /v1 endpoints' logic: check a request against its model, turn it into sequences on the
device (jobs.py), and shape the answer as OpenAI does, whole or as server-sent events.

Every wait is bounded (runtime.textgen.request_timeout_s). A request whose client goes away
or whose wait ends lets go of its sequences, and a sequence nobody waits for leaves the
device at its next step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import torch

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.kit.headers import PRIORITY_HEADER
from dropwire.functions.kit.openai_errors import (
    ClientGone,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    openai_error_body,
)
from dropwire.runtime.device import DeviceOwner, Lane
from dropwire.runtime.errors import RequestTimedOut, ShuttingDown
from dropwire.runtime.settings import RuntimeSettings
from dropwire.runtime.textgen.jobs import Subscription, TextGenJobs, TextGenStats
from dropwire.runtime.textgen.lane_gate import LaneGate
from dropwire.runtime.textgen.models import TextModel, load_models
from dropwire.runtime.textgen.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    Delta,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    Model,
    ModelList,
    Usage,
)
from dropwire.runtime.textgen.sequence import SamplingParams, Snapshot

# OpenAI's defaults where a request leaves them out.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
MAX_STOP_SEQUENCES = 4
FINGERPRINT = "dropwire"

Disconnected = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Plan:
    """A request as sequences on the device: one per (prompt, choice)."""

    model: TextModel
    sequences: list[tuple[list[int], SamplingParams]]
    lane: Lane
    # Seeded: identical in-flight sequences share one computation.
    shared: bool
    prompt_tokens: int
    request_id: str
    created: int = field(default_factory=lambda: int(time.time()))


class TextGenService:
    """Text generation and embeddings: their models and job kind. The host (host.py) runs
    the lifecycle steps of every service in order and owns the device."""

    name = "textgen"

    def __init__(self, settings: RuntimeSettings, *, default_dir: Path, log: logging.Logger) -> None:
        self.settings = settings.textgen
        self._device_name = settings.device
        self._seed = settings.seed
        self._default_dir = default_dir
        self._log = log
        self._accepting = False
        self.models: dict[str, TextModel] = {}
        self.jobs: TextGenJobs | None = None
        #: The optional upstream-style rate limit of its /v1 routes (textgen/rate_limit.py).
        self.rate_limit = None
        self._gate = LaneGate()

    # -- lifecycle (called by the host, in this order) ------------------------------------

    def open_queues(self, device: DeviceOwner) -> None:
        """The queues live with the job kind, which needs the models: see open_caches."""

    def load_models(self) -> None:
        self._log.info("starting: text models")
        for model in load_models(
            self.settings, default_dir=self._default_dir, device_name=self._device_name, seed=self._seed, log=self._log
        ):
            self.models[model.name] = model
            self._log.info(
                "text model %s (%s, %s) loaded from %s on %s (context %d)",
                model.name, model.task, model.backend, model.path, model.device, model.context_length,
            )

    def open_caches(self, device: DeviceOwner) -> None:
        s = self.settings
        self.jobs = TextGenJobs(
            list(self.models.values()),
            max_batch=s.max_batch_sequences,
            background_steps=s.background_decode_steps,
            background_admit=s.background_admit_sequences,
            max_embedding_batch=s.max_embedding_batch,
            wake=device.wake,
            log=self._log,
        )
        device.add(self.jobs)

    def start_accepting(self) -> None:
        self._accepting = True

    def stop_accepting(self) -> None:
        self._accepting = False

    def close_queues(self, error: Exception) -> None:
        if self.jobs is not None:
            self.jobs.close(error)

    def unload(self) -> None:
        on_cuda = any(model.device.type == "cuda" for model in self.models.values())
        self.models = {}
        if on_cuda:
            torch.cuda.empty_cache()

    def flush(self) -> str:
        rows = self.jobs.flush() if self.jobs is not None else 0
        return f"text batches ({rows} sequences)"

    def stats(self) -> TextGenStats:
        return self._jobs().stats()

    # -- operations -----------------------------------------------------------------------

    def list_models(self) -> ModelList:
        self._ensure_accepting()
        return ModelList(data=[Model(id=m.name, created=m.created) for m in self.models.values()])

    async def chat(
        self, body: ChatCompletionRequest, lane: Lane, disconnected: Disconnected
    ) -> ChatCompletion | AsyncIterator[bytes]:
        self._ensure_accepting()
        await self._gate.turn(lane)
        model = self._model(body.model, "generate")
        if body.logprobs or body.top_logprobs:
            raise InvalidRequest("logprobs are not supported by this runtime", param="logprobs")
        if body.tools:
            raise InvalidRequest("tools (function calling) are not supported by this runtime", param="tools")
        if body.response_format and body.response_format.get("type", "text") != "text":
            raise InvalidRequest("only response_format type 'text' is supported", param="response_format")
        prompt = _tokens(model, _chat_text(model, body.messages))
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = self._sampling(model, body, [prompt], max_tokens, default_max=self.settings.default_max_tokens)
        plan = Plan(model, [(prompt, choice) for choice in params], lane, body.seed is not None, len(prompt),
                    f"chatcmpl-{uuid.uuid4().hex}")
        if body.stream:
            return self._chat_stream(plan, include_usage=bool(body.stream_options and body.stream_options.include_usage))
        finals = await self._collect(plan, disconnected)
        return ChatCompletion(
            id=plan.request_id,
            created=plan.created,
            model=model.name,
            system_fingerprint=FINGERPRINT,
            choices=[
                ChatChoice(index=i, message=AssistantMessage(content=s.text), finish_reason=s.finish_reason or "stop")
                for i, s in enumerate(finals)
            ],
            usage=_usage(plan.prompt_tokens, finals),
        )

    async def complete(
        self, body: CompletionRequest, lane: Lane, disconnected: Disconnected
    ) -> Completion | AsyncIterator[bytes]:
        self._ensure_accepting()
        await self._gate.turn(lane)
        model = self._model(body.model, "generate")
        for name, value, default in [("echo", body.echo, False), ("suffix", body.suffix, None), ("logprobs", body.logprobs, None)]:
            if value not in (default, None):
                raise InvalidRequest(f"{name} is not supported by this runtime", param=name)
        if body.best_of not in (None, 1):
            raise InvalidRequest("best_of other than 1 is not supported by this runtime", param="best_of")
        prompts = _completion_prompts(model, body.prompt)
        params = self._sampling(model, body, prompts, body.max_tokens, default_max=COMPLETIONS_DEFAULT_MAX_TOKENS)
        plan = Plan(model, [(prompt, choice) for prompt in prompts for choice in params], lane, body.seed is not None,
                    sum(len(prompt) for prompt in prompts), f"cmpl-{uuid.uuid4().hex}")
        if body.stream:
            return self._completion_stream(plan, include_usage=bool(body.stream_options and body.stream_options.include_usage))
        finals = await self._collect(plan, disconnected)
        return Completion(
            id=plan.request_id,
            created=plan.created,
            model=model.name,
            system_fingerprint=FINGERPRINT,
            choices=[CompletionChoice(index=i, text=s.text, finish_reason=s.finish_reason or "stop") for i, s in enumerate(finals)],
            usage=_usage(plan.prompt_tokens, finals),
        )

    async def embeddings(self, body: EmbeddingRequest, lane: Lane) -> EmbeddingList:
        self._ensure_accepting()
        await self._gate.turn(lane)
        model = self._model(body.model, "embed")
        if body.dimensions is not None:
            raise InvalidRequest("dimensions is not supported by this runtime (the model's own size is used)",
                                 param="dimensions")
        inputs = _embedding_inputs(model, body.input)
        future = self._jobs().embed(model, inputs, lane)
        timeout = self.settings.request_timeout_s
        try:
            with self._gate.holding(lane):
                vectors = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            raise _timed_out(timeout) from None
        await self._gate.turn(lane)
        data = []
        for index, vector in enumerate(vectors.numpy().astype("<f4")):
            encoded = base64.b64encode(vector.tobytes()).decode() if body.encoding_format == "base64" else vector.tolist()
            data.append(Embedding(index=index, embedding=encoded))
        tokens = sum(len(ids) for ids in inputs)
        return EmbeddingList(data=data, model=model.name, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))

    # -- requests into sequences ----------------------------------------------------------

    def _sampling(
        self, model: TextModel, body: ChatCompletionRequest | CompletionRequest, prompts: list[list[int]],
        max_tokens: int | None, *, default_max: int,
    ) -> list[SamplingParams]:
        """One SamplingParams per choice (n); checks the prompts against the context."""
        if body.n > self.settings.max_choices:
            raise InvalidRequest(f"n is {body.n}; at most {self.settings.max_choices} choices "
                                 "(setting runtime.textgen.max_choices)", param="n")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(body, name):
                raise InvalidRequest(f"{name} is not supported by this runtime", param=name)
        if body.logit_bias:
            raise InvalidRequest("logit_bias is not supported by this runtime", param="logit_bias")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stop) > MAX_STOP_SEQUENCES or any(not s for s in stop):
            raise InvalidRequest(f"stop takes at most {MAX_STOP_SEQUENCES} non-empty sequences", param="stop")
        context = model.context_length
        longest = max(len(prompt) for prompt in prompts)
        if longest >= context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, your prompt has {longest} "
                "tokens, leaving no room for a completion. Please reduce the length of the prompt.",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
            )
        if max_tokens is not None and longest + max_tokens > context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} in the completion). "
                "Please reduce the length of the prompt or max_tokens.",
                param="max_tokens",
            )
        tokens = max_tokens if max_tokens is not None else min(default_max, context - longest)
        temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
        top_p = DEFAULT_TOP_P if body.top_p is None else body.top_p
        # Choice i of a seeded request has its own seed derived from it: the same every time.
        base = body.seed if body.seed is not None else secrets.randbits(62)
        return [
            SamplingParams(max_tokens=tokens, temperature=temperature, top_p=top_p, stop=stop,
                           seed=(base * 1_000_003 + choice) % 2**63)
            for choice in range(body.n)
        ]

    async def _collect(self, plan: Plan, disconnected: Disconnected) -> list[Snapshot]:
        """Every sequence's final snapshot; lets go of them when the client goes away."""

        async def collect() -> list[Snapshot]:
            finals: dict[int, Snapshot] = {}
            async for index, snapshot in self._run(plan, every_step=False):
                if snapshot.finish_reason is not None:
                    finals[index] = snapshot
            return [finals[i] for i in range(len(plan.sequences))]

        work = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()  # the client went away (or this handler was cancelled)
                await asyncio.gather(work, return_exceptions=True)  # its sequences are let go of
        if work.cancelled():
            raise ClientGone("the client disconnected before the completion was ready; its sequences were stopped")
        finals = work.result()
        await self._gate.turn(plan.lane)  # a background answer is shaped once interactive work is off the device
        return finals

    async def _run(self, plan: Plan, *, every_step: bool = True) -> AsyncIterator[tuple[int, Snapshot]]:
        """(sequence index, snapshot) as the device produces them (every step, or only the
        final ones), until every one ended."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Snapshot]] = asyncio.Queue()

        def listener(index: int) -> Callable[[Snapshot], None]:
            def relay(snapshot: Snapshot) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                    loop.call_soon_threadsafe(events.put_nowait, (index, snapshot))

            return relay

        jobs = self._jobs()
        subscriptions: list[Subscription] = []
        timeout = self.settings.request_timeout_s
        deadline = loop.time() + timeout
        with self._gate.holding(plan.lane):
            try:
                for index, (prompt, params) in enumerate(plan.sequences):
                    subscriptions.append(jobs.submit(plan.model, prompt, params, plan.lane, listener(index),
                                                     shared=plan.shared, every_step=every_step))
                ended: set[int] = set()
                while len(ended) < len(plan.sequences):
                    index, snapshot = await _next_event(events, deadline - loop.time(), timeout)
                    if index in ended:
                        continue
                    if snapshot.error is not None:
                        raise snapshot.error
                    if snapshot.finish_reason is not None:
                        ended.add(index)
                    yield index, snapshot
            finally:
                for subscription in subscriptions:
                    subscription.cancel()

    # -- streams: server-sent events as OpenAI sends them ---------------------------------

    async def _chat_stream(self, plan: Plan, *, include_usage: bool) -> AsyncIterator[bytes]:
        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
            return _sse(ChatCompletionChunk(id=plan.request_id, created=plan.created, model=plan.model.name,
                                            choices=choices, system_fingerprint=FINGERPRINT, usage=usage))

        for index in range(len(plan.sequences)):
            yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        async for event in self._deltas(plan, include_usage):
            if isinstance(event, bytes):
                yield event
            elif isinstance(event, Usage):
                yield chunk([], event)
            else:
                index, text, finish = event
                yield chunk([ChunkChoice(index=index, delta=Delta(content=text) if text else Delta(),
                                         finish_reason=finish)])

    async def _completion_stream(self, plan: Plan, *, include_usage: bool) -> AsyncIterator[bytes]:
        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
            return _sse(Completion(id=plan.request_id, created=plan.created, model=plan.model.name, choices=choices,
                                   usage=usage, system_fingerprint=FINGERPRINT))

        async for event in self._deltas(plan, include_usage):
            if isinstance(event, bytes):
                yield event
            elif isinstance(event, Usage):
                yield chunk([], event)
            else:
                index, text, finish = event
                yield chunk([CompletionChoice(index=index, text=text, finish_reason=finish)])

    async def _deltas(self, plan: Plan, include_usage: bool) -> AsyncIterator[tuple[int, str, str | None] | Usage | bytes]:
        """New text per sequence and its end, then the usage (when asked), then [DONE]. An
        error mid-stream goes out as OpenAI sends it, a data event holding ``error``."""
        sent = [0] * len(plan.sequences)
        finals: list[Snapshot] = []
        try:
            async for index, snapshot in self._run(plan):
                text = snapshot.text[sent[index]:]
                sent[index] = len(snapshot.text)
                if text:
                    yield index, text, None
                if snapshot.finish_reason is not None:
                    finals.append(snapshot)
                    yield index, "", snapshot.finish_reason
        except DropwireError as exc:
            yield _sse(openai_error_body(exc))
            return
        if include_usage:
            yield _usage(plan.prompt_tokens, finals)
        yield b"data: [DONE]\n\n"

    # -- internals ------------------------------------------------------------------------

    def _ensure_accepting(self) -> None:
        if not self._accepting:
            raise ShuttingDown("the runtime is shutting down and accepts no new requests")

    def _model(self, name: str, task: str) -> TextModel:
        model = self.models.get(name)
        if model is None or model.task != task:
            fitting = sorted(m.name for m in self.models.values() if m.task == task)
            raise ModelNotFound(
                f"The model `{name}` does not exist or is not served for "
                f"{'embeddings' if task == 'embed' else 'text generation'} here; served: {', '.join(fitting) or 'none'}",
                model=name,
            )
        return model

    def _jobs(self) -> TextGenJobs:
        if self.jobs is None:
            raise ShuttingDown("the runtime is not started")
        return self.jobs


def lane_of(header: str | None) -> Lane:
    value = (header or Lane.INTERACTIVE.value).strip().lower()
    try:
        return Lane(value)
    except ValueError:
        raise InvalidRequest(
            f"header {PRIORITY_HEADER} is {header!r}; expected 'interactive' (the default) or 'background'",
            param=PRIORITY_HEADER,
        ) from None


def _chat_text(model: TextModel, messages: list[ChatMessage]) -> str:
    if not messages:
        raise InvalidRequest("messages must hold at least one message", param="messages")
    turns = []
    for position, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            if any(part.type != "text" or part.text is None for part in content):
                raise InvalidRequest(f"messages[{position}]: only text content parts are supported",
                                     param=f"messages[{position}].content")
            content = "".join(part.text or "" for part in content)
        role = "system" if message.role == "developer" else message.role
        turns.append({"role": role, "content": content or ""})
    if getattr(model.tokenizer, "chat_template", None):
        return model.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return "".join(f"{turn['role']}: {turn['content']}\n" for turn in turns) + "assistant:"


def _tokens(model: TextModel, text: str) -> list[int]:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        bos = model.tokenizer.bos_token_id
        if bos is None:
            raise InvalidRequest("the prompt is empty and the model has no start token to begin from", param="prompt")
        ids = [bos]
    return ids


def _completion_prompts(model: TextModel, prompt: str | list) -> list[list[int]]:
    if isinstance(prompt, str):
        return [_tokens(model, prompt)]
    if not prompt:
        raise InvalidRequest("prompt must not be an empty list", param="prompt")
    if all(isinstance(item, str) for item in prompt):
        return [_tokens(model, text) for text in prompt]
    if all(isinstance(item, int) for item in prompt):
        return [_checked_ids(model, prompt, "prompt")]
    if all(isinstance(item, list) for item in prompt):
        return [_checked_ids(model, ids, f"prompt[{i}]") for i, ids in enumerate(prompt)]
    raise InvalidRequest("prompt must be a string, or a list of strings, of token ids, or of lists of token ids "
                         "(not a mix)", param="prompt")


def _checked_ids(model: TextModel, ids: list[int], param: str) -> list[int]:
    vocab = len(model.tokenizer)
    if not ids:
        raise InvalidRequest(f"{param} is an empty list of token ids", param=param)
    bad = next((token for token in ids if not 0 <= token < vocab), None)
    if bad is not None:
        raise InvalidRequest(f"{param} holds token id {bad}; this model's ids are 0..{vocab - 1}", param=param)
    return list(ids)


def _embedding_inputs(model: TextModel, value: str | list) -> list[list[int]]:
    if isinstance(value, str):
        texts: list = [value]
    elif value and all(isinstance(item, int) for item in value):
        texts = [value]
    elif all(isinstance(item, (str, list)) for item in value):
        texts = list(value)
    else:
        raise InvalidRequest("input must be a string, or a list of strings, of token ids, or of lists of token ids "
                             "(not a mix)", param="input")
    if not texts:
        raise InvalidRequest("input must not be empty", param="input")
    inputs = []
    for position, item in enumerate(texts):
        param = f"input[{position}]" if not isinstance(value, str) else "input"
        if isinstance(item, str):
            if not item:
                raise InvalidRequest(f"{param} is an empty string", param=param)
            ids = model.tokenizer(item, add_special_tokens=False)["input_ids"]
        else:
            ids = _checked_ids(model, item, param)
        if len(ids) > model.context_length:
            raise ContextLengthExceeded(
                f"{param} has {len(ids)} tokens; this model's maximum context length is {model.context_length} tokens",
                param=param,
            )
        inputs.append(ids)
    return inputs


async def _next_event(events: asyncio.Queue, remaining: float, timeout: float) -> tuple[int, Snapshot]:
    """The next event, waiting at most ``remaining`` seconds. Not asyncio.wait_for: before
    Python 3.12 it swallows a cancellation that meets an already-ready result, and a busy
    sequence always has one ready, so a request that went away would never let go of it."""
    getter = asyncio.ensure_future(events.get())
    try:
        done, _ = await asyncio.wait({getter}, timeout=max(0.0, remaining))
    except asyncio.CancelledError:
        getter.cancel()
        raise
    if not done:
        getter.cancel()
        raise _timed_out(timeout)
    return getter.result()


def _usage(prompt_tokens: int, finals: list[Snapshot]) -> Usage:
    completion = sum(s.completion_tokens for s in finals)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)


def _sse(chunk: msgspec.Struct) -> bytes:
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def _timed_out(timeout: float) -> RequestTimedOut:
    return RequestTimedOut(
        f"the generation did not end within {timeout}s (setting runtime.textgen.request_timeout_s); "
        "it was stopped and freed the device"
    )


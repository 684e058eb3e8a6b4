"""One sequence being generated (one choice of a request): its prompt, sampling parameters,
the tokens and text so far, and when and why it ends.

The device thread appends tokens; the text it publishes holds back what might still turn
into a stop sequence or an unfinished UTF-8 character, so a stream never has to take back
what it sent. Sampling is per sequence with its own seeded generator: a seed gives the same
tokens whichever batch the sequence shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dropwire.runtime.device import Lane


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int


@dataclass(frozen=True)
class Snapshot:
    """What a waiter sees: the published text, tokens generated, and the end (if ended)."""

    text: str
    completion_tokens: int
    finish_reason: str | None
    error: Exception | None = None


Listener = Callable[[Snapshot], None]


@dataclass(eq=False)
class SequenceJob:
    model: str
    lane: Lane
    prompt: list[int]
    params: SamplingParams
    # Identical seeded requests share a job: its key; None for unseeded ones.
    key: tuple | None
    eos_ids: frozenset[int]
    decode: Callable[[list[int]], str]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: Exception | None = None
    # Waiting requests; at zero the job is cancelled and leaves the device at its next step.
    subscribers: int = 0
    cancelled: bool = False
    admitted: bool = False
    # Each waiting request's listener, and whether it wants every step (else the final snapshot only).
    listeners: dict[Listener, bool] = field(default_factory=dict)
    generator: torch.Generator = field(init=False)
    _published: str = ""
    # Incremental detokenizing: tokens before _read are in text; the window starts at _prefix.
    _prefix: int = 0
    _read: int = 0

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    @property
    def live(self) -> bool:
        """Still worth device time."""
        return not self.done and not self.cancelled

    def snapshot(self) -> Snapshot:
        return Snapshot(self._published, len(self.tokens), self.finish_reason, self.error)

    def accept(self, token: int) -> None:
        """Append one generated token (device thread) and decide whether the sequence ended."""
        if token in self.eos_ids:
            self._flush()
            self.tokens.append(token)
            self.finish_reason = "stop"
            self._published = self.text
            return
        self.tokens.append(token)
        searched = len(self.text)
        self._detokenize()
        # The earliest of the stops that occur ends the text (one token may hold several).
        found = [at for stop in self.params.stop if (at := self.text.find(stop, max(0, searched - len(stop) + 1))) >= 0]
        if found:
            self.text = self.text[:min(found)]
            self.finish_reason = "stop"
            self._published = self.text
            return
        if len(self.tokens) >= self.params.max_tokens:
            self._flush()
            self.finish_reason = "length"
            self._published = self.text
            return
        self._published = self.text[: len(self.text) - self._held_back()]

    def _detokenize(self) -> None:
        """Append the new token's text, decoding only a short window (vLLM's incremental
        detokenizer): the text before ``_read`` is final; a window that ends in an
        unfinished UTF-8 character waits for the next token."""
        window = self.decode(self.tokens[self._prefix : self._read])
        extended = self.decode(self.tokens[self._prefix :])
        if len(extended) > len(window) and not extended.endswith("\ufffd"):
            self.text += extended[len(window) :]
            self._prefix, self._read = self._read, len(self.tokens)

    def _flush(self) -> None:
        """At the end: whatever the window still holds, finished character or not."""
        window = self.decode(self.tokens[self._prefix : self._read])
        rest = self.decode(self.tokens[self._prefix :])
        if len(rest) > len(window):
            self.text += rest[len(window) :]
            self._prefix = self._read = len(self.tokens)

    def fail(self, error: Exception) -> None:
        self.error = error

    def _held_back(self) -> int:
        """Characters at the end that may still change: the start of a stop sequence."""
        text = self.text
        hold = 0
        for stop in self.params.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        return hold


def sample(logits: torch.Tensor, jobs: list[SequenceJob]) -> list[int]:
    """One next token per row of ``logits`` [rows, vocab], each with its job's parameters."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1).tolist()
    tokens = []
    for row, job in enumerate(jobs):
        params = job.params
        if params.temperature == 0:
            tokens.append(greedy[row])
            continue
        probs = torch.softmax(logits[row] / params.temperature, dim=-1)
        if params.top_p < 1.0:
            ordered, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always).
            outside = ordered.cumsum(dim=-1) - ordered > params.top_p
            ordered[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, ordered)
        tokens.append(int(torch.multinomial(probs.cpu(), 1, generator=job.generator)))
    return tokens


def decoder_for(tokenizer: Any) -> Callable[[list[int]], str]:
    return lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True)

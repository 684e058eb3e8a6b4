"""A continuous batch over one KV cache (transformers backend): sequences join between decode
steps and leave as soon as they end or are cancelled, freeing their row at once.

Rows are left-padded to one cache length; each row's positions count only its own tokens
(attention mask and position ids), so a sequence computes the same whichever rows it
shares the batch with. Joining prefills the newcomers in one forward and pads the shorter
of the two caches on the left; leaving selects the remaining rows and trims the columns
that no row attends to any more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch.nn import functional as F

from dropwire.runtime.textgen.models import TextModel
from dropwire.runtime.textgen.sequence import SequenceJob, sample

if TYPE_CHECKING:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer


class DecodeBatch:
    def __init__(self, model: TextModel) -> None:
        self.model = model
        self.jobs: list[SequenceJob] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cache length], 1 where a row attends
        self._positions: torch.Tensor | None = None  # [rows]: position of each row's next token
        self._next: torch.Tensor | None = None  # [rows]: each row's last sampled token

    def __len__(self) -> int:
        return len(self.jobs)

    def join(self, jobs: list[SequenceJob]) -> None:
        """Prefill ``jobs`` and add them; each gets its first token."""
        from transformers import DynamicCache

        device = self.model.device
        longest = max(len(job.prompt) for job in jobs)
        ids = torch.full((len(jobs), longest), self.model.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), longest), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, longest - len(job.prompt) :] = torch.tensor(job.prompt)
            mask[row, longest - len(job.prompt) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self.model.module(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        ).logits[:, -1]
        tokens = sample(logits, jobs)
        for job, token in zip(jobs, tokens, strict=False):
            job.accept(token)
        next_tokens = torch.tensor(tokens, device=device)
        next_positions = positions[:, -1] + 1
        if self._cache is None:
            self._cache, self._mask, self._positions, self._next = cache, mask, next_positions, next_tokens
        else:
            assert self._mask is not None and self._positions is not None and self._next is not None
            width = max(self._mask.shape[1], mask.shape[1])
            self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
            for old, new in zip(_layers(self._cache), _layers(cache), strict=True):
                (old_keys, old_values), (new_keys, new_values) = _kv(old), _kv(new)
                old.keys = torch.cat([_pad_left(old_keys, width, dim=2), _pad_left(new_keys, width, dim=2)])
                old.values = torch.cat([_pad_left(old_values, width, dim=2), _pad_left(new_values, width, dim=2)])
            self._positions = torch.cat([self._positions, next_positions])
            self._next = torch.cat([self._next, next_tokens])
        self.jobs.extend(jobs)

    def step(self) -> None:
        """One decode step: one more token for every row."""
        assert self._mask is not None and self._positions is not None and self._next is not None
        self._mask = F.pad(self._mask, (0, 1), value=1)
        logits = self.model.module(
            input_ids=self._next[:, None],
            attention_mask=self._mask,
            position_ids=self._positions[:, None],
            cache=self._cache,
            use_cache=True,
        ).logits[:, -1]
        tokens = sample(logits, self.jobs)
        for job, token in zip(self.jobs, tokens, strict=False):
            job.accept(token)
        self._next = torch.tensor(tokens, device=self.model.device)
        self._positions = self._positions + 1

    def leave(self) -> list[SequenceJob]:
        """Remove the rows that ended or were cancelled; returns their jobs."""
        keep = [row for row, job in enumerate(self.jobs) if job.live]
        if len(keep) == len(self.jobs):
            return []
        gone = [job for job in self.jobs if not job.live]
        if not keep:
            self.jobs, self._cache, self._mask, self._positions, self._next = [], None, None, None, None
            return gone
        assert self._cache is not None
        assert self._mask is not None and self._positions is not None and self._next is not None
        rows = torch.tensor(keep, device=self.model.device)
        self._cache.batch_select_indices(rows)
        self._mask = self._mask[rows]
        self._positions, self._next = self._positions[rows], self._next[rows]
        self.jobs = [self.jobs[row] for row in keep]
        # Columns of padding that no remaining row attends to.
        unused = int(self._mask.any(dim=0).int().argmax())
        if unused:
            self._mask = self._mask[:, unused:]
            for layer in _layers(self._cache):
                keys, values = _kv(layer)
                layer.keys, layer.values = keys[:, :, unused:], values[:, :, unused:]
        return gone


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    # transformers types DynamicCache.layers as every kind of layer (linear attention, dummy);
    # the text models here are full attention, whose layers are DynamicLayer.
    return cast("list[DynamicLayer]", cache.layers)


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's keys and values: both set once a forward has filled the cache."""
    assert layer.keys is not None and layer.values is not None
    return layer.keys, layer.values


def _pad_left(tensor: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
    return F.pad(tensor, pad)

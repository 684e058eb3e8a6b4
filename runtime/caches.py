"""A least-recently-used cache bounded by bytes, with hit/miss/eviction counts.

Thread-safe: the event loop reads it while the device worker fills it. Entries may belong
to a group (a dataset handle) so all results of one dataset go in one call. Eviction
callbacks run after the cache's lock is released, so they may take other locks.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CacheStats(msgspec.Struct, frozen=True):
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


@dataclass
class _Entry(Generic[V]):
    value: V
    nbytes: int
    group: Hashable | None


class BoundedCache(Generic[K, V]):
    def __init__(self, max_bytes: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._groups: dict[Hashable, set[K]] = {}
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            self._entries.move_to_end(key)
            return entry.value

    def __contains__(self, key: K) -> bool:
        """Presence without counting a hit or miss or refreshing recency."""
        with self._lock:
            return key in self._entries

    def put(self, key: K, value: V, nbytes: int, group: Hashable | None = None) -> bool:
        """Store, evicting the least recently used; False when the value alone is too big."""
        if nbytes > self.max_bytes:
            return False
        evicted: list[tuple[K, V]] = []
        with self._lock:
            self._remove(key)
            self._entries[key] = _Entry(value, nbytes, group)
            self._bytes += nbytes
            if group is not None:
                self._groups.setdefault(group, set()).add(key)
            while self._bytes > self.max_bytes:
                old_key = next(iter(self._entries))
                evicted.append((old_key, self._remove(old_key).value))  # type: ignore[union-attr]
                self._evictions += 1
        if self._on_evict:
            for old_key, old_value in evicted:
                self._on_evict(old_key, old_value)
        return True

    def pop(self, key: K) -> V | None:
        with self._lock:
            entry = self._remove(key)
        return entry.value if entry else None

    def drop_group(self, group: Hashable) -> int:
        with self._lock:
            keys = list(self._groups.get(group, ()))
            for key in keys:
                self._remove(key)
        return len(keys)

    def group_size(self, group: Hashable) -> int:
        with self._lock:
            return len(self._groups.get(group, ()))

    def clear(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            self._groups.clear()
            self._bytes = 0
        return count

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                entries=len(self._entries),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )

    def _remove(self, key: K) -> _Entry[V] | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
            if entry.group is not None:
                members = self._groups[entry.group]
                members.discard(key)
                if not members:
                    del self._groups[entry.group]
        return entry

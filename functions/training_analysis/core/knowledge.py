"""The knowledge base shipped with the product (knowledge_base.json: versioned entries, each
with its sources), ranked by BM25 (bm25s), filtered by domain and query type, each answer
with a confidence. Answers are cached with a TTL and a size bound, and the hit rate counted."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from importlib import resources
from typing import Literal, cast

import msgspec
from cachetools import TTLCache

Domain = Literal["training", "data", "optimization", "general"]
QueryType = Literal["best_practice", "diagnosis", "troubleshooting"]
# A BM25 score s becomes confidence 1 - exp(-s / SCALE): 0 for no match, near 1 for a strong one.
CONFIDENCE_SCALE = 3.0


class KnowledgeEntry(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    domain: str
    query_type: str
    title: str
    content: str
    tags: list[str] = msgspec.field(default_factory=list)
    sources: list[str] = msgspec.field(default_factory=list)


class KnowledgeFile(msgspec.Struct, kw_only=True, frozen=True):
    version: str
    entries: list[KnowledgeEntry]


class KnowledgeQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    query: str
    domain: Domain | None = None
    query_type: QueryType | None = None
    max_results: int = 5

    def __post_init__(self) -> None:
        if not self.query.strip():
            raise ValueError("query must not be empty")
        if not 1 <= self.max_results <= 50:
            raise ValueError("max_results must be between 1 and 50")


class KnowledgeItem(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    title: str
    content: str
    domain: str
    query_type: str
    sources: list[str]
    score: float
    confidence: float


class KnowledgeResponse(msgspec.Struct, kw_only=True, frozen=True):
    query: str
    results: list[KnowledgeItem]
    knowledge_base_version: str
    cached: bool = False


class CacheStats(msgspec.Struct, kw_only=True, frozen=True):
    hits: int
    misses: int
    hit_rate: float
    size: int
    max_size: int
    ttl_seconds: float
    knowledge_base_version: str
    entries: int


@functools.cache
def shipped() -> KnowledgeFile:
    """The knowledge base in this package (read once: it is immutable)."""
    assert __package__ is not None  # a module of a package
    raw = resources.files(__package__).joinpath("knowledge_base.json").read_bytes()
    return msgspec.json.decode(raw, type=KnowledgeFile)


@functools.cache
def _bm25s():
    """bm25s, imported on the first query (it and scipy under it take a second to import). It
    sets its own logger to DEBUG on import; it goes back to the level the operator chose."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def _tokens(texts: list[str]) -> list[list[str]]:
    # bm25s types the answer for both return_ids; with False it is the lists of tokens.
    return cast("list[list[str]]", _bm25s().tokenize(texts, stopwords="en", return_ids=False, show_progress=False))


class KnowledgeBase:
    def __init__(self, source: KnowledgeFile | None = None, *, ttl_seconds: float = 24 * 3600.0, max_size: int = 1000,
                 clock=time.monotonic) -> None:
        self.source = source or shipped()
        self.version = self.source.version
        self._entries = self.source.entries
        self._index = None  # built on the first query, not when the gateway starts
        self._cache: TTLCache = TTLCache(maxsize=max_size, ttl=ttl_seconds, timer=clock)
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def query(self, request: KnowledgeQuery) -> KnowledgeResponse:
        key = (" ".join(request.query.lower().split()), request.domain, request.query_type, request.max_results)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._hits += 1
                return msgspec.structs.replace(found, cached=True)
            self._misses += 1
        answer = KnowledgeResponse(query=request.query, results=self._rank(request), knowledge_base_version=self.version)
        with self._lock:
            self._cache[key] = answer
        return answer

    def _built(self):
        with self._lock:
            if self._index is None:
                index = _bm25s().BM25()
                index.index(_tokens([f"{e.title} {' '.join(e.tags)} {e.content}" for e in self._entries]), show_progress=False)
                self._index = index
            return self._index

    def _rank(self, request: KnowledgeQuery) -> list[KnowledgeItem]:
        bm25 = self._built()
        query = _tokens([request.query])[0]
        known = [t for t in query if t in bm25.vocab_dict]
        if not known:
            return []
        documents, scores = bm25.retrieve([known], k=len(self._entries), show_progress=False)
        out = []
        for index, score in zip(documents[0], scores[0], strict=False):
            entry = self._entries[int(index)]
            if score <= 0 or (request.domain and entry.domain != request.domain) or (
                    request.query_type and entry.query_type != request.query_type):
                continue
            out.append(KnowledgeItem(id=entry.id, title=entry.title, content=entry.content, domain=entry.domain,
                                     query_type=entry.query_type, sources=list(entry.sources), score=round(float(score), 4),
                                     confidence=round(1 - math.exp(-float(score) / CONFIDENCE_SCALE), 3)))
            if len(out) == request.max_results:
                break
        return out

    def stats(self) -> CacheStats:
        with self._lock:
            asked = self._hits + self._misses
            return CacheStats(hits=self._hits, misses=self._misses, hit_rate=round(self._hits / asked, 4) if asked else 0.0,
                              size=len(self._cache), max_size=int(self._cache.maxsize), ttl_seconds=float(self._cache.ttl),
                              knowledge_base_version=self.version, entries=len(self._entries))

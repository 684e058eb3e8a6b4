"""The shipped knowledge base: BM25 ranking (bm25s), filters, confidence, and the TTL cache
with its size bound and hit rate."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropwire.functions.training_analysis.core.knowledge import KnowledgeBase, KnowledgeQuery, shipped

KB = KnowledgeBase()


def test_every_shipped_entry_is_versioned_and_sourced():
    source = shipped()
    assert source.version and len(source.entries) >= 15
    assert len({e.id for e in source.entries}) == len(source.entries)
    assert all(e.sources and e.content and e.domain and e.query_type for e in source.entries)


def test_the_seeds_example_query_finds_the_cnn_entry_first():
    answer = KB.query(KnowledgeQuery(query="How to prevent overfitting in CNNs?", domain="training",
                                     query_type="best_practice", max_results=5))
    assert answer.results[0].id == "kb-regularisation-cnn"
    assert answer.knowledge_base_version == shipped().version
    confidences = [r.confidence for r in answer.results]
    assert confidences == sorted(confidences, reverse=True)


@settings(max_examples=60, deadline=None)
@given(query=st.text(min_size=1, max_size=80).filter(lambda q: q.strip()),
       domain=st.sampled_from([None, "training", "data", "optimization", "general"]),
       query_type=st.sampled_from([None, "best_practice", "diagnosis", "troubleshooting"]),
       max_results=st.integers(1, 50))
def test_any_query_answers_within_its_filters(query, domain, query_type, max_results):
    answer = KnowledgeBase().query(KnowledgeQuery(query=query, domain=domain, query_type=query_type, max_results=max_results))
    assert len(answer.results) <= max_results
    for item in answer.results:
        assert 0 < item.confidence < 1
        assert domain is None or item.domain == domain
        assert query_type is None or item.query_type == query_type


def test_answers_are_cached_until_their_ttl_and_the_hit_rate_counted():
    now = [0.0]
    kb = KnowledgeBase(ttl_seconds=60, max_size=2, clock=lambda: now[0])
    ask = KnowledgeQuery(query="learning rate too high oscillation")
    assert kb.query(ask).cached is False
    assert kb.query(KnowledgeQuery(query="  Learning rate TOO high   oscillation")).cached is True  # same question
    now[0] = 61.0
    assert kb.query(ask).cached is False, "expired after its TTL"
    for q in ("class imbalance", "gradient clipping", "dataset shift"):
        kb.query(KnowledgeQuery(query=q))
    stats = kb.stats()
    assert stats.size == 2 and stats.max_size == 2 and stats.ttl_seconds == 60
    assert (stats.hits, stats.misses) == (1, 5) and stats.hit_rate == pytest.approx(1 / 6, abs=1e-4)


def test_bad_queries_are_refused():
    with pytest.raises(ValueError, match="empty"):
        KnowledgeQuery(query="  ")
    with pytest.raises(ValueError, match="max_results"):
        KnowledgeQuery(query="x", max_results=0)

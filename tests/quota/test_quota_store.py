"""The quota facet on a real DuckDB file: admission against the rates and budgets, usage per
minute that a restart neither forgets nor counts twice, what the upstream says, and a clock
moved back that does not park a queued task for the jump."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropwire.functions.kit.errors import QuotaExceeded
from dropwire.storage.quota import Limits, Observation
from dropwire.storage.records import TaskSpec
from dropwire.storage.store import Store


def test_a_rate_paces_and_a_refusal_names_the_service_the_limit_and_the_wait(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        limits = Limits(requests_per_minute=30)
        store.quota.acquire("up", limits)
        with pytest.raises(QuotaExceeded) as refused:
            store.quota.acquire("up", limits)
        assert (refused.value.service, refused.value.limit) == ("up", "requests_per_minute")
        assert 1.5 < refused.value.wait <= 2.0  # 30 a minute, evenly spaced
        assert store.query("SELECT requests FROM quota_usage WHERE service = 'up'") == [(1,)]  # refused: not counted


def test_usage_survives_a_restart_and_is_not_counted_twice(tmp_path):
    path = tmp_path / "db.duckdb"
    limits = Limits(requests_per_day=3, request_burst=1)
    with Store.open(path) as store:
        grant = store.quota.acquire("up", limits, tokens=100, cost_usd=0.5)
        store.quota.settle(grant, sent=True, input_tokens=20, output_tokens=30, cost_usd=0.2)
        refused = store.quota.acquire("up", limits, tokens=10)
        store.quota.settle(refused, sent=False)  # a 429: taken back
        store.quota.acquire("up", limits)
    with Store.open(path) as store:
        (requests, tokens, cost), = store.query("SELECT sum(requests), sum(tokens), sum(cost_usd) FROM quota_usage")
        assert (requests, tokens, cost) == (2, 50, pytest.approx(0.2))
        store.quota.acquire("up", limits)
        with pytest.raises(QuotaExceeded) as spent:
            store.quota.acquire("up", limits)
        assert spent.value.limit == "requests_per_day" and spent.value.wait <= 86400


def test_the_limiters_state_survives_a_restart(tmp_path):
    path = tmp_path / "db.duckdb"
    with Store.open(path) as store:
        store.quota.acquire("up", Limits(requests_per_minute=2))
    with Store.open(path) as store:
        with pytest.raises(QuotaExceeded) as refused:
            store.quota.acquire("up", Limits(requests_per_minute=2))
        assert refused.value.wait > 25


def test_the_upstreams_word_spends_its_remaining_then_blocks_until_its_reset(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        store.quota.observe("up", [Observation(metric="requests", limit=10, remaining=2, reset_at=time.time() + 30)])
        store.quota.acquire("up", Limits())
        store.quota.acquire("up", Limits())
        with pytest.raises(QuotaExceeded) as refused:
            store.quota.acquire("up", Limits())
        assert refused.value.limit == "upstream_requests" and 25 < refused.value.wait <= 30
        store.quota.observe("up", [Observation(metric="requests", limit=10, remaining=10, reset_at=time.time() - 1)])
        store.quota.acquire("up", Limits())  # a reset that passed no longer holds


@settings(max_examples=25, deadline=None)
@given(costs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20), budget=st.floats(0.1, 3.0))
def test_the_daily_cost_budget_is_never_passed(tmp_path_factory, costs, budget):
    with Store.open(tmp_path_factory.mktemp("q") / "db.duckdb") as store:
        admitted = 0.0
        for cost in costs:
            try:
                store.quota.acquire("up", Limits(cost_per_day_usd=budget), cost_usd=cost)
                admitted += cost
            except QuotaExceeded as exc:
                assert exc.limit == "cost_per_day_usd" and admitted + cost > budget
        assert admitted <= budget + 1e-9


def test_a_clock_moved_back_does_not_park_a_delayed_task_for_the_jump(tmp_path):
    path = tmp_path / "db.duckdb"
    with Store.open(path) as store:
        store.queue.enqueue(TaskSpec(name="t", args={}, delay_seconds=60, idempotency_key="park"))
        # As if the clock now read a day earlier than when the task was written.
        store.writer.call(lambda batch, now: batch.execute(
            "UPDATE tasks SET updated_at = updated_at + INTERVAL 1 DAY, not_before = not_before + INTERVAL 1 DAY"))
    with Store.open(path) as store:
        task = store.tasks.index.live[1]
        assert time.time() + 50 < task.not_before <= time.time() + 61


def test_wake_moves_a_parked_task_to_now(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        store.queue.enqueue(TaskSpec(name="t", args={}, delay_seconds=3600, idempotency_key="batch-resume:b1:0:1"))
        store.queue.enqueue(TaskSpec(name="t", args={}, delay_seconds=3600, idempotency_key="batch-resume:b2:0:1"))
        assert store.queue.wake("batch-resume:b1:") == 1
        claimed = store.queue.claim("w", wait_seconds=2)
        assert [c.id for c in claimed] == [1]


def test_a_request_bigger_than_the_whole_token_limit_never_fits(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        with pytest.raises(QuotaExceeded) as refused:
            store.quota.acquire("up", Limits(tokens_per_minute=1000), tokens=5000)
        assert refused.value.limit == "tokens_per_minute" and refused.value.wait == float("inf")
        store.quota.acquire("up", Limits(tokens_per_minute=1000), tokens=900)


def test_a_clock_moved_forward_lets_woken_work_through_at_the_rate_not_all_at_once(tmp_path):
    path = tmp_path / "db.duckdb"
    with Store.open(path) as store:
        store.quota.acquire("up", Limits(requests_per_minute=60))
        # As if the clock jumped a day forward: the limiter's state is a day in the past.
        store.writer.call(lambda batch, now: batch.execute("UPDATE quota_limiter SET tat_us = tat_us - 86400000000"))
    with Store.open(path) as store:
        store.quota.acquire("up", Limits(requests_per_minute=60))
        with pytest.raises(QuotaExceeded) as paced:
            store.quota.acquire("up", Limits(requests_per_minute=60))
        assert paced.value.limit == "requests_per_minute" and 0 < paced.value.wait <= 1.0


def test_a_service_without_limits_is_counted_without_waiting_for_a_commit(tmp_path):
    """While the writer is held, a request to a service with no limits (and no word from its
    upstream) is admitted at once and counted in the next commit; one with limits waits."""
    import threading

    with Store.open(tmp_path / "db.duckdb") as store:
        held, release = threading.Event(), threading.Event()

        def hold(batch, now):
            held.set()
            release.wait(30)

        store.writer.submit(hold)
        assert held.wait(10)
        try:
            grant = store.quota.acquire("free", Limits(), tokens=7)  # returns with the writer held
            store.quota.settle(grant, sent=True, input_tokens=3, output_tokens=2)
            assert not grant.durable
        finally:
            release.set()
        store.quota.acquire("limited", Limits(requests_per_day=5))  # waits for its commit, after the counts above
        assert store.query("SELECT requests, tokens FROM quota_usage WHERE service = 'free'") == [(1, 5)]


def test_usage_older_than_two_days_is_let_go_and_a_count_that_late_is_dropped_not_a_failed_commit(tmp_path):
    """The facet holds two days of minutes (what a restart reloads), not all since it started;
    a settle for a minute no longer held would collide with its stored row, so it is dropped."""
    with Store.open(tmp_path / "db.duckdb") as store:
        grant = store.quota.acquire("up", Limits(requests_per_day=100), tokens=5)
        store.writer.call(lambda batch, now: store.quota.begin_cycle(now + 3 * 86400))  # the day turned, thrice
        store.quota.settle(grant, sent=True, input_tokens=10, output_tokens=10)  # commits: nothing failed
        assert store.query("SELECT requests, tokens FROM quota_usage WHERE service = 'up'") == [(1, 5)]

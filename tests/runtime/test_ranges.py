"""Range watchers: a batch consumer waits for indices at background priority. It never gets
ahead of a click, queues only what it asked for, shares one job per index with everyone
else, and holds its results itself, so a result cache smaller than the dataset is fine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropwire.runtime.caches import BoundedCache
from dropwire.runtime.errors import DatasetGone, ShuttingDown
from dropwire.runtime.forecast_lanes import Lane, Scheduler
from tests.runtime.test_scheduler import DATASETS, Value, compute, drain, make_scheduler

operations = st.one_of(
    st.tuples(st.just("click"), st.integers(0, 2), st.integers(7, 29), st.just(0)),
    st.tuples(st.just("watch"), st.integers(0, 2), st.integers(7, 29), st.integers(1, 8)),
    st.tuples(st.just("precompute"), st.integers(0, 2), st.just(0), st.just(0)),
    st.tuples(st.just("register"), st.integers(0, 2), st.just(0), st.just(0)),
    st.tuples(st.just("work"), st.integers(0, 2), st.integers(1, 3), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 2), st.just(0), st.just(0)),
)


@settings(max_examples=120, deadline=None)
@given(program=st.lists(operations, max_size=60), chunk=st.integers(1, 4))
def test_watchers_get_every_index_without_jumping_clicks_or_computing_extra(program, chunk) -> None:
    scheduler, _ = make_scheduler(batch_size=3, chunk=chunk)
    registered: set[int] = set()
    precomputed: set[int] = set()
    asked: dict[str, set[int]] = {}  # indices clicked or watched since the dataset was added
    computed: dict[tuple[str, int], int] = {}
    clicks_waiting: set[tuple[str, int]] = set()
    watches: list[tuple[int, int, object, list]] = []  # (dataset, index, generation marker, futures)
    generation = [0, 0, 0]

    def work(times: int) -> None:
        for _ in range(times):
            batch = scheduler.next_batch(0.0)
            if batch is None:
                return
            if clicks_waiting:
                assert batch.lane is Lane.INTERACTIVE, "background (a watcher's work) ran while a click waited"
            for job in batch.jobs:
                computed[job.key] = computed.get(job.key, 0) + 1
                assert computed[job.key] == 1, f"{job.key} computed twice"
                clicks_waiting.discard(job.key)
            compute(scheduler, batch)

    for op, which, index, length in program:
        data = DATASETS[which]
        if op in ("click", "watch") and which not in registered:
            continue
        if op == "click":
            _, cached = scheduler.submit(data.handle, index)
            asked[data.handle].add(index)
            if not cached:
                clicks_waiting.add((data.handle, index))
        elif op == "watch":
            indices = range(index, min(index + length, data.last_index + 1))
            watches.append((which, generation[which], indices, scheduler.watch(data.handle, indices)))
            asked[data.handle].update(indices)
        elif op in ("precompute", "register"):
            if which not in registered:
                asked[data.handle] = set()
                generation[which] += 1
            scheduler.add_dataset(data, background=op == "precompute")
            registered.add(which)
            if op == "precompute":
                precomputed.add(which)
        elif op == "work":
            work(index)
        elif op == "delete":
            scheduler.remove_dataset(data.handle, DatasetGone("gone"))
            registered.discard(which)
            precomputed.discard(which)
            clicks_waiting = {key for key in clicks_waiting if key[0] != data.handle}
            for key in [key for key in computed if key[0] == data.handle]:
                del computed[key]
    work(10_000)

    for which, gen, indices, futures in watches:
        if which in registered and gen == generation[which]:
            assert [f.result(0) for f in futures] == [Value(DATASETS[which].handle, i) for i in indices]
        else:  # deleted after the watch: told so at once, never left waiting
            assert all(f.done() and (f.exception(0) is not None or f.result(0).index == i)
                       for f, i in zip(futures, indices, strict=False))
    for which in registered - precomputed:  # lazy: nothing beyond what was asked
        handle = DATASETS[which].handle
        assert {index for key_handle, index in computed if key_handle == handle} <= asked[handle]
    assert scheduler.stats().awaited == 0


def test_a_watch_behind_the_cursor_recomputes_what_the_cache_evicted_and_holds_the_results() -> None:
    scheduler = Scheduler(batch_size=4, background_chunk=3)
    cache: BoundedCache = BoundedCache(max_bytes=5)  # five results of a 23-index dataset
    scheduler.attach_results(cache, "model-v1")
    data = DATASETS[0]
    scheduler.add_dataset(data, background=True)
    drain(scheduler)  # the cursor walked everything; only the last five results are kept
    assert scheduler.stats().background_remaining == 0 and cache.stats().entries == 5

    futures = scheduler.watch(data.handle, range(7, 30))
    recomputed = [job.index for batch in drain(scheduler) for job in batch.jobs]
    assert sorted(recomputed) == list(range(7, 25))  # the evicted ones, once each
    # 23 results for a five-result cache: the watcher holds them itself.
    assert [f.result(0).index for f in futures] == list(range(7, 30))
    assert scheduler.stats().awaited == 0


def test_a_watch_never_promotes_but_a_click_takes_over_its_future() -> None:
    scheduler, _ = make_scheduler(batch_size=4, chunk=2)
    data, other = DATASETS[0], DATASETS[1]
    scheduler.add_dataset(data, background=False)
    scheduler.add_dataset(other, background=False)
    watched = scheduler.watch(data.handle, range(10, 14))
    click, _ = scheduler.submit(other.handle, 20)
    first = scheduler.next_batch(0.0)
    assert first is not None and first.lane is Lane.INTERACTIVE and [j.index for j in first.jobs] == [20]
    compute(scheduler, first)
    clicked, _ = scheduler.submit(data.handle, 12)  # someone draws a watched index: one job, one future
    assert clicked is watched[2]
    batches = drain(scheduler)
    assert [(b.lane, [j.index for j in b.jobs]) for b in batches] == [
        (Lane.INTERACTIVE, [12]), (Lane.BACKGROUND, [10, 11]), (Lane.BACKGROUND, [13])]
    assert [f.result(0).index for f in watched] == [10, 11, 12, 13]
    assert click.result(0).index == 20


def test_a_watch_joins_work_in_flight_and_two_watchers_share_futures() -> None:
    scheduler, _ = make_scheduler(batch_size=4, chunk=2)
    data = DATASETS[0]
    scheduler.add_dataset(data, background=True)
    in_flight = scheduler.next_batch(0.0)  # cursor chunk 7, 8
    first = scheduler.watch(data.handle, range(7, 12))
    second = scheduler.watch(data.handle, range(9, 12))
    assert first[0] is in_flight.jobs[0].future and first[2:] == second
    compute(scheduler, in_flight)
    drain(scheduler)
    assert [f.result(0).index for f in first] == [7, 8, 9, 10, 11]
    assert scheduler.stats().computed_background == data.index_count


def test_delete_and_close_fail_watchers_at_once() -> None:
    scheduler, _ = make_scheduler()
    data, other = DATASETS[0], DATASETS[1]
    scheduler.add_dataset(data, background=False)
    scheduler.add_dataset(other, background=True)
    gone = scheduler.watch(data.handle, range(7, 10))
    error = DatasetGone("deleted")
    scheduler.remove_dataset(data.handle, error)
    assert all(f.exception(0) is error for f in gone)
    assert all(job.dataset is other for batch in drain(scheduler)[:1] for job in batch.jobs)

    scheduler.add_dataset(data, background=False)
    waiting = scheduler.watch(data.handle, range(20, 25))
    closed = ShuttingDown("bye")
    scheduler.close(closed)
    assert all(f.exception(0) is closed for f in waiting)
    with pytest.raises(ShuttingDown):
        scheduler.watch(data.handle, range(7, 8))

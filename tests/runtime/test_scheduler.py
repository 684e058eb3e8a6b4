"""The two-lane scheduler's rules, for any sequence of requests: interactive work first and
last-in-first-out, background walked lazily in small chunks, one job per (dataset, index),
deleted datasets' work dropped at once and never cached."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropwire.runtime.caches import BoundedCache
from dropwire.runtime.errors import DatasetGone, DatasetNotFound, ShuttingDown
from dropwire.runtime.forecast_lanes import Batch, Lane, Scheduler
from tests.conftest import wait_for
from tests.runtime.conftest import dataset

DATASETS = [dataset(rows=30, seed=seed) for seed in range(3)]  # indices 7..29 each


@dataclass(frozen=True)
class Value:
    """What the device would have computed: enough to check where it came from."""

    handle: str
    index: int
    nbytes: int = 1


def make_scheduler(batch_size: int = 4, chunk: int = 3) -> tuple[Scheduler, BoundedCache]:
    scheduler = Scheduler(batch_size=batch_size, background_chunk=chunk)
    cache: BoundedCache = BoundedCache(max_bytes=10**9)
    scheduler.attach_results(cache, "model-v1")
    return scheduler, cache


def compute(scheduler: Scheduler, batch: Batch) -> None:
    jobs = scheduler.drop_stale(batch.jobs)
    scheduler.finish(jobs, [Value(job.dataset.handle, job.index) for job in jobs])


def drain(scheduler: Scheduler) -> list[Batch]:
    batches = []
    while (batch := scheduler.next_batch(0.0)) is not None:
        batches.append(batch)
        compute(scheduler, batch)
    return batches


@settings(max_examples=60, deadline=None)
@given(clicks=st.lists(st.integers(min_value=7, max_value=29), min_size=1, max_size=40), batch_size=st.integers(1, 5))
def test_interactive_lane_is_lifo_by_latest_click(clicks: list[int], batch_size: int) -> None:
    scheduler, _ = make_scheduler(batch_size=batch_size)
    data = DATASETS[0]
    scheduler.add_dataset(data, background=False)
    futures = {}
    for index in clicks:
        future, cached = scheduler.submit(data.handle, index)
        assert not cached
        assert futures.setdefault(index, future) is future  # identical requests share one job
    last_click = {index: position for position, index in enumerate(clicks)}
    expected = sorted(last_click, key=lambda index: -last_click[index])
    batches = drain(scheduler)
    assert all(batch.lane is Lane.INTERACTIVE and len(batch.jobs) <= batch_size for batch in batches)
    assert [job.index for batch in batches for job in batch.jobs] == expected
    assert all(futures[index].result(0).index == index for index in expected)
    assert scheduler.stats().coalesced == len(clicks) - len(expected)


# One step of a random program against the scheduler.
operations = st.one_of(
    st.tuples(st.just("click"), st.integers(0, 2), st.integers(7, 29)),
    st.tuples(st.just("precompute"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("work"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("delete"), st.integers(0, 2), st.just(0)),
)


@settings(max_examples=80, deadline=None)
@given(program=st.lists(operations, max_size=60), chunk=st.integers(1, 4))
def test_lanes_staleness_and_single_computation_for_any_program(program: list[tuple[str, int, int]], chunk: int) -> None:
    scheduler, cache = make_scheduler(batch_size=3, chunk=chunk)
    registered: set[int] = set()
    computed: dict[tuple[str, int], int] = {}  # key -> times computed since its dataset was added
    waiting: set[tuple[str, int]] = set()  # interactive keys queued and not computed yet

    def work(times: int) -> None:
        for _ in range(times):
            batch = scheduler.next_batch(0.0)
            if batch is None:
                assert not waiting, "interactive work was queued but nothing came out"
                return
            if waiting:
                assert batch.lane is Lane.INTERACTIVE, "background ran while a click waited"
            else:
                assert batch.lane is Lane.BACKGROUND
                assert len(batch.jobs) <= chunk
                assert len({job.dataset.handle for job in batch.jobs}) == 1
                indices = [job.index for job in batch.jobs]
                assert indices == sorted(indices)
            for job in batch.jobs:
                handle_id = next(i for i, d in enumerate(DATASETS) if d.handle == job.dataset.handle)
                assert handle_id in registered, "work of a deleted dataset came out"
                computed[job.key] = computed.get(job.key, 0) + 1
                assert computed[job.key] == 1, f"{job.key} computed twice"
                waiting.discard(job.key)
            compute(scheduler, batch)

    for op, which, arg in program:
        data = DATASETS[which]
        if op == "click":
            if which not in registered:
                with pytest.raises(DatasetNotFound):
                    scheduler.submit(data.handle, arg)
                continue
            _future, cached = scheduler.submit(data.handle, arg)
            assert cached == ((data.handle, arg) in computed)
            if not cached:
                waiting.add((data.handle, arg))
        elif op == "precompute":
            scheduler.add_dataset(data, background=True)
            registered.add(which)
        elif op == "work":
            work(arg)
        elif op == "delete":
            pending = [key for key in waiting if key[0] == data.handle]
            assert scheduler.remove_dataset(data.handle, DatasetGone("gone")) == (which in registered)
            registered.discard(which)
            waiting.difference_update(pending)
            for key in [key for key in computed if key[0] == data.handle]:
                del computed[key]
            assert cache.group_size(data.handle) == 0
    work(10_000)
    # Every index of every registered dataset was computed exactly once, lazily.
    for which in registered:
        data = DATASETS[which]
        assert {index for handle, index in computed if handle == data.handle} == set(
            range(data.first_index, data.last_index + 1)
        )
    assert scheduler.stats().background_remaining == 0


def test_delete_fails_waiters_at_once_and_drops_queued_and_in_flight_work() -> None:
    scheduler, cache = make_scheduler(batch_size=1, chunk=2)
    data, other = DATASETS[0], DATASETS[1]
    scheduler.add_dataset(data, background=True)
    scheduler.add_dataset(other, background=False)
    in_flight = scheduler.next_batch(0.0)  # a background chunk of `data`, now on the "device"
    assert in_flight is not None and in_flight.lane is Lane.BACKGROUND
    queued, _ = scheduler.submit(data.handle, 20)
    joined, _ = scheduler.submit(data.handle, in_flight.jobs[0].index)  # joins the in-flight job
    survivor, _ = scheduler.submit(other.handle, 20)
    error = DatasetGone("deleted")
    assert scheduler.remove_dataset(data.handle, error)
    assert queued.exception(0) is error and joined.exception(0) is error
    assert scheduler.abandon_if_stale(in_flight.jobs)  # the device may drop it mid-way
    compute(scheduler, in_flight)  # or finish it: either way nothing is cached
    assert cache.group_size(data.handle) == 0
    batches = drain(scheduler)
    assert [(b.lane, [j.dataset.handle for j in b.jobs]) for b in batches] == [(Lane.INTERACTIVE, [other.handle])]
    assert survivor.result(0).index == 20
    stats = scheduler.stats()
    assert stats.stale_dropped >= 2 + 1  # the in-flight chunk and the queued click
    assert stats.computed_background == 0


def test_re_upload_after_delete_is_a_new_generation() -> None:
    scheduler, _ = make_scheduler()
    data = DATASETS[0]
    scheduler.add_dataset(data, background=False)
    old, _ = scheduler.submit(data.handle, 10)
    scheduler.remove_dataset(data.handle, DatasetGone("deleted"))
    scheduler.add_dataset(data, background=False)
    new, _ = scheduler.submit(data.handle, 10)
    assert new is not old
    batches = drain(scheduler)
    assert [job.index for batch in batches for job in batch.jobs] == [10]
    assert new.result(0).index == 10 and isinstance(old.exception(0), DatasetGone)


def test_interactive_request_promotes_an_index_the_background_has_not_reached() -> None:
    scheduler, _ = make_scheduler(batch_size=1, chunk=2)
    data = DATASETS[0]
    scheduler.add_dataset(data, background=True)
    _future, _ = scheduler.submit(data.handle, data.last_index)
    first = scheduler.next_batch(0.0)
    assert first is not None and first.lane is Lane.INTERACTIVE and first.jobs[0].index == data.last_index
    compute(scheduler, first)
    rest = drain(scheduler)
    background_indices = [job.index for batch in rest for job in batch.jobs]
    assert data.last_index not in background_indices  # the cursor skipped the promoted index
    assert scheduler.stats().promoted == 1


def test_quick_draw_holds_are_counted_and_an_upload_keeps_the_dataset() -> None:
    scheduler, _ = make_scheduler()
    data = DATASETS[0]
    scheduler.hold(data)
    scheduler.hold(data)
    assert not scheduler.release(data.handle)
    assert scheduler.release(data.handle)
    assert scheduler.stats().datasets == 0
    scheduler.hold(data)
    scheduler.add_dataset(data, background=False)  # uploaded for keeps meanwhile
    assert not scheduler.release(data.handle)
    assert scheduler.stats().datasets == 1


def test_close_fails_everything_pending_and_refuses_new_work() -> None:
    scheduler, _ = make_scheduler(batch_size=1)
    data = DATASETS[0]
    scheduler.add_dataset(data, background=True)
    in_flight = scheduler.next_batch(0.0)
    queued, _ = scheduler.submit(data.handle, 25)
    error = ShuttingDown("bye")
    scheduler.close(error)
    assert queued.exception(0) is error
    assert all(job.future.exception(0) is error for job in in_flight.jobs)
    assert scheduler.next_batch(0.0) is None
    with pytest.raises(ShuttingDown):
        scheduler.submit(data.handle, 26)
    compute(scheduler, in_flight)  # a device step finishing after close changes nothing
    assert all(job.future.exception(0) is error for job in in_flight.jobs)


def test_many_threads_submitting_while_a_worker_drains() -> None:
    """Real threads: every request is answered, identical ones by the same job."""
    scheduler, _ = make_scheduler(batch_size=4, chunk=2)
    data = DATASETS[0]
    scheduler.add_dataset(data, background=True)
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            batch = scheduler.next_batch(0.05)
            if batch is not None:
                compute(scheduler, batch)

    results: list[tuple[int, int]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        for k in range(30):
            index = 7 + (seed * 7 + k * 5) % 23
            future, _ = scheduler.submit(data.handle, index)
            value = future.result(timeout=10)
            with lock:
                results.append((index, value.index))

    thread = threading.Thread(target=worker)
    thread.start()
    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(30)
    wait_for(lambda: scheduler.stats().background_remaining == 0 and scheduler.stats().in_flight == 0,
             timeout=10, what="the background to finish")
    stop.set()
    thread.join(10)
    assert len(results) == 120 and all(asked == got for asked, got in results)
    stats = scheduler.stats()
    assert stats.computed_interactive + stats.computed_background == data.index_count


def test_a_held_background_lane_gives_nothing_while_clicks_go_on_and_resumes_where_it_was() -> None:
    scheduler, _ = make_scheduler(chunk=3)
    data, watched = DATASETS[0], DATASETS[1]
    woken = []
    scheduler.on_work(lambda: woken.append(True))
    scheduler.pause_background(True)
    scheduler.add_dataset(data, background=True)
    scheduler.add_dataset(watched, background=False)
    ranged = scheduler.watch(watched.handle, range(10, 13))
    assert scheduler.next_background() is None and scheduler.next_batch(0.0) is None
    click, _ = scheduler.submit(data.handle, 29)
    batch = scheduler.next_batch(0.0)
    assert batch is not None and batch.lane is Lane.INTERACTIVE and [job.index for job in batch.jobs] == [29]
    compute(scheduler, batch)
    assert click.result().index == 29
    stats = scheduler.stats()
    assert stats.background_paused and stats.background_remaining == 23 and stats.awaited == 3
    assert not any(future.done() for future in ranged)

    woken.clear()
    scheduler.pause_background(False)
    assert woken  # the device is told there is work again
    walked = drain(scheduler)
    assert all(batch.lane is Lane.BACKGROUND for batch in walked)
    assert [future.result().index for future in ranged] == [10, 11, 12]
    assert sorted(job.index for batch in walked for job in batch.jobs if job.dataset is data) == list(range(7, 29))
    assert not scheduler.stats().background_paused

"""Task ids are given once, for good (across `queue cleanup`, restarts and migrated
databases), and one operation's bad rows never fail the others of its group commit (real
DuckDB files, the real writer thread)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropwire.storage import migrate
from dropwire.storage.database import connect
from dropwire.storage.records import ObjectReceipt, TaskSpec
from dropwire.storage.store import Store
from dropwire.storage.writer import StoreWriteFailed
from tests.storage.admit_forever import offer

EXAMPLES = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def finish_all(store: Store) -> None:
    for claimed in store.queue.claim("w", limit=1000):
        store.queue.complete(claimed.id, claimed.token)


@EXAMPLES
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.booleans()), min_size=1, max_size=5))
def test_no_task_id_is_given_twice_across_cleanups_and_restarts(tmp_path_factory, rounds):
    path = tmp_path_factory.mktemp("ids") / "db.duckdb"
    given_ids: list[int] = []
    store = Store.open(path)
    try:
        for new, clean, restart in rounds:
            given_ids += store.queue.enqueue_many([TaskSpec(name="t", args={"n": len(given_ids)}) for _ in range(new)])
            if clean:
                finish_all(store)
                time.sleep(0.002)  # finished before the cleanup's cutoff (now)
                store.queue.cleanup(0)
            if restart:
                store.close()
                store = Store.open(path)
        given_ids += store.queue.enqueue_many([TaskSpec(name="t", args={"last": True})])
    finally:
        store.close()
    assert given_ids == sorted(set(given_ids)), f"an id was given twice or out of order: {given_ids}"


def test_a_database_from_before_gives_ids_above_every_id_any_table_names(tmp_path):
    """Migration 0010 on a database whose cleaned-up tasks are only named by other tables."""
    path = tmp_path / "old.duckdb"
    with connect(path) as con:
        migrate.upgrade(con, 9)
        con.execute("INSERT INTO tasks (id, name, args, priority, status, attempts, max_attempts, not_before, created_at, "
                    "updated_at) VALUES (3, 't', '{}', 0, 'queued', 0, 3, now(), now(), now())")
        con.execute("INSERT INTO invocations VALUES (7, 1, 'f', 'upload', '{}', 'w', now(), 1.0, 'succeeded', NULL)")
        con.execute("INSERT INTO object_receipts VALUES ('f', 'local', 'k', 'v', NULL, 'ObjectCreated:Put', 12, now())")
        con.execute("INSERT INTO dead_letters VALUES (2, 't', '{}', 3, 'x', now(), 15, now())")
    with Store.open(path) as store:
        assert store.queue.enqueue(TaskSpec(name="t", args={})) == 16


def test_a_duplicate_after_its_task_was_cleaned_up_is_still_a_duplicate_and_the_batch_is_admitted(tmp_path):
    path = tmp_path / "db.duckdb"
    with Store.open(path) as store:
        first = store.receipts.admit([offer("a", "incoming/x.csv", 1), offer("a", "incoming/x.csv", 2)])
        finish_all(store)
        time.sleep(0.002)
        assert store.queue.cleanup(0) == 2
    with Store.open(path) as store:
        again = store.receipts.admit([offer("a", "incoming/x.csv", 2), offer("a", "incoming/x.csv", 1),
                                      offer("a", "incoming/y.csv", 1)])
        assert [a.outcome for a in again] == ["duplicate", "duplicate", "accepted"]
        assert [a.task_id for a in again[:2]] == [first[1].task_id, first[0].task_id]
        assert again[2].task_id > first[1].task_id


def test_one_offer_that_cannot_be_written_fails_alone_with_its_key(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        unencodable = (offer("a", "incoming/bad\udcff.csv", 1)[0],
                       TaskSpec(name="fn:a", args={"key": "incoming/bad\udcff.csv"}))  # refused in encoding
        unwritable = (ObjectReceipt(function="a", bucket="local", key="incoming/worse\udcfe.csv", version="v1",
                                    sequencer=None, event_name="ObjectCreated:Put"),
                      TaskSpec(name="fn:a", args={}))  # its receipt row fails the commit
        answers = store.receipts.admit([offer("a", "incoming/1.csv", 1), unencodable, offer("a", "incoming/2.csv", 1),
                                        unwritable, offer("a", "incoming/3.csv", 1)])
        assert [a.outcome for a in answers] == ["accepted", "failed", "accepted", "failed", "accepted"]
        assert "local/incoming/bad\\xff.csv could not be admitted for a" in answers[1].reason
        assert "local/incoming/worse\\xfe.csv could not be admitted for a" in answers[3].reason
        assert sorted(k for (k,) in store.query("SELECT \"key\" FROM object_receipts")) == [
            "incoming/1.csv", "incoming/2.csv", "incoming/3.csv"]
        assert len(store.queue.claim("w", limit=10)) == 3


class Bug(Exception):
    pass


@EXAMPLES
@given(st.lists(st.sampled_from(["good", "bad_row", "bug"]), min_size=1, max_size=8))
def test_a_group_commit_with_bad_operations_commits_every_good_one(tmp_path_factory, kinds):
    with Store.open(tmp_path_factory.mktemp("group") / "db.duckdb") as store:
        writer = store.writer
        held = threading.Event()
        blocker = writer.submit(lambda batch, now: held.wait(10))  # the rest queue up behind it: one cycle

        def bad_row(batch, now):  # a row the views let through but the file refuses (its key exists)
            batch.execute("INSERT INTO id_high_water VALUES ('tasks', 0)")

        def bug(batch, now):
            raise Bug("an operation's own bug")

        futures: list[Future] = []
        for kind in kinds:
            if kind == "good":
                futures.append(store.queue.enqueue_async(TaskSpec(name="t", args={"n": len(futures)})))
            else:
                futures.append(writer.submit(bad_row if kind == "bad_row" else bug))
        held.set()
        blocker.result(10)
        good_ids = []
        for kind, future in zip(kinds, futures, strict=False):
            if kind == "good":
                good_ids.append(future.result(10).task_ids[0])
            elif kind == "bad_row":
                with pytest.raises(StoreWriteFailed, match=r"Duplicate key \"name: tasks\""):
                    future.result(10)
            else:
                with pytest.raises(Bug):
                    future.result(10)
        assert len(set(good_ids)) == len(good_ids)
        assert sorted(c.id for c in store.queue.claim("w", limit=100)) == sorted(good_ids)
        assert store.query("SELECT count(*) FROM tasks")[0][0] == len(good_ids)

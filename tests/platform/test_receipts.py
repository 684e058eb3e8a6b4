"""Receipts: whatever order and however often S3 delivers a key's events, each version runs at
most once and never after a newer one (real DuckDB store)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropwire.functions.platform.registry import ObjectEvent
from dropwire.local_emulator.router import EventRouter
from dropwire.storage.store import Store
from tests.platform.sample_functions import functions

KEYS = itertools.count()


def versions(key: str, count: int) -> list[ObjectEvent]:
    return [ObjectEvent(bucket="local", key=key, raw_key=key, size=i, etag=f"etag{i}", version_id=None,
                        sequencer=f"{0x5F00 + i:X}", event_name="ObjectCreated:Put", event_time="", source="s3")
            for i in range(count)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_duplicated_and_reordered_deliveries_run_each_version_at_most_once_in_order(tmp_path_factory, data):
    store = _store(tmp_path_factory)
    router = EventRouter(functions, store.receipts, store.queue, hop_limit=16)
    originals = versions(f"incoming/k{next(KEYS)}.csv", data.draw(st.integers(1, 5)))
    deliveries = data.draw(st.lists(st.sampled_from(originals), min_size=1, max_size=12))
    admitted = [e for e in deliveries if router.route([e])[0].outcome == "accepted"]
    sequence = [e.sequencer for e in admitted]
    assert len(sequence) == len(set(sequence)), "a version ran twice"
    assert sequence == sorted(sequence, key=lambda s: int(s, 16)), "an older version ran after a newer one"
    newest = max(deliveries, key=lambda e: int(e.sequencer, 16))
    assert newest in admitted


_STORES: dict[str, Store] = {}


def _store(factory) -> Store:
    # One real store for all examples (hypothesis runs many; opening a file each time is slow).
    if "store" not in _STORES:
        _STORES["store"] = Store.open(factory.mktemp("receipts") / "db.duckdb")
    return _STORES["store"]


def teardown_module() -> None:
    for store in _STORES.values():
        store.close()


def test_the_hop_guard_refuses_objects_deep_in_a_chain(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        router = EventRouter(functions, store.receipts, store.queue, hop_limit=16)
        deep, shallow = versions("incoming/deep.csv", 1)[0], versions("incoming/shallow.csv", 1)[0]
        store.receipts.record_output("local", "incoming/deep.csv", hop=16, function="somebody", task_id=1)
        store.receipts.record_output("local", "incoming/shallow.csv", hop=15, function="somebody", task_id=1)
        assert router.route([deep]) == []
        (admission,) = router.route([shallow])
        assert admission.outcome == "accepted"
        assert store.queue.task(admission.task_id).args["hop"] == 15


def test_one_refused_event_does_not_stop_the_others_and_hops_count_from_zero(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        router = EventRouter(functions, store.receipts, store.queue, hop_limit=16)
        store.receipts.record_output("local", "incoming/deeper.csv", hop=17, function="somebody", task_id=1)
        store.receipts.record_output("local", "incoming/deep.csv", hop=16, function="somebody", task_id=1)
        deeper, deep, outside, later = (versions(f"incoming/{name}.csv", 1)[0] for name in ("deeper", "deep", "outside", "later"))
        # The refused ones are left out of the answer; the others in the same batch are admitted.
        admitted = router.route([deeper, deep, outside, later])
        assert [a.outcome for a in admitted] == ["accepted", "accepted"]
        assert [store.queue.task(a.task_id).args["event"]["key"] for a in admitted] == ["incoming/outside.csv", "incoming/later.csv"]
        assert {store.queue.task(a.task_id).args["hop"] for a in admitted} == {0}  # outside uploads


def test_reprocess_runs_again_on_the_object_as_it_is_now(tmp_path):
    from dropwire.functions.kit.errors import NotFound
    from dropwire.functions.platform.objects import ObjectStore

    bucket = tmp_path / "bucket"
    (bucket / "incoming").mkdir(parents=True)
    (bucket / "incoming" / "again.csv").write_bytes(b"12345")
    objects = ObjectStore({"local": str(bucket)})
    with Store.open(tmp_path / "db.duckdb") as store:
        router = EventRouter(functions, store.receipts, store.queue, hop_limit=16)
        task = store.queue.task(router.reprocess("measure", objects, "local", "incoming/again.csv"))
        assert (task.name, task.args["source"], task.args["hop"]) == ("fn:measure", "reprocess", 0)
        event = task.args["event"]
        assert (event["key"], event["size"], event["event_name"]) == ("incoming/again.csv", 5, "ObjectCreated:Reprocess")
        assert event["version_id"].endswith("-5") and event["version_id"] == event["etag"]  # mtime-size
        again = store.queue.task(router.reprocess("measure", objects, "local", "incoming/again.csv"))
        assert again.id != task.id  # on purpose: receipts do not stop it
        with pytest.raises(NotFound, match=r"object local/incoming/gone\.csv does not exist"):
            router.reprocess("measure", objects, "local", "incoming/gone.csv")
        (bucket / "incoming" / "empty.csv").write_bytes(b"")
        empty = store.queue.task(router.reprocess("measure", objects, "local", "incoming/empty.csv")).args["event"]
        assert empty["size"] == 0 and empty["version_id"].endswith("-0")

"""Schedules across a restart, on a real store."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import msgspec

from dropwire.local_emulator.scheduler import Scheduler
from dropwire.storage.records import TaskSpec
from dropwire.storage.store import Store
from tests.conftest import wait_for
from tests.platform.sample_functions import functions


def scheduled_runs(store: Store) -> list[dict]:
    return [msgspec.json.decode(args)["event"] for (args,) in store.query("SELECT args FROM tasks WHERE name = 'fn:tick' ORDER BY id")]


def test_a_schedule_missed_across_a_restart_runs_once(tmp_path):
    path = tmp_path / "db.duckdb"
    with Store.open(path) as store:
        scheduler = Scheduler(functions, store.receipts).start()
        wait_for(lambda: scheduled_runs(store), timeout=10, what="the first scheduled run")
        scheduler.stop()
        before = scheduled_runs(store)
    time.sleep(4.5)  # every-2s schedule: at least two runs are missed
    with Store.open(path) as store:
        scheduler = Scheduler(functions, store.receipts).start()
        scheduler.stop()
        after = scheduled_runs(store)[len(before):]
    catch_ups = [run for run in after if run["catch_up"]]
    assert len(catch_ups) == 1, after
    missed_at = datetime.fromisoformat(catch_ups[0]["fire_time"])
    assert missed_at.timestamp() % 2 == 0 and (datetime.now(timezone.utc) - missed_at).total_seconds() < 2.5


def test_a_fire_time_is_queued_once_whoever_fires_it(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        spec = TaskSpec(name="fn:tick")
        assert store.receipts.fire_schedule("every-2s", 1000.0, spec) is not None
        assert store.receipts.fire_schedule("every-2s", 1000.0, spec) is None
        assert store.receipts.fire_schedule("every-2s", 998.0, spec) is None
        assert store.receipts.last_fire("every-2s") == 1000.0


def test_a_never_run_schedule_does_not_catch_up(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        Scheduler(functions, store.receipts).start().stop()
        assert all(not run["catch_up"] for run in scheduled_runs(store))

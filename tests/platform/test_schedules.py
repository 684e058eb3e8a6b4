"""Schedules on a real store, with the scheduler's clock injected: restarts, catch-up windows
and cron fire times are set by the test, never waited for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from dropwire.functions.platform.registry import FunctionRegistry, OnSchedule
from dropwire.local_emulator.schedules import Scheduler
from dropwire.storage.records import TaskSpec
from dropwire.storage.store import Store
from tests.conftest import wait_for
from tests.platform.sample_functions import functions

# A moment off every schedule's grid (10:00:00.5 UTC), so no run is due exactly at it.
T0 = datetime(2026, 3, 2, 10, 0, 0, 500000, tzinfo=UTC)


def at(moment: datetime):
    return lambda: moment


def scheduled_runs(store: Store, task: str = "fn:tick") -> list[dict]:
    return [msgspec.json.decode(args)["event"] for (args,) in store.query("SELECT args FROM tasks WHERE name = ? ORDER BY id", [task])]


def restart(registry: FunctionRegistry, store: Store, now: datetime) -> None:
    """A scheduler starting at `now` (it catches up), stopped before its next run is due."""
    Scheduler(registry, store.receipts, clock=at(now)).start().stop()


def test_a_schedule_missed_across_a_restart_runs_once(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        scheduler = Scheduler(functions, store.receipts, clock=at(T0))
        assert scheduler.fire("every-2s", T0.replace(microsecond=0)) is not None  # the last run before going down
        # Down for 4.5 s: the every-2s runs at 10:00:02 and 10:00:04 were missed; only the last is run.
        restart(functions, store, T0 + timedelta(seconds=4.5))
        restart(functions, store, T0 + timedelta(seconds=4.9))  # a second restart catches nothing up again
        runs = scheduled_runs(store)
    assert [(run["fire_time"], run["catch_up"]) for run in runs] == [
        ("2026-03-02T10:00:00+00:00", False), ("2026-03-02T10:00:04+00:00", True)]


def test_a_never_run_schedule_does_not_catch_up(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        restart(functions, store, T0)
        assert scheduled_runs(store) == []


def hourly_registry(catch_up_seconds: float) -> FunctionRegistry:
    registry = FunctionRegistry()

    @registry.function("report", on=[OnSchedule(name="hourly", cron="0 * * * *", catch_up_seconds=catch_up_seconds)])
    def report(event, context) -> None:
        pass

    return registry


@pytest.mark.parametrize(("down_until", "caught_up"), [
    (datetime(2026, 3, 2, 11, 9, 59, tzinfo=UTC), "2026-03-02T11:00:00+00:00"),  # 11:00 missed 9 min 59 s ago
    (datetime(2026, 3, 2, 11, 10, 1, tzinfo=UTC), None),  # 11:00 is now older than the 10-minute window
    (datetime(2026, 3, 2, 13, 5, 0, tzinfo=UTC), "2026-03-02T13:00:00+00:00"),  # three missed: the last, once
])
def test_a_cron_schedule_catches_up_only_within_its_window(tmp_path, down_until, caught_up):
    registry = hourly_registry(catch_up_seconds=600)
    with Store.open(tmp_path / "db.duckdb") as store:
        Scheduler(registry, store.receipts, clock=at(T0)).fire("hourly", T0.replace(microsecond=0))
        restart(registry, store, down_until)
        catch_ups = [run["fire_time"] for run in scheduled_runs(store, "fn:report") if run["catch_up"]]
    assert catch_ups == ([caught_up] if caught_up else [])


def test_a_cron_schedule_fires_at_its_boundary(tmp_path):
    """The scheduler's loop, with a clock that reads 0.2 s before 11:00:00: the hourly cron
    fires once, for exactly 11:00:00."""
    boundary = datetime(2026, 3, 2, 11, 0, 0, tzinfo=UTC)
    started = datetime.now(UTC)

    def clock() -> datetime:
        return boundary - timedelta(seconds=0.2) + (datetime.now(UTC) - started)

    registry = hourly_registry(catch_up_seconds=600)
    with Store.open(tmp_path / "db.duckdb") as store:
        scheduler = Scheduler(registry, store.receipts, clock=clock).start()
        try:
            wait_for(lambda: scheduled_runs(store, "fn:report"), timeout=10, what="the 11:00 run")
        finally:
            scheduler.stop()
        runs = scheduled_runs(store, "fn:report")
    assert [(run["fire_time"], run["catch_up"]) for run in runs] == [("2026-03-02T11:00:00+00:00", False)]


def test_an_invalid_cron_expression_is_refused_with_its_schedule_name(tmp_path):
    registry = FunctionRegistry()

    @registry.function("bad", on=[OnSchedule(name="nightly", cron="0 25 * * *")])
    def bad(event, context) -> None:
        pass

    with Store.open(tmp_path / "db.duckdb") as store, pytest.raises(Exception, match="schedule 'nightly': cron expression '0 25"):
        Scheduler(registry, store.receipts)


def test_firing_an_unknown_schedule_is_refused_naming_the_known_ones(tmp_path):
    from dropwire.functions.kit.errors import NotFound

    with Store.open(tmp_path / "db.duckdb") as store:
        scheduler = Scheduler(hourly_registry(catch_up_seconds=600), store.receipts, clock=at(T0))
        with pytest.raises(NotFound, match=r"no schedule named 'daily'; schedules: \['hourly'\]"):
            scheduler.fire("daily", T0)
        assert scheduled_runs(store, "fn:report") == []


def test_a_fire_time_is_queued_once_whoever_fires_it(tmp_path):
    with Store.open(tmp_path / "db.duckdb") as store:
        spec = TaskSpec(name="fn:tick")
        assert store.receipts.fire_schedule("every-2s", 1000.0, spec) is not None
        assert store.receipts.fire_schedule("every-2s", 1000.0, spec) is None
        assert store.receipts.fire_schedule("every-2s", 998.0, spec) is None
        assert store.receipts.last_fire("every-2s") == 1000.0

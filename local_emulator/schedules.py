"""Schedules: APScheduler's cron and interval triggers say when each schedule fires; the
store keeps each schedule's last fire time, so a run missed while the emulator was down is
caught up once (if it is recent enough), never many times, and a fire time is queued at most
once even if two schedulers tried (the store refuses a fire time not after the last one)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from dropwire.functions.kit.errors import DropwireError, NotFound
from dropwire.functions.platform.registry import FunctionRegistry, FunctionSpec, Invocation, OnSchedule, ScheduledEvent
from dropwire.storage.records import TaskSpec

log = logging.getLogger("dropwire.scheduler")

# Interval schedules run on a fixed grid, so that missed runs can be computed after a restart.
_GRID_START = datetime(2000, 1, 1, tzinfo=UTC)


class ScheduleStore(Protocol):
    def fire_schedule(self, schedule: str, fire_time: float, spec: TaskSpec) -> int | None: ...

    def last_fire(self, schedule: str) -> float | None: ...


def make_trigger(schedule: OnSchedule) -> BaseTrigger:
    if schedule.cron is not None:
        try:
            return CronTrigger.from_crontab(schedule.cron, timezone=UTC)
        except ValueError as exc:
            raise DropwireError(f"schedule {schedule.name!r}: cron expression {schedule.cron!r} is invalid: {exc}") from None
    assert schedule.every_seconds is not None  # OnSchedule has exactly one of cron and every_seconds
    # apscheduler is unannotated: pyright takes int from the default 0; any number of seconds works.
    return IntervalTrigger(seconds=schedule.every_seconds, start_date=_GRID_START, timezone=UTC)  # pyright: ignore[reportArgumentType]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(self, functions: FunctionRegistry, store: ScheduleStore, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.store = store
        self._clock = clock  # injectable, so catch-up windows are tested without sleeping
        self._schedules = {s.name: (s, f, make_trigger(s)) for s, f in functions.schedules()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropwire-scheduler", daemon=True)

    def start(self) -> Scheduler:
        for name in self._schedules:
            self._catch_up(name, self._clock())
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def names(self) -> list[str]:
        return sorted(self._schedules)

    def fire(self, name: str, fire_time: datetime, *, catch_up: bool = False) -> int | None:
        """Queue one run of schedule `name` for `fire_time`; None if it was already queued."""
        try:
            schedule, spec, _ = self._schedules[name]
        except KeyError:
            raise NotFound(f"no schedule named {name!r}; schedules: {self.names()}") from None
        task_id = self.store.fire_schedule(name, fire_time.timestamp(), self._task(schedule, spec, fire_time, catch_up))
        if task_id is not None:
            log.info("schedule %s fired for %s%s (task %s)", name, fire_time.isoformat(), " (catch-up)" if catch_up else "", task_id)
        return task_id

    @staticmethod
    def _task(schedule: OnSchedule, spec: FunctionSpec, fire_time: datetime, catch_up: bool) -> TaskSpec:
        event = ScheduledEvent(schedule=schedule.name, fire_time=fire_time.isoformat(), catch_up=catch_up)
        return TaskSpec(name=spec.task_name, args=Invocation(function=spec.name, source="schedule", event=event),
                        max_attempts=spec.max_attempts)

    def _catch_up(self, name: str, now: datetime) -> None:
        schedule, _, trigger = self._schedules[name]
        last = self.store.last_fire(name)
        if last is None:
            return  # never ran: nothing was missed
        last_fire = datetime.fromtimestamp(last, UTC)
        window_start = now - timedelta(seconds=schedule.catch_up_seconds)
        first_missed = trigger.get_next_fire_time(last_fire, last_fire)
        if first_missed is None or first_missed > now:
            return
        # Walk only the catch-up window: older missed runs are not run.
        following = (trigger.get_next_fire_time(None, window_start) if window_start > last_fire else first_missed)
        missed = None
        while following is not None and following <= now:
            missed, following = following, trigger.get_next_fire_time(following, following)
        if missed is None:
            log.warning("schedule %s missed runs since %s, all older than its catch-up window (%ss); not run",
                        name, first_missed.isoformat(), schedule.catch_up_seconds)
            return
        self.fire(name, missed, catch_up=True)

    def _run(self) -> None:
        after = self._clock()
        while not self._stop.is_set():
            upcoming = {name: trigger.get_next_fire_time(None, after) for name, (_, _, trigger) in self._schedules.items()}
            upcoming = {name: at for name, at in upcoming.items() if at is not None}
            if not upcoming:
                return
            soonest = min(upcoming.values())
            if self._stop.wait(max(0.0, (soonest - self._clock()).total_seconds())):
                return
            for name, at in upcoming.items():
                if at == soonest:
                    try:
                        self.fire(name, at)
                    except DropwireError as exc:
                        log.error("schedule %s could not fire: %s", name, exc.message)
            after = soonest + timedelta(microseconds=1)

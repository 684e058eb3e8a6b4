"""The one owner of the device: a thread that runs every kind of job (forecasts, text
generation, embeddings) through two lanes, whatever the kinds are.

Each job kind keeps its own queues and offers the device one unit of work at a time for a
lane (``take``): a generator that yields between device steps. Interactive work of any kind
runs first, kinds taken in turn; background work runs when no kind has interactive work
(and a short grace after the last interactive unit has passed), and between two of its
steps the owner runs whatever interactive work arrived, so an interactive request waits for
at most one background step. A kind that gets new work calls
``wake``; the owner never holds a kind's lock across a device step.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Generator, Sequence
from typing import Protocol

import msgspec
import torch

# How long an idle owner sleeps before it looks at its stop flag again.
IDLE_WAIT_S = 0.5

# A unit of device work: yields between device steps, ends when the unit is done.
Work = Generator[None, None, None]


class Lane(str, enum.Enum):  # noqa: UP042 - StrEnum would change str(Lane.X)
    INTERACTIVE = "interactive"
    BACKGROUND = "background"


class JobKind(Protocol):
    """What the device owner needs of a kind of job."""

    name: str

    def take(self, lane: Lane) -> Work | None:
        """The next unit of work of ``lane`` (without waiting), or None when there is none."""
        ...

    def interactive_waiting(self) -> bool:
        """Whether interactive work is waiting, so a background unit should pause now."""
        ...


class DeviceStats(msgspec.Struct, frozen=True):
    alive: bool
    kinds: list[str]
    units_interactive: int
    units_background: int
    # Times a background unit paused between two steps for interactive work.
    preemptions: int


class DeviceOwner:
    def __init__(self, kinds: Sequence[JobKind], log: logging.Logger, *, interactive_grace_s: float = 0.0) -> None:
        self._kinds = list(kinds)
        self._log = log
        self._stop = threading.Event()
        self._work_arrived = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropwire-device", daemon=True)
        self._units = {Lane.INTERACTIVE: 0, Lane.BACKGROUND: 0}
        self._preemptions = 0
        # Where the next search for work starts: kinds take turns.
        self._turn = 0
        # Background work waits this long after interactive work (runtime.interactive_grace_ms).
        self._interactive_grace_s = interactive_grace_s
        self._quiet_until = 0.0

    def add(self, kind: JobKind) -> None:
        """Register a kind before start()."""
        assert not self._thread.is_alive(), "kinds are registered before the device starts"
        self._kinds.append(kind)

    def wake(self) -> None:
        """A kind has new work (safe from any thread, also under the kind's lock)."""
        self._work_arrived.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop after the current device step; True when the thread has ended."""
        self._stop.set()
        self._work_arrived.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> DeviceStats:
        return DeviceStats(
            alive=self._thread.is_alive(),
            kinds=[kind.name for kind in self._kinds],
            units_interactive=self._units[Lane.INTERACTIVE],
            units_background=self._units[Lane.BACKGROUND],
            preemptions=self._preemptions,
        )

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                # Cleared before looking, so work that arrives meanwhile is never slept over.
                self._work_arrived.clear()
                work = self._take(Lane.INTERACTIVE)
                if work is None:
                    quiet = self._quiet_until - time.monotonic()
                    if quiet > 0:  # interactive work just ended: its client's next request may be on its way
                        self._work_arrived.wait(quiet)
                        continue
                    work = self._take(Lane.BACKGROUND)
                if work is None:
                    self._work_arrived.wait(IDLE_WAIT_S)
                    continue
                lane, unit = work
                self._units[lane] += 1
                try:
                    self._drive(unit, lane)
                except Exception:  # a kind answers its own waiters; the device must go on
                    self._log.exception("a %s unit of device work failed", lane.value)
                if lane is Lane.INTERACTIVE:
                    self._quiet_until = time.monotonic() + self._interactive_grace_s

    def _take(self, lane: Lane) -> tuple[Lane, Work] | None:
        count = len(self._kinds)
        for offset in range(count):
            kind = self._kinds[(self._turn + offset) % count]
            unit = kind.take(lane)
            if unit is not None:
                self._turn = (self._turn + offset + 1) % count
                return lane, unit
        return None

    def _drive(self, unit: Work, lane: Lane) -> None:
        for _ in unit:
            if self._stop.is_set():
                unit.close()  # shutting down: the kinds have already failed their waiters
                return
            if lane is Lane.BACKGROUND:
                self._run_interactive()

    def _run_interactive(self) -> None:
        """Between two background steps: every interactive unit now waiting, to its end."""
        paused = False
        while not self._stop.is_set() and any(kind.interactive_waiting() for kind in self._kinds):
            work = self._take(Lane.INTERACTIVE)
            if work is None:
                return
            if not paused:
                paused = True
                self._preemptions += 1
            self._units[Lane.INTERACTIVE] += 1
            self._drive(work[1], Lane.INTERACTIVE)

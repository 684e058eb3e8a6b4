"""What real S3 does and moto does not: deliver an event twice, late, or out of order.
Wraps a router so tests can prove that duplicates and re-orders give one invocation."""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable

from dropwire.functions.platform.registry import ObjectEvent

log = logging.getLogger("dropwire.chaos")


class Chaos:
    def __init__(self, route: Callable[[list[ObjectEvent]], object], *, duplicate: float = 0.0, reorder: float = 0.0,
                 max_delay_seconds: float = 0.0, seed: int | None = None) -> None:
        self.route = route
        self.duplicate, self.reorder, self.max_delay = duplicate, reorder, max_delay_seconds
        self._random = random.Random(seed)
        self._heap: list[tuple[float, int, ObjectEvent]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="dropwire-chaos", daemon=True)
        self._thread.start()

    def submit(self, events: list[ObjectEvent]) -> None:
        for event in events:
            self._hold(event)

    def _hold(self, event: ObjectEvent) -> None:
        copies = 2 if self._random.random() < self.duplicate else 1
        with self._wake:
            for _ in range(copies):
                delay = self._random.uniform(0, self.max_delay)
                if self._random.random() < self.reorder:
                    delay += self.max_delay or 0.05  # held back, so later events overtake it
                heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), event))
            self._wake.notify()

    def close(self) -> None:
        """Deliver everything still held, then stop."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    if self._heap and (self._stopping or self._heap[0][0] <= time.monotonic()):
                        _, _, event = heapq.heappop(self._heap)
                        break
                    if self._stopping:
                        return
                    self._wake.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
            try:
                self.route([event])
            except Exception as exc:  # the router recorded it in its health; this thread goes on
                log.error("chaos: %s/%s could not be routed: %s", event.bucket, event.key, exc)

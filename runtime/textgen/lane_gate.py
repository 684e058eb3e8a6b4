"""The event loop's side of the two lanes. The device runs interactive work first, but the
runtime's event loop shares one interpreter lock with the device thread: while it tokenizes
background requests and shapes their answers, an interactive decode step waits for the lock.
So a background request does that Python work only when no interactive request is on the
device, waiting at most MAX_DEFER_S (a preference, never a hold on background work)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from dropwire.runtime.device import Lane

# Longest a background request defers its own work to interactive requests in flight.
MAX_DEFER_S = 1.0


class LaneGate:
    def __init__(self) -> None:
        self._interactive = 0
        self._quiet: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._quiet is None:  # made inside the server's event loop, on first use
            self._quiet = asyncio.Event()
            self._quiet.set()
        return self._quiet

    @contextlib.contextmanager
    def holding(self, lane: Lane) -> Iterator[None]:
        """Around an interactive request's time on the device (nothing for a background one)."""
        if lane is not Lane.INTERACTIVE:
            yield
            return
        quiet = self._event()
        self._interactive += 1
        quiet.clear()
        try:
            yield
        finally:
            self._interactive -= 1
            if not self._interactive:
                quiet.set()

    async def turn(self, lane: Lane) -> None:
        """A background request's turn for its Python work: now, or once no interactive
        request is on the device (at most MAX_DEFER_S)."""
        if lane is Lane.INTERACTIVE:
            return
        quiet = self._event()
        if not quiet.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(quiet.wait(), MAX_DEFER_S)

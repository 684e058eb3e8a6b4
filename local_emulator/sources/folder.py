"""A local folder as a bucket: file events within milliseconds (watchfiles), a file emitted
only once it is completely written (its size and mtime unchanged for a short settle time,
or it arrived by an atomic rename), temporary and hidden files ignored, and on start a
catch-up over files that arrived while nobody watched (receipts drop the ones already done)."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import watchfiles

from dropwire.functions.platform.registry import ObjectEvent

log = logging.getLogger("dropwire.sources.folder")

TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".swx", "~")


def ignored(relative: str) -> bool:
    parts = relative.split("/")
    return any(p.startswith(".") for p in parts) or relative.endswith(TEMPORARY_SUFFIXES)


class FolderSource:
    def __init__(self, root: Path, bucket: str, emit: Callable[[list[ObjectEvent]], object],
                 settle_seconds: float = 0.03) -> None:
        self.root = root.resolve()
        self.bucket = bucket
        self.emit = emit
        self.settle_seconds = settle_seconds
        self._pending: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, since)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dropwire-folder", daemon=True)

    def start(self) -> "FolderSource":
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _relative(self, path: str) -> str | None:
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None

    def _event(self, relative: str, stat: os.stat_result | None, name: str) -> ObjectEvent:
        size, mtime_ns = (stat.st_size, stat.st_mtime_ns) if stat else (0, time.time_ns())
        version = f"{mtime_ns}-{size}"
        return ObjectEvent(bucket=self.bucket, key=relative, raw_key=relative, size=size, etag=version, version_id=version,
                           # mtime orders the events of one file, like S3's sequencer
                           sequencer=f"{mtime_ns:020X}", event_name=name,
                           event_time=datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).isoformat(), source="folder")

    def _scan(self, top: Path | str) -> None:
        """Observe every eligible file below `top` (at start, and for a new directory, whose
        first files may land before the watch on it exists)."""
        for directory, subdirs, files in os.walk(top):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            for name in files:
                path = os.path.join(directory, name)
                relative = self._relative(path)
                if relative and not ignored(relative):
                    self._observe(path)

    def _observe(self, path: str) -> None:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            self._pending.pop(path, None)
            return
        if not os.path.isfile(path):
            return
        seen = self._pending.get(path)
        if seen is None or (seen[0], seen[1]) != (stat.st_size, stat.st_mtime_ns):
            self._pending[path] = (stat.st_size, stat.st_mtime_ns, time.monotonic())

    def _flush_settled(self) -> None:
        now = time.monotonic()
        settled = []
        for path, (size, mtime_ns, since) in list(self._pending.items()):
            if now - since < self.settle_seconds:
                continue
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                del self._pending[path]
                continue
            if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
                self._pending[path] = (stat.st_size, stat.st_mtime_ns, now)  # still being written
                continue
            del self._pending[path]
            settled.append(self._event(self._relative(path), stat, "ObjectCreated:Put"))
        self._deliver(settled)

    def _deliver(self, events: list[ObjectEvent]) -> None:
        if not events:
            return
        try:
            self.emit(events)
        except Exception:
            log.exception("could not route %d event(s), first %s/%s", len(events), events[0].bucket, events[0].key)

    def _run(self) -> None:
        watcher = watchfiles.watch(self.root, stop_event=self._stop, debounce=50, step=5, rust_timeout=5,
                                   yield_on_timeout=True, raise_interrupt=False)
        self._scan(self.root)  # catch up on what arrived while nobody watched
        self._ready.set()
        for changes in watcher:
            for change, path in changes:
                relative = self._relative(path)
                if relative is None or ignored(relative):
                    continue
                if change == watchfiles.Change.deleted:
                    if self._pending.pop(path, None) is None and not os.path.exists(path):
                        self._deliver([self._event(relative, None, "ObjectRemoved:Delete")])
                elif os.path.isdir(path):
                    self._scan(path)
                else:
                    self._observe(path)
            self._flush_settled()

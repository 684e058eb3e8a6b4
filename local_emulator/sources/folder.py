"""A local folder as a bucket: a file is emitted once it is completely written, temporary and
hidden files are ignored, and on start a catch-up covers files that arrived while nobody
watched (receipts drop the ones already done).

"Completely written" is the kernel's word where it can give it: on Linux, inotify reports a
file closed after writing (IN_CLOSE_WRITE) or renamed into place (IN_MOVED_TO), so a writer
that pauses between pieces is never read half-way. Elsewhere (watchfiles), and for files a
scan finds (the catch-up, a new directory's first files), a file counts as complete once its
size and mtime hold still for the settle time."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from stat import S_ISREG
from typing import Callable

import watchfiles

from dropwire.functions.platform.registry import ObjectEvent

log = logging.getLogger("dropwire.sources.folder")

TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".swx", "~")
CLOSE_EVENTS = sys.platform.startswith("linux")


def ignored(relative: str) -> bool:
    parts = relative.split("/")
    return any(p.startswith(".") for p in parts) or relative.endswith(TEMPORARY_SUFFIXES)


class FolderSource:
    def __init__(self, root: Path, bucket: str, emit: Callable[[list[ObjectEvent]], object],
                 settle_seconds: float = 0.03, close_events: bool = CLOSE_EVENTS) -> None:
        self.root = root.resolve()
        self._prefix = str(self.root) + os.sep
        self.bucket = bucket
        self.emit = emit
        self.settle_seconds = settle_seconds
        self._pending: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, since)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run_inotify if close_events else self._run_watchfiles,
                                        name="dropwire-folder", daemon=True)

    def start(self) -> "FolderSource":
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    # ------------------------------------------------------------------ files and events

    def _relative(self, path: str) -> str | None:
        """The key of an eligible file below the root, else None (a symlink leading out of the
        folder is named in the log: the bucket never serves what lies outside it)."""
        if not path.startswith(self._prefix):
            return None
        relative = path[len(self._prefix):].replace(os.sep, "/")  # string work: this runs for every event
        if ignored(relative):
            return None
        if os.path.islink(path):
            target = Path(path).resolve()
            if not target.is_relative_to(self.root):
                log.warning("ignored %s/%s: a symlink to %s, outside the bucket folder %s", self.bucket, relative, target,
                            self.root)
                return None
        return relative

    def _event(self, relative: str, stat: os.stat_result | None, name: str) -> ObjectEvent:
        size, mtime_ns = (stat.st_size, stat.st_mtime_ns) if stat else (0, time.time_ns())
        version = f"{mtime_ns}-{size}"
        return ObjectEvent(bucket=self.bucket, key=relative, raw_key=relative, size=size, etag=version, version_id=version,
                           # mtime orders the events of one file, like S3's sequencer
                           sequencer=f"{mtime_ns:020X}", event_name=name,
                           event_time=datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).isoformat(), source="folder")

    def _created(self, path: str) -> ObjectEvent | None:
        """The event for a file known to be complete (closed after writing, renamed in)."""
        self._pending.pop(path, None)
        relative = self._relative(path)
        if relative is None:
            return None
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        return self._event(relative, stat, "ObjectCreated:Put") if S_ISREG(stat.st_mode) else None

    def _removed(self, path: str) -> ObjectEvent | None:
        relative = self._relative(path)
        if self._pending.pop(path, None) is not None or relative is None or os.path.exists(path):
            return None  # never emitted, or already back
        return self._event(relative, None, "ObjectRemoved:Delete")

    def _scan(self, top: Path | str) -> None:
        """Observe every eligible file below `top` (at start, and for a new directory, whose
        first files may land before the watch on it exists)."""
        for directory, subdirs, files in os.walk(top):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            for name in files:
                path = os.path.join(directory, name)
                if self._relative(path):
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
            relative = self._relative(path)
            if relative is not None:
                settled.append(self._event(relative, stat, "ObjectCreated:Put"))
        self._deliver(settled)

    def _deliver(self, events: list[ObjectEvent | None]) -> None:
        events = [e for e in events if e is not None]
        if not events:
            return
        try:
            self.emit(events)
        except Exception:
            log.exception("could not route %d event(s), first %s/%s", len(events), events[0].bucket, events[0].key)

    # ------------------------------------------------------------------ Linux: inotify

    def _run_inotify(self) -> None:
        from inotify_simple import INotify, flags

        directory_mask = flags.CREATE | flags.MOVED_TO | flags.CLOSE_WRITE | flags.DELETE | flags.MOVED_FROM
        watches: dict[int, str] = {}  # watch descriptor -> directory

        def watch_tree(top: str) -> None:
            for directory, subdirs, _ in os.walk(top):
                subdirs[:] = [d for d in subdirs if not d.startswith(".")]
                try:
                    watches[inotify.add_watch(directory, directory_mask | flags.DONT_FOLLOW)] = directory
                except OSError as exc:  # gone already, or out of watches: say which
                    log.warning("cannot watch %s: %s", directory, exc)

        def forget_tree(top: str) -> None:
            for wd, directory in list(watches.items()):
                if directory == top or directory.startswith(top + os.sep):
                    del watches[wd]
                    try:
                        inotify.rm_watch(wd)
                    except OSError:
                        pass  # the kernel dropped it with the directory

        with INotify() as inotify:
            watch_tree(str(self.root))
            self._scan(self.root)  # catch up on what arrived while nobody watched
            self._ready.set()
            while not self._stop.is_set():
                # Wake for the stop flag, or in time for the next pending file to settle.
                timeout_ms = max(1, int(self.settle_seconds * 1000)) if self._pending else 200
                events = []
                for event in inotify.read(timeout=timeout_ms):
                    if event.mask & flags.Q_OVERFLOW:
                        log.warning("the kernel dropped folder events (queue overflow); rescanning %s", self.root)
                        forget_tree(str(self.root))
                        watch_tree(str(self.root))
                        self._scan(self.root)
                        continue
                    if event.mask & flags.IGNORED:
                        watches.pop(event.wd, None)
                        continue
                    directory = watches.get(event.wd)
                    if directory is None or not event.name:
                        continue
                    path = os.path.join(directory, event.name)
                    if event.mask & flags.ISDIR:
                        if event.name.startswith("."):
                            continue
                        if event.mask & (flags.CREATE | flags.MOVED_TO):
                            watch_tree(path)
                            self._scan(path)
                        elif event.mask & flags.MOVED_FROM:
                            forget_tree(path)
                    elif event.mask & (flags.CLOSE_WRITE | flags.MOVED_TO):
                        events.append(self._created(path))
                    elif event.mask & flags.CREATE and os.path.islink(path):
                        events.append(self._created(path))  # a link is complete when made
                    elif event.mask & (flags.DELETE | flags.MOVED_FROM):
                        events.append(self._removed(path))
                self._deliver(events)
                self._flush_settled()

    # ------------------------------------------------------------------ elsewhere: watchfiles and the settle time

    def _run_watchfiles(self) -> None:
        watcher = watchfiles.watch(self.root, stop_event=self._stop, debounce=50, step=5, rust_timeout=5,
                                   yield_on_timeout=True, raise_interrupt=False)
        self._scan(self.root)  # catch up on what arrived while nobody watched
        self._ready.set()
        for changes in watcher:
            for change, path in changes:
                if self._relative(path) is None:
                    continue
                if change == watchfiles.Change.deleted:
                    self._deliver([self._removed(path)])
                elif os.path.isdir(path):
                    self._scan(path)
                else:
                    self._observe(path)
            self._flush_settled()

"""A local folder as a bucket: a file is emitted once it is completely written, temporary and
hidden files are ignored, and nothing dropped is lost: a reconciliation at start, after the
kernel drops events and every `reconcile_seconds` admits what has no receipt (receipts drop
what is admitted already, so every file fires once).

"Completely written" is the kernel's word where it can give it: on Linux, inotify reports a
file closed after writing (IN_CLOSE_WRITE) or renamed into place (IN_MOVED_TO), so a writer
that pauses between pieces is never read half-way. A file that turns up without either (one a
scan of a new folder finds, a hard link) is complete when no one has it open for writing (a
read lease says so) and else waits for its close; its folder is watched before it is listed,
so that close is seen. Elsewhere (watchfiles), and where a lease cannot tell, a file counts as
complete once its size and mtime hold still for the settle time.

An event that cannot be routed is kept and routed again with backoff, never dropped."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG

import watchfiles

from dropwire.functions.platform.objects import open_for_writing
from dropwire.functions.platform.registry import ObjectEvent
from dropwire.local_emulator.router import NotAdmitted
from dropwire.local_emulator.sources.reconcile import TEMPORARY_SUFFIXES, Found, ignored, version_of, walk
from dropwire.storage.records import Admission

__all__ = ["CLOSE_EVENTS", "TEMPORARY_SUFFIXES", "FolderSource", "ignored", "open_for_writing"]

log = logging.getLogger("dropwire.sources.folder")

CLOSE_EVENTS = sys.platform.startswith("linux")
# Files that no receipt covers -> (file, functions owed it); None: every file is owed.
Unadmitted = Callable[[list[Found]], list[tuple[Found, list[str]]]]
RETRY_MAX_SECONDS = 30.0
# Paths whose last emitted version is remembered, so the two ways one close can be seen (a
# scan and the event) make one event, not two; receipts stop any that get past.
REMEMBERED = 65536
ROUTE_CHUNK = 5000  # events per route call: one group commit each


class FolderSource:
    def __init__(self, root: Path, bucket: str, emit: Callable[[list[ObjectEvent]], object],
                 settle_seconds: float = 0.03, close_events: bool = CLOSE_EVENTS, *,
                 unadmitted: Unadmitted | None = None, reconcile_seconds: float = 0.0,
                 retry_seconds: float = 0.5) -> None:
        self.root = root.resolve()
        self._prefix = str(self.root) + os.sep
        self.bucket = bucket
        self.emit = emit
        self.settle_seconds = settle_seconds
        self.close_events = close_events
        self.unadmitted = unadmitted
        self.reconcile_seconds = reconcile_seconds
        self.retry_seconds = retry_seconds
        # Files reconciliation admitted (one per function they fired), by when it ran: start,
        # overflow, periodic. The watcher had missed them.
        self.recovered: Counter[str] = Counter()
        self._pending: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, since): settling
        self._awaiting_close: set[str] = set()  # open for writing when found: the close event emits them
        self._why: dict[str, str] = {}  # path -> the reconciliation that found it
        self._emitted: OrderedDict[str, str] = OrderedDict()  # path -> version last emitted
        self._held: list[tuple[list[ObjectEvent], str | None]] = []  # could not be routed: retried
        self._held_failures = 0
        self._retry_at = 0.0
        self._handoff: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()  # from the periodic reconciliation
        self._watched: set[str] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run_inotify if close_events else self._run_watchfiles,
                                        name="dropwire-folder", daemon=True)
        self._reconciler = threading.Thread(target=self._reconcile_periodically, name="dropwire-folder-reconcile",
                                            daemon=True)

    def start(self) -> FolderSource:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self._ready.wait(10)
        if self.reconcile_seconds > 0:
            self._reconciler.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._reconciler.is_alive():
            self._reconciler.join()
        held = sum(len(events) for events, _ in self._held)
        if held:
            log.warning("stopped with %d event(s) of %s not routed; the next start's reconciliation admits them",
                        held, self.root)

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
                           event_time=datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat(), source="folder")

    def _created(self, path: str) -> ObjectEvent | None:
        """The event for a file known to be complete (closed after writing, renamed in)."""
        self._pending.pop(path, None)
        self._awaiting_close.discard(path)
        relative = self._relative(path)
        if relative is None:
            return None
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        if not S_ISREG(stat.st_mode):
            return None
        version = version_of(stat)
        if self._emitted.get(path) == version:
            self._why.pop(path, None)
            return None  # this close was seen the other way already
        self._emitted[path] = version
        self._emitted.move_to_end(path)
        if len(self._emitted) > REMEMBERED:
            self._emitted.popitem(last=False)
        return self._event(relative, stat, "ObjectCreated:Put")

    def _removed(self, path: str) -> ObjectEvent | None:
        relative = self._relative(path)
        self._awaiting_close.discard(path)
        self._why.pop(path, None)
        self._emitted.pop(path, None)
        if self._pending.pop(path, None) is not None or relative is None or os.path.exists(path):
            return None  # never emitted, or already back
        return self._event(relative, None, "ObjectRemoved:Delete")

    def _found(self, path: str, why: str | None = None) -> ObjectEvent | None:
        """A file that turned up without a close or a rename (a scan, a reconciliation, a
        hard link): its event now if no one is writing it, else none until its close is seen
        (its folder is watched by now); where that cannot be told, once it holds still."""
        if why is not None:
            self._why[path] = why
        writing = open_for_writing(path) if self.close_events else None
        if writing is None:
            self._observe(path)
        elif writing:
            self._awaiting_close.add(path)
        else:
            return self._created(path)
        return None

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
            settled.append(self._created(path))
        self._deliver(settled)

    def _deliver(self, events: list[ObjectEvent | None]) -> None:
        """Route events, those a reconciliation found apart (to count them), in chunks. What
        cannot be routed is held and routed again with backoff; a later event of a held key
        waits behind it (a key's events keep their order), other keys' events do not."""
        groups: dict[str | None, list[ObjectEvent]] = {}
        for event in events:
            if event is not None:
                groups.setdefault(self._why.pop(self._prefix + event.key, None), []).append(event)
        for why, group in groups.items():
            self._forget_held_removed(group)
            for start in range(0, len(group), ROUTE_CHUNK):
                chunk = group[start:start + ROUTE_CHUNK]
                held_keys = {e.key for held, _ in self._held for e in held}
                behind = [e for e in chunk if e.key in held_keys]
                if behind:
                    self._held.append((behind, why))
                left = self._route([e for e in chunk if e.key not in held_keys], why)
                if left:
                    if not self._held:
                        self._retry_at = time.monotonic() + self.retry_seconds
                    self._held.append((left, why))

    def _forget_held_removed(self, events: list[ObjectEvent]) -> None:
        """A file removed (or renamed away) while its creation is held: that creation is moot."""
        removed = {e.key for e in events if e.event_name.startswith("ObjectRemoved")}
        if removed and self._held:
            self._held = [(kept, why) for held, why in self._held
                          if (kept := [e for e in held if not (e.key in removed and e.event_name.startswith("ObjectCreated"))])]

    def _route(self, events: list[ObjectEvent], why: str | None) -> list[ObjectEvent]:
        """Route `events`; answers those that could not be routed (the others were)."""
        if not events:
            return []
        left: list[ObjectEvent] = []
        crash: BaseException | None = None  # an unexpected error's traceback goes to the log once
        error = ""
        try:
            admissions = self.emit(events)
        except NotAdmitted as exc:  # the others were admitted: only these wait
            admissions, left, error = exc.admissions, exc.events, exc.message
        except Exception as exc:
            admissions, left, error, crash = None, events, str(exc), exc
        if left:
            self._held_failures += 1
            if self._held_failures == 1 or self._held_failures % 10 == 0:
                log.error("could not route %d event(s) of %s (first %s): %s; kept, and routed again with backoff "
                          "(%d failed attempt(s) so far)", len(left), self.root, left[0].key, error, self._held_failures,
                          exc_info=crash if self._held_failures == 1 else None)
        if why is not None and isinstance(admissions, list):
            accepted = sum(1 for a in admissions if isinstance(a, Admission) and a.outcome == "accepted")
            if accepted:
                self.recovered[why] += accepted
                # At start these arrived while nobody watched; otherwise the watcher missed them.
                log.log(logging.INFO if why == "start" else logging.WARNING,
                        "reconciliation (%s) admitted %d file(s) of %s that had no receipt, first %s", why, accepted,
                        self.root, events[0].key)
        return left

    def _retry_held(self) -> None:
        if not self._held or time.monotonic() < self._retry_at:
            return
        failures = self._held_failures
        while self._held:
            events, why = self._held[0]
            left = self._route(events, why)
            if left:
                self._held[0] = (left, why)
                delay = min(RETRY_MAX_SECONDS, self.retry_seconds * 2 ** min(self._held_failures - 1, 16))
                self._retry_at = time.monotonic() + delay
                return
            self._held.pop(0)
        log.warning("routed the held events of %s after %d failed attempt(s)", self.root, failures)
        self._held_failures = 0

    def _wait_seconds(self) -> float:
        """How long the loop may sleep: in time for a settling file or a retry, else a moment."""
        wait = 0.2
        if self._pending:
            wait = min(wait, self.settle_seconds)
        if self._held:
            wait = min(wait, max(0.0, self._retry_at - time.monotonic()))
        return max(0.001, wait)

    # ------------------------------------------------------------------ reconciliation

    def _reconcile(self, files: list[Found], why: str) -> None:
        """Hand over, as found, the files of a listing that no receipt covers."""
        if self.unadmitted is None:
            missed = [(found, []) for found in files]
        else:
            try:
                missed = self.unadmitted(files)
            except Exception:
                log.exception("could not compare %s with the receipts (%s); every file is offered instead, and "
                              "receipts drop those admitted before", self.root, why)
                missed = [(found, []) for found in files]
        self._deliver([self._found(found.path, why if self.unadmitted is not None else None) for found, _ in missed])

    def _reconcile_periodically(self) -> None:
        """Every reconcile_seconds: list the folder, compare with the receipts, hand what is
        missed (and any folder without a watch) to the watcher's thread."""
        while not self._stop.wait(self.reconcile_seconds):
            started = time.time()
            unwatched: list[str] = []
            grace = max(5 * self.settle_seconds, 1.0)  # younger files are most likely still on their way in

            def note(directory: str, unwatched: list[str] = unwatched) -> None:
                if self.close_events and directory not in self._watched:
                    unwatched.append(directory)

            files = [f for f in walk(self.root, note) if f.stat.st_ctime < started - grace]
            for directory in unwatched:
                log.warning("%s had no watch; watching it now", directory)
                self._handoff.put(("directory", directory))
            try:
                missed = self.unadmitted(files) if self.unadmitted is not None else []
            except Exception:
                log.exception("the periodic reconciliation of %s could not compare it with the receipts; next "
                              "try in %ss", self.root, self.reconcile_seconds)
                continue
            for found, _ in missed:
                self._handoff.put(("file", found.path))

    def _take_handoff(self, watch_tree: Callable[[str], list[Found]] | None) -> None:
        events: list[ObjectEvent | None] = []
        while True:
            try:
                kind, path = self._handoff.get_nowait()
            except queue.Empty:
                break
            if kind == "directory" and watch_tree is not None:
                events.extend(self._found(found.path) for found in watch_tree(path))
            elif kind == "file" and path not in self._awaiting_close and path not in self._pending:
                events.append(self._found(path, "periodic"))  # (one the watcher follows is on its way)
        self._deliver(events)

    # ------------------------------------------------------------------ Linux: inotify

    def _run_inotify(self) -> None:
        from inotify_simple import INotify, flags

        directory_mask = flags.CREATE | flags.MOVED_TO | flags.CLOSE_WRITE | flags.DELETE | flags.MOVED_FROM
        watches: dict[int, str] = {}  # watch descriptor -> directory

        def watch(directory: str) -> None:
            try:
                watches[inotify.add_watch(directory, directory_mask | flags.DONT_FOLLOW | flags.ONLYDIR)] = directory
                self._watched.add(directory)
            except OSError as exc:  # gone already, or out of watches: say which
                log.warning("cannot watch %s: %s", directory, exc)

        def watch_tree(top: str) -> list[Found]:
            # Each folder is watched before it is listed: what is made in it after the listing
            # comes as an event, what was made before is in the listing.
            return list(walk(top, watch))

        def forget_tree(top: str) -> None:
            for wd, directory in list(watches.items()):
                if directory == top or directory.startswith(top + os.sep):
                    del watches[wd]
                    self._watched.discard(directory)
                    with contextlib.suppress(OSError):  # the kernel dropped it with the directory
                        inotify.rm_watch(wd)

        with INotify() as inotify:
            self._reconcile(watch_tree(str(self.root)), "start")  # what arrived while nobody watched
            self._ready.set()
            while not self._stop.is_set():
                # Wake for the stop flag, in time for the next pending file to settle or a retry.
                events = []
                for event in inotify.read(timeout=int(self._wait_seconds() * 1000) or 1):
                    if event.mask & flags.Q_OVERFLOW:
                        log.warning("the kernel dropped folder events (queue overflow); reconciling %s", self.root)
                        self._deliver(events)
                        events = []
                        forget_tree(str(self.root))
                        self._reconcile(watch_tree(str(self.root)), "overflow")
                        continue
                    if event.mask & flags.IGNORED:
                        gone = watches.pop(event.wd, None)
                        self._watched.discard(gone)
                        continue
                    directory = watches.get(event.wd)
                    if directory is None or not event.name:
                        continue
                    path = os.path.join(directory, event.name)
                    if event.mask & flags.ISDIR:
                        if event.name.startswith("."):
                            continue
                        if event.mask & (flags.CREATE | flags.MOVED_TO):
                            events.extend(self._found(found.path) for found in watch_tree(path))
                        elif event.mask & flags.MOVED_FROM:
                            forget_tree(path)
                    elif event.mask & (flags.CLOSE_WRITE | flags.MOVED_TO):
                        events.append(self._created(path))
                    elif event.mask & flags.CREATE:
                        if os.path.islink(path):
                            events.append(self._created(path))  # a link is complete when made
                        elif self._relative(path) is not None:
                            # A new file is open: its close emits it. A hard link has no close.
                            events.append(self._found(path))
                    elif event.mask & (flags.DELETE | flags.MOVED_FROM):
                        events.append(self._removed(path))
                self._deliver(events)
                self._take_handoff(watch_tree)
                self._flush_settled()
                self._retry_held()

    # ------------------------------------------------------------------ elsewhere: watchfiles and the settle time

    def _run_watchfiles(self) -> None:
        watcher = watchfiles.watch(self.root, stop_event=self._stop, debounce=50, step=5, rust_timeout=5,
                                   yield_on_timeout=True, raise_interrupt=False)
        self._reconcile(list(walk(self.root)), "start")  # what arrived while nobody watched
        self._ready.set()
        for changes in watcher:
            for change, path in changes:
                if self._relative(path) is None:
                    continue
                if change == watchfiles.Change.deleted:
                    self._deliver([self._removed(path)])
                elif os.path.isdir(path):
                    for found in walk(path):
                        self._observe(found.path)
                else:
                    self._observe(path)
            self._take_handoff(None)
            self._flush_settled()
            self._retry_held()

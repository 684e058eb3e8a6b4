"""From an object event to queued invocations: refuse unsafe keys, find the functions whose
triggers match, stop runaway chains (hop limit), and admit one invocation per function
(duplicates and stale re-orders are dropped by the store's receipts).

Events that cannot be admitted (the store refused or could not write them) are never only a
log line: `route` admits the rest, then raises `NotAdmitted` naming each failed event with
its key, for the source to retry (the folder source retries, an SQS message stays queued);
and `health` holds, per source, the events not admitted yet and since when, for the
gateway's /health and /metrics. An event is no longer failing once a later route of its key
from that source went through."""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from dropwire.functions.kit.errors import DropwireError, NotFound
from dropwire.functions.platform.objects import InvalidKey, ObjectStore, check_key
from dropwire.functions.platform.registry import FunctionRegistry, Invocation, ObjectEvent
from dropwire.storage.receipts import printable
from dropwire.storage.records import Admission, ObjectReceipt, TaskSpec

log = logging.getLogger("dropwire.router")


class Admitter(Protocol):
    """The store's receipts (storage.receipts.Receipts)."""

    def admit(self, offers: list[tuple[ObjectReceipt, TaskSpec]]) -> list[Admission]: ...

    def hops_of(self, objects: list[tuple[str, str]]) -> dict[tuple[str, str], int]: ...


class Enqueuer(Protocol):
    """The store's queue (storage.queue.Queue)."""

    def enqueue(self, spec: TaskSpec) -> int: ...


def _utf8(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class NotAdmitted(DropwireError):
    """Some events of a route could not be admitted; the others were. `failed` holds each
    such event with the reason (it names the key), for the source to retry."""

    http_status = 503
    code = "events_not_admitted"

    def __init__(self, failed: list[tuple[ObjectEvent, str]], admissions: list[Admission]) -> None:
        event, reason = failed[0]
        super().__init__(f"{len(failed)} event(s) could not be admitted, first {event.bucket}/{printable(event.key)}: "
                         f"{reason}", keys=[f"{e.bucket}/{printable(e.key)}" for e, _ in failed])
        self.failed = failed
        self.admissions = admissions

    @property
    def events(self) -> list[ObjectEvent]:
        return [event for event, _ in self.failed]


class FailingEvent(msgspec.Struct, frozen=True):
    bucket: str
    key: str
    error: str
    #: when it first failed, and how often since (epoch seconds)
    since: float
    attempts: int


class SourceHealth(msgspec.Struct, frozen=True):
    source: str
    #: events that failed so far (every attempt counts); a counter for /metrics
    failures: int
    #: the events that are failing now, oldest first
    failing: list[FailingEvent]

    @property
    def degraded(self) -> bool:
        return bool(self.failing)


class AdmissionHealth:
    """Per event source: how many events failed to be admitted, and which are failing now
    (until a later route of the same key from that source goes through)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._failing: dict[str, dict[tuple[str, str], FailingEvent]] = {}

    def expect(self, source: str) -> None:
        """Name a source before its first event, so /metrics shows it (at 0) from the start."""
        with self._lock:
            self._failures.setdefault(source, 0)
            self._failing.setdefault(source, {})

    def record(self, events: list[ObjectEvent], failed: list[tuple[ObjectEvent, str]]) -> None:
        now = time.time()
        with self._lock:
            bad = {(e.source, e.bucket, e.key) for e, _ in failed}
            for event in events:
                if (event.source, event.bucket, event.key) not in bad:
                    self._failing.get(event.source, {}).pop((event.bucket, event.key), None)
            for event, reason in failed:
                self._failures[event.source] = self._failures.get(event.source, 0) + 1
                failing = self._failing.setdefault(event.source, {})
                before = failing.get((event.bucket, event.key))
                failing[(event.bucket, event.key)] = FailingEvent(
                    bucket=event.bucket, key=printable(event.key), error=reason, since=before.since if before else now,
                    attempts=before.attempts + 1 if before else 1)

    def sources(self) -> list[SourceHealth]:
        with self._lock:
            return [SourceHealth(source=source, failures=self._failures.get(source, 0),
                                 failing=sorted(self._failing.get(source, {}).values(), key=lambda f: f.since))
                    for source in sorted(set(self._failures) | set(self._failing))]


class EventRouter:
    def __init__(self, functions: FunctionRegistry, admitter: Admitter, queue: Enqueuer, hop_limit: int) -> None:
        self.functions = functions
        self.admitter = admitter
        self.queue = queue
        self.hop_limit = hop_limit
        self.health = AdmissionHealth()

    def route(self, events: list[ObjectEvent]) -> list[Admission]:
        """Admit every (event, matching function) pair in one group commit. Events that could
        not be admitted are recorded in `health` and raised as `NotAdmitted` (after the
        others were admitted)."""
        try:
            admissions, failed = self._route(events)
        except Exception as exc:  # nothing of it was admitted: every event failed, and says why
            reason = exc.message if isinstance(exc, DropwireError) else f"{type(exc).__name__}: {exc}"
            failed = [(event, reason) for event in events]
            self.health.record(events, failed)
            raise NotAdmitted(failed, []) from exc
        self.health.record(events, failed)
        if failed:
            raise NotAdmitted(failed, admissions)
        return admissions

    def _route(self, events: list[ObjectEvent]) -> tuple[list[Admission], list[tuple[ObjectEvent, str]]]:
        wanted = [(event, self.functions.matching(event)) for event in events if self._safe(event)]
        failed: dict[int, tuple[ObjectEvent, str]] = {}  # one entry per event, whatever failed for it
        for event, matching in wanted:
            if matching and not _utf8(event.key):  # no row of the store can hold it: it alone fails
                failed[id(event)] = (event, f"its key {printable(event.key)} is not UTF-8 (a file name's bytes in "
                                            "another encoding); rename the object to a UTF-8 name")
                log.error("%s/%s from %s not admitted: %s", event.bucket, printable(event.key), event.source,
                          failed[id(event)][1])
        hops = self.admitter.hops_of(list({(e.bucket, e.key) for e, _ in wanted if _utf8(e.key)}))
        for event, matching in wanted:
            if not matching:
                # An upload nothing watches may be a misnamed file, worth a line; a handler's
                # output that nothing watches is where it was written to be.
                level = logging.DEBUG if hops.get((event.bucket, event.key), 0) else logging.INFO
                log.log(level, "no function watches %s %s/%s; ignored", event.event_name, event.bucket, printable(event.key))
        wanted = [(event, matching) for event, matching in wanted if matching and id(event) not in failed]
        offers, offered = [], []
        for event, matching in wanted:
            hop = hops.get((event.bucket, event.key), 0)
            if hop >= self.hop_limit:
                log.error("refused %s/%s: it is %d handler hops from an outside upload, the limit is %d; "
                          "a chain of functions is feeding itself", event.bucket, event.key, hop, self.hop_limit)
                continue
            for spec in matching:
                offers.append((ObjectReceipt(function=spec.name, bucket=event.bucket, key=event.key, version=event.version,
                                             sequencer=event.sequencer, event_name=event.event_name),
                               TaskSpec(name=spec.task_name, max_attempts=spec.max_attempts,
                                        args=Invocation(function=spec.name, source="upload", event=event, hop=hop))))
                offered.append((event, spec.name))
        admissions = self.admitter.admit(offers) if offers else []
        for (event, function), admission in zip(offered, admissions, strict=False):
            if admission.outcome == "accepted":
                log.info("%s/%s -> %s (task %s)", event.bucket, event.key, function, admission.task_id)
            elif admission.outcome == "failed":
                log.error("%s/%s from %s not admitted for %s: %s", event.bucket, event.key, event.source, function,
                          admission.reason)
                failed.setdefault(id(event), (event, admission.reason))
            else:
                log.info("%s/%s not queued for %s: %s (%s)", event.bucket, event.key, function, admission.outcome,
                         admission.reason)
        return admissions, list(failed.values())

    @staticmethod
    def _safe(event: ObjectEvent) -> bool:
        try:
            check_key(event.key)
        except InvalidKey as exc:
            log.warning("ignored %s event from %s for %s/%r: %s", event.event_name, event.source, event.bucket,
                        event.raw_key, exc.message)
            return False
        return True

    def reprocess(self, function: str, objects: ObjectStore, bucket: str, key: str) -> int:
        """Run `function` again on an object, on purpose: receipts do not stop it."""
        spec = self.functions.get(function)
        fs, root = objects.filesystem(bucket)
        try:
            info = fs.info(posixpath.join(root, check_key(key)))
        except FileNotFoundError:
            raise NotFound(f"object {bucket}/{key} does not exist", bucket=bucket, key=key) from None
        size = int(info.get("size") or 0)
        version = str(info.get("VersionId") or info.get("ETag", "").strip('"') or f"{info.get('mtime')}-{size}")
        event = ObjectEvent(bucket=bucket, key=key, raw_key=key, size=size, etag=version, version_id=version,
                            sequencer=None, event_name="ObjectCreated:Reprocess",
                            event_time=datetime.now(UTC).isoformat(), source="reprocess")
        task_id = self.queue.enqueue(TaskSpec(
            name=spec.task_name, max_attempts=spec.max_attempts,
            args=Invocation(function=function, source="reprocess", event=event,
                            hop=self.admitter.hops_of([(bucket, key)]).get((bucket, key), 0))))
        log.info("reprocessing %s/%s with %s (task %s)", bucket, key, function, task_id)
        return task_id

"""From an object event to queued invocations: refuse unsafe keys, find the functions whose
triggers match, stop runaway chains (hop limit), and admit one invocation per function
(duplicates and stale re-orders are dropped by the store's receipts)."""

from __future__ import annotations

import logging
import posixpath
from datetime import datetime, timezone
from typing import Protocol

from dropwire.functions.platform.objects import InvalidKey, ObjectStore, check_key
from dropwire.functions.platform.registry import FunctionRegistry, Invocation, ObjectEvent
from dropwire.storage.errors import NotFound
from dropwire.storage.records import Admission, ObjectReceipt, TaskSpec

log = logging.getLogger("dropwire.router")


class Admitter(Protocol):
    """The store's receipts (storage.receipts.Receipts)."""

    def admit(self, offers: list[tuple[ObjectReceipt, TaskSpec]]) -> list[Admission]: ...

    def hops_of(self, objects: list[tuple[str, str]]) -> dict[tuple[str, str], int]: ...


class Enqueuer(Protocol):
    """The store's queue (storage.queue.Queue)."""

    def enqueue(self, spec: TaskSpec) -> int: ...


class EventRouter:
    def __init__(self, functions: FunctionRegistry, admitter: Admitter, queue: Enqueuer, hop_limit: int) -> None:
        self.functions = functions
        self.admitter = admitter
        self.queue = queue
        self.hop_limit = hop_limit

    def route(self, events: list[ObjectEvent]) -> list[Admission]:
        """Admit every (event, matching function) pair in one group commit."""
        wanted = [(event, self.functions.matching(event)) for event in events if self._safe(event)]
        hops = self.admitter.hops_of(list({(e.bucket, e.key) for e, _ in wanted}))
        for event, matching in wanted:
            if not matching:
                # An upload nothing watches may be a misnamed file, worth a line; a handler's
                # output that nothing watches is where it was written to be.
                level = logging.DEBUG if hops.get((event.bucket, event.key), 0) else logging.INFO
                log.log(level, "no function watches %s %s/%s; ignored", event.event_name, event.bucket, event.key)
        wanted = [(event, matching) for event, matching in wanted if matching]
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
        for (event, function), admission in zip(offered, admissions):
            if admission.outcome == "accepted":
                log.info("%s/%s -> %s (task %s)", event.bucket, event.key, function, admission.task_id)
            else:
                log.info("%s/%s not queued for %s: %s (%s)", event.bucket, event.key, function, admission.outcome,
                         admission.reason)
        return admissions

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
                            event_time=datetime.now(timezone.utc).isoformat(), source="reprocess")
        task_id = self.queue.enqueue(TaskSpec(
            name=spec.task_name, max_attempts=spec.max_attempts,
            args=Invocation(function=function, source="reprocess", event=event,
                            hop=self.admitter.hops_of([(bucket, key)]).get((bucket, key), 0))))
        log.info("reprocessing %s/%s with %s (task %s)", bucket, key, function, task_id)
        return task_id

"""From an object event to queued invocations: refuse unsafe keys, find the functions whose
triggers match, stop runaway chains (hop limit), and admit one invocation per function
(duplicates and stale re-orders are dropped by the store's receipts)."""

from __future__ import annotations

import logging
import posixpath
from datetime import datetime, timezone
from typing import Protocol

from functions.objects import InvalidKey, ObjectStore, check_key
from functions.platform import FunctionRegistry, Invocation, ObjectEvent
from storage.errors import NotFound
from storage.records import Admission, ObjectReceipt, TaskSpec

log = logging.getLogger("dropwire.router")


class Admitter(Protocol):
    def admit(self, receipt: ObjectReceipt, spec: TaskSpec) -> Admission: ...

    def hop_of(self, bucket: str, key: str) -> int: ...

    def enqueue(self, spec: TaskSpec) -> int: ...


class EventRouter:
    def __init__(self, functions: FunctionRegistry, admitter: Admitter, hop_limit: int) -> None:
        self.functions = functions
        self.admitter = admitter
        self.hop_limit = hop_limit

    def route(self, event: ObjectEvent) -> list[Admission]:
        try:
            check_key(event.key)
        except InvalidKey as exc:
            log.warning("ignored %s event from %s for %s/%r: %s", event.event_name, event.source, event.bucket,
                        event.raw_key, exc.message)
            return []
        matching = self.functions.matching(event)
        if not matching:
            log.info("no function watches %s %s/%s; ignored", event.event_name, event.bucket, event.key)
            return []
        hop = self.admitter.hop_of(event.bucket, event.key)
        if hop >= self.hop_limit:
            log.error("refused %s/%s: it is %d handler hops from an outside upload, the limit is %d; "
                      "a chain of functions is feeding itself", event.bucket, event.key, hop, self.hop_limit)
            return []
        admissions = []
        for spec in matching:
            admission = self.admitter.admit(
                ObjectReceipt(function=spec.name, bucket=event.bucket, key=event.key, version=event.version,
                              sequencer=event.sequencer, event_name=event.event_name),
                TaskSpec(name=spec.task_name, args=Invocation(function=spec.name, source="upload", event=event, hop=hop),
                         max_attempts=spec.max_attempts),
            )
            if admission.outcome == "accepted":
                log.info("%s/%s -> %s (task %s)", event.bucket, event.key, spec.name, admission.task_id)
            else:
                log.info("%s/%s not queued for %s: %s (%s)", event.bucket, event.key, spec.name, admission.outcome,
                         admission.reason)
            admissions.append(admission)
        return admissions

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
        task_id = self.admitter.enqueue(TaskSpec(
            name=spec.task_name, max_attempts=spec.max_attempts,
            args=Invocation(function=function, source="reprocess", event=event, hop=self.admitter.hop_of(bucket, key))))
        log.info("reprocessing %s/%s with %s (task %s)", bucket, key, function, task_id)
        return task_id

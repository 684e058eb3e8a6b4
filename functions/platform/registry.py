"""Declaring handler functions: what fires them (uploads, schedules, HTTP), what they write,
and the events they receive. Registration refuses a function whose triggers would fire on
its own outputs, or on another function's outputs in a cycle (the classic Lambda loop)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from dropwire.functions.kit.errors import DropwireError, NotFound
from dropwire.functions.platform.tasks import load_named

if TYPE_CHECKING:
    from dropwire.functions.platform.api_ports import ApiFactory


def task_name(function: str) -> str:
    """The name of the queue task that invokes a function: what a domain enqueues to run one of its
    functions as a follow-up step, and what the dispatcher routes back to the function."""
    return f"fn:{function}"


class ObjectEvent(msgspec.Struct, kw_only=True, frozen=True, tag_field="type", tag="object"):
    """One object-store event, whatever its source (S3 notification, SQS, a local folder)."""

    bucket: str
    key: str  # decoded
    raw_key: str  # as the source sent it (URL-encoded for S3)
    size: int
    etag: str
    version_id: str | None
    sequencer: str | None
    event_name: str  # e.g. ObjectCreated:Put
    event_time: str
    source: str  # s3 | sqs | folder

    @property
    def version(self) -> str:
        """What identifies this content of the key: version id, else etag."""
        return self.version_id or self.etag


class ScheduledEvent(msgspec.Struct, kw_only=True, frozen=True, tag_field="type", tag="schedule"):
    schedule: str
    fire_time: str
    catch_up: bool = False


class HttpEvent(msgspec.Struct, kw_only=True, frozen=True, tag_field="type", tag="http"):
    body: Any
    received_at: str


Event = ObjectEvent | ScheduledEvent | HttpEvent


class Invocation(msgspec.Struct, kw_only=True, frozen=True):
    """The arguments of a queued invocation task."""

    function: str
    #: upload | schedule | http | reprocess
    source: str
    event: ObjectEvent | ScheduledEvent | HttpEvent
    #: Handler hops from an outside upload to the object that fired this (recursion guard).
    hop: int = 0


class OnUpload(msgspec.Struct, kw_only=True, frozen=True):
    bucket: str
    prefix: str = ""
    suffix: str = ""
    #: Shell-style patterns over event names, with or without the "s3:" prefix.
    events: tuple[str, ...] = ("ObjectCreated:*",)

    def matches(self, event: ObjectEvent) -> bool:
        name = event.event_name.removeprefix("s3:")
        return (
            event.bucket == self.bucket
            and event.key.startswith(self.prefix)
            and event.key.endswith(self.suffix)
            and any(fnmatch.fnmatchcase(name, pattern.removeprefix("s3:")) for pattern in self.events)
        )


class OnSchedule(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    cron: str | None = None
    every_seconds: float | None = None
    #: A run missed while the emulator was down is caught up once if it is this recent.
    catch_up_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_seconds is None):
            raise DropwireError(f"schedule {self.name!r} needs exactly one of cron or every_seconds")


class OnHttp(msgspec.Struct, kw_only=True, frozen=True):
    pass


class OnQueue(msgspec.Struct, kw_only=True, frozen=True):
    """A follow-up step: queued only by another function's committed effects (e.g. an
    evaluation queued by a passed quality check), never fired by uploads, schedules or HTTP."""


Trigger = OnUpload | OnSchedule | OnHttp | OnQueue


class Output(msgspec.Struct, kw_only=True, frozen=True):
    bucket: str
    prefix: str

    def overlaps(self, trigger: OnUpload) -> bool:
        """Could an object written here fire the trigger?"""
        return self.bucket == trigger.bucket and (
            self.prefix.startswith(trigger.prefix) or trigger.prefix.startswith(self.prefix)
        )


class Resources(msgspec.Struct, kw_only=True, frozen=True):
    """What one invocation needs where it runs: on a Ray cluster, its task's resource request
    (a local handler process ignores them)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.cpus < 0 or self.gpus < 0 or (self.memory_bytes is not None and self.memory_bytes <= 0):
            raise DropwireError("resources: cpus and gpus must be 0 or more, memory_bytes positive")


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: Callable[..., Any]
    triggers: tuple[Trigger, ...]
    outputs: tuple[Output, ...]
    timeout_seconds: float
    max_attempts: int
    resources: Resources = Resources()

    @property
    def task_name(self) -> str:
        return task_name(self.name)

    @property
    def handler_ref(self) -> str:
        return f"{self.handler.__module__}:{self.handler.__qualname__}"

    def uploads(self) -> list[OnUpload]:
        return [t for t in self.triggers if isinstance(t, OnUpload)]

    def may_write(self, bucket: str, key: str) -> bool:
        return any(o.bucket == bucket and key.startswith(o.prefix) for o in self.outputs)


class RecursiveTrigger(DropwireError):
    code = "recursive_trigger"


class FunctionRegistry:
    def __init__(self) -> None:
        self._functions: dict[str, FunctionSpec] = {}
        self._apis: list[ApiFactory] = []
        # The domains it was built from (functions/platform/domain.py build_registry); none
        # for a registry declared by hand.
        self.domains: tuple = ()

    def function(self, name: str, *, on: list[Trigger], outputs: Sequence[Output] = (), timeout_seconds: float = 300.0,
                 max_attempts: int = 3, resources: Resources = Resources()) -> Callable:
        """Register `handler(event, context)` with its triggers, output prefixes and the
        resources one invocation needs."""

        def register(handler: Callable) -> Callable:
            self.add(FunctionSpec(name, handler, tuple(on), tuple(outputs), timeout_seconds, max_attempts, resources))
            return handler

        return register

    def add(self, spec: FunctionSpec) -> None:
        if spec.name in self._functions:
            raise DropwireError(f"function {spec.name!r} is registered twice")
        if not spec.triggers:
            raise DropwireError(f"function {spec.name!r} has no trigger")
        if spec.timeout_seconds <= 0 or spec.max_attempts < 1:
            raise DropwireError(f"function {spec.name!r}: timeout_seconds must be positive and max_attempts at least 1")
        names = {t.name for f in self._functions.values() for t in f.triggers if isinstance(t, OnSchedule)}
        for trigger in spec.triggers:
            if isinstance(trigger, OnSchedule) and trigger.name in names:
                raise DropwireError(f"schedule {trigger.name!r} is declared twice")
        self._refuse_loops({**self._functions, spec.name: spec}, spec)
        self._functions[spec.name] = spec

    @staticmethod
    def _refuse_loops(functions: dict[str, FunctionSpec], new: FunctionSpec) -> None:
        for output in new.outputs:
            for trigger in new.uploads():
                if output.overlaps(trigger):
                    raise RecursiveTrigger(
                        f"function {new.name!r} would fire on its own output: it writes {output.bucket}/{output.prefix}* "
                        f"and is triggered by uploads to {trigger.bucket}/{trigger.prefix}*{trigger.suffix}; "
                        "write outputs under a prefix that no trigger watches")
        # f -> g when something f writes can fire g; a path back to `new` is a loop.
        edges = {f.name: [g.name for g in functions.values()
                          if any(o.overlaps(t) for o in f.outputs for t in g.uploads())] for f in functions.values()}
        stack, seen = [(new.name, [new.name])], set()
        while stack:
            at, path = stack.pop()
            for nxt in edges[at]:
                if nxt == new.name:
                    raise RecursiveTrigger("functions would fire each other in a loop: " + " -> ".join([*path, nxt]))
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))

    def http_api(self, factory: ApiFactory) -> ApiFactory:
        """Serve `factory(ports)` (a Litestar Router) on the gateway beside the functions, so
        an API of the product is mounted without the emulator knowing what it does."""
        self._apis.append(factory)
        return factory

    def http_apis(self) -> list[ApiFactory]:
        return list(self._apis)

    def get(self, name: str) -> FunctionSpec:
        try:
            return self._functions[name]
        except KeyError:
            raise NotFound(f"no function named {name!r}; registered: {sorted(self._functions)}") from None

    def __iter__(self):
        return iter(self._functions.values())

    def matching(self, event: ObjectEvent) -> list[FunctionSpec]:
        return [f for f in self._functions.values() if any(t.matches(event) for t in f.uploads())]

    def schedules(self) -> list[tuple[OnSchedule, FunctionSpec]]:
        return [(t, f) for f in self._functions.values() for t in f.triggers if isinstance(t, OnSchedule)]


def load_functions(spec: str) -> FunctionRegistry:
    return load_named(spec, FunctionRegistry, "functions")

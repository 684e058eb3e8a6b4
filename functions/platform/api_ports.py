"""What an HTTP API carried by a FunctionRegistry (`FunctionRegistry.http_api`) is built
from. The gateway fills these ports from what it already has; an API gets no database: it
writes only into the bucket (so an HTTP upload fires the same handlers as a dropped file),
reads committed state, and invokes HTTP-triggered functions."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dropwire.functions.kit.errors import Conflict, DropwireError
from dropwire.functions.platform.objects import ObjectStore
from dropwire.storage.records import EntitySnapshot, TaskStatus, TransitionRecord

if TYPE_CHECKING:
    from litestar import Router

    from dropwire.storage.state_machine import StateMachine


class StateReads(Protocol):
    #: Every kind's state machine, as the store validates transitions against them.
    machines: Mapping[str, StateMachine]

    def current(self, kind: str, entity_id: str) -> tuple[str, int]: ...

    def snapshot(self, kind: str, entity_id: str) -> EntitySnapshot: ...

    def history(self, kind: str, entity_id: str) -> list[TransitionRecord]: ...

    def entities(self, kind: str) -> list[tuple[str, str, int]]: ...


class TaskReads(Protocol):
    def task(self, task_id: int) -> TaskStatus: ...


class ReadOnlyStore(Protocol):
    """The committed state, read-only (storage.store.Store provides it)."""

    @property
    def states(self) -> StateReads: ...

    @property
    def queue(self) -> TaskReads: ...

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]: ...


@dataclass(frozen=True)
class ApiPorts:
    #: Where uploads are written: the bucket whose events fire the handlers.
    objects: ObjectStore
    bucket: str
    store: ReadOnlyStore
    #: invoke(function name, JSON body) -> the id of the queued invocation task.
    invoke: Callable[[str, Any], int]
    #: Domain sections of the settings by name (e.g. "batches"), as builtins.
    config: dict[str, Any] = field(default_factory=dict)
    #: wake(idempotency-key prefix) -> how many waiting tasks were moved to now: a parked
    #: workflow's timers, when an operator resumes it (storage.queue.Queue.wake).
    wake: Callable[[str], int] | None = None


class HandlerRefused(Conflict):
    """A write an API stored (or a change it asked for) was refused by the handler it fired;
    the handler's own message says why (the task is refused, or in the dead letters)."""

    code = "refused_by_handler"


class NotReady(DropwireError):
    """No answer yet (the handler did not finish within the wait): ask again."""

    http_status = 503
    code = "not_ready"


#: How often a waiting API looks at its task.
POLL_SECONDS = 0.02


def invoke_and_wait(ports: ApiPorts, function: str, body: Any, max_wait_seconds: float = 60.0) -> Any:
    """Invoke an HTTP-triggered function and wait for its result; its refusal is a 409 with
    its message, no answer within the wait a 503 (ask again)."""
    task_id = ports.invoke(function, body)
    deadline = time.monotonic() + max_wait_seconds
    while time.monotonic() < deadline:
        status = ports.store.queue.task(task_id)
        if status.status == "succeeded":
            return status.result
        if status.status in ("refused", "dead"):
            raise HandlerRefused(status.last_error or f"{function} refused the request", task_id=task_id)
        time.sleep(POLL_SECONDS)
    raise NotReady(f"{function} did not finish within {max_wait_seconds:.0f}s; see GET /tasks/{task_id}", task_id=task_id)


ApiFactory = Callable[[ApiPorts], "Router"]

#: What the gateway may answer on any endpoint it serves but /health, whatever the API: 401
#: without a valid token (when tokens are configured), 500 on an unexpected error, 503 while
#: the store is closed or locked. Each API documents them beside its own.
GATEWAY_ERRORS = (401, 500, 503)

"""What an HTTP API carried by a FunctionRegistry (`FunctionRegistry.http_api`) is built
from. The gateway fills these ports from what it already has; an API gets no database: it
writes only into the bucket (so an HTTP upload fires the same handlers as a dropped file),
reads committed state, and invokes HTTP-triggered functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from dropwire.functions.platform.objects import ObjectStore
from dropwire.storage.errors import Conflict
from dropwire.storage.records import EntitySnapshot, TaskStatus, TransitionRecord

if TYPE_CHECKING:
    from litestar import Router


class StateReads(Protocol):
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


class HandlerRefused(Conflict):
    """A write an API stored (or a change it asked for) was refused by the handler it fired;
    the handler's own message says why (the task is in the dead letters)."""

    code = "refused_by_handler"


ApiFactory = Callable[[ApiPorts], "Router"]

#: What the gateway may answer on any endpoint it serves but /health, whatever the API: 401
#: without a valid token (when tokens are configured), 500 on an unexpected error, 503 while
#: the store is closed or locked. Each API documents them beside its own.
GATEWAY_ERRORS = (401, 500, 503)

"""What a handler gets besides its event: objects to read and write, the state API, the
runtime client, a logger, its attempt number and deadline."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from dropwire.functions.platform.objects import ObjectStore, ObjectWriter
from dropwire.storage.records import Effects, EntityCreate, NotificationRequest, TaskSpec, TransitionRequest


class DomainRecords(Protocol):
    """Rows a domain saves while its handler runs (a batch's line results as they complete),
    durable when the call returns: the named operations of the domain's store facet (e.g.
    storage/batches.py OPS), never arbitrary SQL."""

    def record(self, op: str, payload: Any) -> None: ...


class QuotaPort(Protocol):
    """Metered services' budgets: the store's quota facet, in the control plane or over its
    socket (storage/quota.py); functions/quota/meter.py admits and settles through it."""

    def acquire(self, service: str, limits: Any, *, tokens: int = 0, cost_usd: float = 0.0) -> Any: ...

    def settle(self, grant: Any, *, sent: bool, input_tokens: int = 0, output_tokens: int = 0,
               cost_usd: float = 0.0) -> None: ...

    def observe(self, service: str, observations: list) -> None: ...

    def count(self, service: str, usage: list) -> bool: ...


class CurrentState(Protocol):
    def current(self, kind: str, entity_id: str) -> tuple[str, int]: ...


class StateReader(Protocol):
    """Committed state, read-only (storage.store.Store, or the control plane's client)."""

    @property
    def states(self) -> CurrentState: ...

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]: ...


@dataclass
class StateChanges:
    """Transitions, new entities, follow-up tasks and notifications a handler asks for. They
    commit in one transaction with the invocation's success, or not at all."""

    reader: StateReader
    triggered_by: str
    _creates: list[EntityCreate] = field(default_factory=list)
    _transitions: list[TransitionRequest] = field(default_factory=list)
    _tasks: list[TaskSpec] = field(default_factory=list)
    _notifications: list[NotificationRequest] = field(default_factory=list)

    def current(self, kind: str, entity_id: str) -> tuple[str, int]:
        """(state, version) as committed now."""
        return self.reader.states.current(kind, entity_id)

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        return self.reader.query(sql, params)

    def create(self, kind: str, entity_id: str, *, reason: str = "created", metadata: dict[str, Any] | None = None) -> None:
        self._creates.append(EntityCreate(kind=kind, entity_id=entity_id, triggered_by=self.triggered_by,
                                          reason=reason, metadata=metadata or {}))

    def transition(self, kind: str, entity_id: str, *, trigger: str | None = None, to_state: str | None = None,
                   expected_version: int | None = None, reason: str = "", metadata: dict[str, Any] | None = None) -> None:
        self._transitions.append(TransitionRequest(kind=kind, entity_id=entity_id, trigger=trigger, to_state=to_state,
                                                   expected_version=expected_version, triggered_by=self.triggered_by,
                                                   reason=reason, metadata=metadata or {}))

    def enqueue(self, spec: TaskSpec) -> None:
        self._tasks.append(spec)

    def notify(self, kind: str, subject: str, body: str = "", *, recipients: list[str] | None = None,
               attachments: list[str] | None = None, entity_kind: str | None = None, entity_id: str | None = None,
               metadata: dict[str, Any] | None = None) -> None:
        """Send a notification (e-mail, webhook, .eml in the outbox) once this invocation's
        success commits; `attachments` are object URLs or local paths (e.g. the report)."""
        self._notifications.append(NotificationRequest(
            kind=kind, subject=subject, body=body, recipients=list(recipients or []), attachments=list(attachments or []),
            entity_kind=entity_kind, entity_id=entity_id, metadata=metadata or {}))

    def effects(self) -> Effects:
        return Effects(creates=list(self._creates), transitions=list(self._transitions), tasks=list(self._tasks),
                       notifications=list(self._notifications))


@dataclass
class HandlerContext:
    function: str
    task_id: int
    attempt: int
    max_attempts: int
    #: Epoch seconds after which the invocation is stopped and counted as a failed attempt.
    deadline: float
    objects: ObjectStore
    outputs: ObjectWriter
    state: StateChanges
    runtime_url: str
    #: Where evaluation runs are logged (settings.mlflow_uri) and where a new experiment keeps
    #: its artifacts (settings.mlflow_artifact_location; None lets the tracking server decide).
    mlflow_tracking_uri: str
    mlflow_artifact_location: str | None
    log: logging.Logger
    records: DomainRecords
    #: Budgets of metered services: acquire before a metered call.
    quota: QuotaPort
    #: Domain sections of the settings by name (e.g. "batches"), as builtins.
    config: dict[str, Any] = field(default_factory=dict)

    def remaining_seconds(self) -> float:
        return max(0.0, self.deadline - time.time())

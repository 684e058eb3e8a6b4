"""The msgspec Structs that cross the store's boundary: what callers ask for and get back."""

from __future__ import annotations

from typing import Any

import msgspec


class EntityCreate(msgspec.Struct, kw_only=True, frozen=True):
    kind: str
    entity_id: str
    triggered_by: str
    reason: str = "created"
    metadata: dict[str, Any] = {}


class TransitionRequest(msgspec.Struct, kw_only=True, frozen=True):
    """Name a trigger, a target state, or both. `expected_version` turns on the optimistic
    check: the transition applies only if the entity is still at that version."""

    kind: str
    entity_id: str
    trigger: str | None = None
    to_state: str | None = None
    expected_version: int | None = None
    triggered_by: str
    reason: str = ""
    metadata: dict[str, Any] = {}


class TaskSpec(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    args: Any = None
    priority: int = 0
    delay_seconds: float = 0.0
    idempotency_key: str | None = None
    max_attempts: int | None = None
    #: Committed with each failed attempt that will be retried, when still legal (skipped when
    #: not); the failure's error is added to the metadata of its transitions.
    on_retry: Effects | None = None
    #: Committed in the same transaction as the dead letter if every attempt fails; the last
    #: error is added to its transitions' and notifications' metadata and to the notifications' body.
    on_dead: Effects | None = None


class NotificationRequest(msgspec.Struct, kw_only=True, frozen=True):
    """A notification to deliver once the change that causes it commits (e-mail, webhook,
    and always an .eml file in the outbox). Empty `recipients`: the configured defaults."""

    #: e.g. template_sent, config_invalid, qc_passed, qc_failed, evaluation_completed, evaluation_failed
    kind: str
    subject: str
    body: str = ""
    recipients: list[str] = []
    #: Object URLs (s3://..., file://...) or local paths, attached to the e-mail.
    attachments: list[str] = []
    entity_kind: str | None = None
    entity_id: str | None = None
    metadata: dict[str, Any] = {}


class Effects(msgspec.Struct, kw_only=True, frozen=True):
    """What commits together in one transaction (the outbox): new entities, transitions,
    the tasks they cause and the notifications they send."""

    creates: list[EntityCreate] = []
    transitions: list[TransitionRequest] = []
    tasks: list[TaskSpec] = []
    notifications: list[NotificationRequest] = []


class TransitionRecord(msgspec.Struct, kw_only=True, frozen=True):
    kind: str
    entity_id: str
    seq: int
    from_state: str | None
    to_state: str
    trigger: str
    triggered_by: str
    reason: str | None
    metadata: dict[str, Any]
    happened_at: float


class Applied(msgspec.Struct, kw_only=True, frozen=True):
    transitions: list[TransitionRecord]
    task_ids: list[int]


class EntitySnapshot(msgspec.Struct, kw_only=True, frozen=True):
    """An entity's machine rebuilt from the store: current state plus its whole history."""

    kind: str
    entity_id: str
    state: str
    version: int
    history: list[TransitionRecord]
    allowed: list[str]


class ClaimedTask(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    name: str
    args: bytes
    attempt: int
    max_attempts: int
    token: int
    lease_expires: float


class TaskAttempt(msgspec.Struct, kw_only=True, frozen=True):
    attempt: int
    token: int
    worker: str | None
    started_at: str
    finished_at: str
    outcome: str
    error: str | None
    traceback: str | None


class TaskStatus(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    name: str
    #: queued | running | retrying | waiting (for a prerequisite; last_error says which) |
    #: succeeded | dead (in the dead letters) | refused (the user's mistake; last_error says why)
    status: str
    args: Any
    priority: int
    attempts: int
    max_attempts: int
    not_before: str
    worker: str | None
    last_error: str | None
    result: Any
    created_at: str
    finished_at: str | None
    history: list[TaskAttempt]


class QueueStats(msgspec.Struct, kw_only=True, frozen=True):
    by_status: dict[str, int]
    by_name: dict[str, dict[str, int]]
    oldest_waiting_seconds: float | None
    attempts_total: int
    max_attempts_seen: int
    dead_letters: int


class DeadLetter(msgspec.Struct, kw_only=True, frozen=True):
    task_id: int
    name: str
    args: Any
    attempts: int
    last_error: str | None
    died_at: str
    replayed_task_id: int | None
    history: list[TaskAttempt] = []


class InvocationRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One run of a handler, logged with the task's completion or failure."""

    function: str
    source: str
    event: Any
    started_at: float
    duration_ms: float
    outcome: str
    error: str | None = None


class WaitFor(msgspec.Struct, kw_only=True, frozen=True):
    """The entity a task waits for (its prerequisite not there yet) and the version it saw (0:
    none yet): any committed change of it runs the task again at once."""

    kind: str
    entity_id: str
    seen_version: int = 0


class ObjectReceipt(msgspec.Struct, kw_only=True, frozen=True):
    """An object event offered to one function: (function, bucket, key, version) runs at
    most once, and an event with an older sequencer than one admitted is stale."""

    function: str
    bucket: str
    key: str
    version: str
    sequencer: str | None
    event_name: str


class Admission(msgspec.Struct, kw_only=True, frozen=True):
    #: accepted | duplicate | stale | failed (not admitted: `reason` says why, with the key)
    outcome: str
    task_id: int | None = None
    reason: str = ""


class Done(msgspec.Struct, kw_only=True, frozen=True):
    """One successful task, handed in with others in `Queue.complete_many`."""

    task_id: int
    token: int
    result: Any = None
    effects: Effects = Effects()
    invocation: InvocationRecord | None = None


class NotificationRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A notification as stored, with where its delivery stands (times are epoch seconds)."""

    id: int
    kind: str
    subject: str
    body: str
    recipients: list[str]
    attachments: list[str]
    entity_kind: str | None
    entity_id: str | None
    metadata: dict[str, Any]
    #: pending | sent | recorded (no channel configured: only the .eml file) | failed
    status: str
    attempts: int
    last_error: str | None
    created_at: float
    next_attempt_at: float
    email_sent_at: float | None
    webhook_sent_at: float | None
    eml_path: str | None

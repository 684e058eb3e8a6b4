"""The workflow operations as HTTP-triggered functions (the API fires them and waits), so
every change goes through a handler and the store, with the store's optimistic versions:

    workflow-suspend   {kind, id, reason, expected_version}   trigger "suspend"
    workflow-resume    {kind, id, reason, expected_version}   trigger "resume" (back where it was)
    workflow-resume-quota {kind, ids, reason}                 quota_exceeded -> in progress now

A parked workflow's timers are then woken by the API (queue.wake on its RESUME_KEYS prefix)."""

from __future__ import annotations

import msgspec

from dropwire.functions.batches import KIND as BATCH
from dropwire.functions.batches import BatchState, resume_key
from dropwire.functions.platform.context import HandlerContext
from dropwire.functions.platform.registry import FunctionRegistry, HttpEvent, OnHttp
from dropwire.functions.platform.tasks import Refused

SUSPEND_FUNCTION = "workflow-suspend"
RESUME_FUNCTION = "workflow-resume"
RESUME_QUOTA_FUNCTION = "workflow-resume-quota"
#: kind -> (the state a quota parks it in, the trigger that resumes it, its timers' key prefix)
QUOTA_RESUMES = {BATCH: (BatchState.QUOTA_EXCEEDED, "quota_reset", resume_key)}


class Hold(msgspec.Struct, kw_only=True, frozen=True):
    kind: str
    id: str
    reason: str
    expected_version: int


class QuotaResume(msgspec.Struct, kw_only=True, frozen=True):
    kind: str
    ids: list[str]
    reason: str


def register(functions: FunctionRegistry) -> None:
    functions.function(SUSPEND_FUNCTION, on=[OnHttp()], timeout_seconds=60, max_attempts=1)(suspend)
    functions.function(RESUME_FUNCTION, on=[OnHttp()], timeout_seconds=60, max_attempts=1)(resume)
    functions.function(RESUME_QUOTA_FUNCTION, on=[OnHttp()], timeout_seconds=60, max_attempts=1)(resume_quota)


def _body(event: HttpEvent, kind: type):
    try:
        return msgspec.convert(event.body, kind)
    except msgspec.ValidationError as exc:
        raise Refused(f"the request body is not a {kind.__name__}: {exc}") from None  # the caller's mistake


def suspend(event: HttpEvent, context: HandlerContext) -> dict:
    hold = _body(event, Hold)
    context.state.transition(hold.kind, hold.id, trigger="suspend", expected_version=hold.expected_version,
                             reason=hold.reason)
    return {"kind": hold.kind, "id": hold.id, "suspended": True}


def resume(event: HttpEvent, context: HandlerContext) -> dict:
    hold = _body(event, Hold)
    context.state.transition(hold.kind, hold.id, trigger="resume", expected_version=hold.expected_version,
                             reason=hold.reason)
    return {"kind": hold.kind, "id": hold.id, "resumed": True}


def resume_quota(event: HttpEvent, context: HandlerContext) -> dict:
    ask = _body(event, QuotaResume)
    state, trigger, _ = QUOTA_RESUMES[ask.kind]
    resumed = []
    for entity_id in ask.ids:
        current, version = context.state.current(ask.kind, entity_id)
        if current == state:  # one resumed on its timer meanwhile is left as it is
            context.state.transition(ask.kind, entity_id, trigger=trigger, expected_version=version, reason=ask.reason)
            resumed.append(entity_id)
    return {"kind": ask.kind, "resumed": resumed}

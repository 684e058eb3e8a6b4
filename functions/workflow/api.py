"""Workflow operations over HTTP, under /api/v1 (each error in the one error shape):

    GET  /api/v1/workflow/status                      counts by state per kind, the oldest waiting
    POST /api/v1/workflow/resume-quota-exceeded       resume now: all parked by a quota, or one
    POST /api/v1/workflow/{kind}/{id}/suspend         an operator holds one workflow (reason in history)
    POST /api/v1/workflow/{kind}/{id}/resume          and lets it go on from where it was

Writes fire the HTTP-triggered functions of functions/workflow/handlers.py and wait for them;
then a resumed workflow's parked timers are woken (queue.wake)."""

from __future__ import annotations

import msgspec
from litestar import Router, get, post
from litestar.params import FromPath, JSONBody

from dropwire.functions.kit.errors import Conflict, DropwireError, NotFound
from dropwire.functions.kit.openapi import error_responses
from dropwire.functions.platform.api_ports import GATEWAY_ERRORS, ApiPorts, invoke_and_wait
from dropwire.functions.workflow import reads
from dropwire.functions.workflow.handlers import (
    QUOTA_RESUMES,
    RESUME_FUNCTION,
    RESUME_QUOTA_FUNCTION,
    SUSPEND_FUNCTION,
)

CHANGE = error_responses(400, 404, 409, *GATEWAY_ERRORS)


class UnknownWorkflow(NotFound):
    code = "unknown_workflow"


class NotResumable(Conflict):
    code = "workflow_not_resumable"


class Reason(msgspec.Struct, kw_only=True, frozen=True):
    reason: str = ""


class QuotaResumeRequest(msgspec.Struct, kw_only=True, frozen=True):
    #: The workflow kind (default: every kind a quota parks); with `id`, only that one.
    kind: str | None = None
    id: str | None = None
    reason: str = ""


class WorkflowRef(msgspec.Struct, kw_only=True, frozen=True):
    kind: str
    id: str
    state: str
    version: int


class Resumed(msgspec.Struct, kw_only=True, frozen=True):
    resumed: list[WorkflowRef]
    #: Parked timers moved to now.
    woken: int


def build_router(ports: ApiPorts) -> Router:
    states = ports.store.states
    # Every domain's machines: those the store validates against (functions/machines.py).
    machines = dict(states.machines)

    def current(kind: str, entity_id: str) -> tuple[str, int]:
        if kind not in machines:
            raise UnknownWorkflow(f"no workflow kind {kind!r}; kinds: {sorted(machines)}", kind=kind)
        try:
            return states.current(kind, entity_id)
        except NotFound:
            raise UnknownWorkflow(f"no {kind} {entity_id!r}", kind=kind, id=entity_id) from None

    def wake(kind: str, entity_id: str) -> int:
        if kind not in QUOTA_RESUMES or ports.wake is None:
            return 0
        return ports.wake(QUOTA_RESUMES[kind][2](entity_id))

    def hold(kind: str, entity_id: str, trigger: str, function: str, reason: str) -> WorkflowRef:
        state, version = current(kind, entity_id)
        machine = machines[kind]
        if machine.is_terminal(state):
            raise Conflict(f"{kind} {entity_id} is {state}, a final state: nothing to {trigger}", state=state)
        if not any(t.trigger == trigger for t in machine.allowed(state)):
            allowed = sorted({t.trigger for t in machine.allowed(state)})
            raise Conflict(f"{kind} {entity_id} is {state}: it cannot {trigger} from there (allowed: {allowed})",
                           state=state)
        invoke_and_wait(ports, function, {"kind": kind, "id": entity_id, "expected_version": version,
                                          "reason": reason or f"{trigger} by an operator over HTTP"})
        state, version = states.current(kind, entity_id)
        return WorkflowRef(kind=kind, id=entity_id, state=state, version=version)

    @get("/workflow/status", sync_to_thread=True, responses=error_responses(*GATEWAY_ERRORS))
    def workflow_status() -> reads.WorkflowStatus:
        return reads.status(ports.store.query, machines.values())

    @post("/workflow/{kind:str}/{entity_id:str}/suspend", status_code=200, sync_to_thread=True, responses=CHANGE)
    def suspend(kind: FromPath[str], entity_id: FromPath[str], data: JSONBody[Reason]) -> WorkflowRef:
        return hold(kind, entity_id, "suspend", SUSPEND_FUNCTION, data.reason)

    @post("/workflow/{kind:str}/{entity_id:str}/resume", status_code=200, sync_to_thread=True, responses=CHANGE)
    def resume(kind: FromPath[str], entity_id: FromPath[str], data: JSONBody[Reason]) -> WorkflowRef:
        ref = hold(kind, entity_id, "resume", RESUME_FUNCTION, data.reason)
        wake(kind, entity_id)
        return ref

    @post("/workflow/resume-quota-exceeded", status_code=200, sync_to_thread=True, responses=CHANGE)
    def resume_quota_exceeded(data: JSONBody[QuotaResumeRequest]) -> Resumed:
        if data.kind is not None and data.kind not in QUOTA_RESUMES:
            raise DropwireError(f"kind {data.kind!r} is never parked by a quota; kinds: {sorted(QUOTA_RESUMES)}",
                                kind=data.kind)
        if data.id is not None and data.kind is None:
            raise DropwireError("name the kind of workflow `id` is (e.g. \"kind\": \"batch\")")
        resumed, woken = [], 0
        for kind in [data.kind] if data.kind else sorted(QUOTA_RESUMES):
            parked_state = QUOTA_RESUMES[kind][0]
            if data.id is not None:
                state, _ = current(kind, data.id)
                if state != parked_state:
                    raise NotResumable(f"{kind} {data.id} is {state}, not {parked_state}: nothing to resume",
                                       state=state)
                ids = [data.id]
            else:
                ids = [row[0] for row in ports.store.query(
                    "SELECT entity_id FROM entity_states WHERE kind = ? AND state = ? ORDER BY updated_at",
                    [kind, parked_state])]
            if not ids:
                continue
            result = invoke_and_wait(ports, RESUME_QUOTA_FUNCTION, {
                "kind": kind, "ids": ids, "reason": data.reason or "resumed by hand over HTTP"})
            for entity_id in result["resumed"]:
                woken += wake(kind, entity_id)
                state, version = states.current(kind, entity_id)
                resumed.append(WorkflowRef(kind=kind, id=entity_id, state=state, version=version))
        return Resumed(resumed=resumed, woken=woken)

    return Router("/api/v1", route_handlers=[workflow_status, suspend, resume, resume_quota_exceeded],
                  tags=["workflow"])

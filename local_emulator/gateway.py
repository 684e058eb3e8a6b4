"""The HTTP trigger gateway: invoke HTTP-triggered functions, upload objects (written to the
bucket, then the ordinary event path fires: one path, not two), and operate the queue.
The HTTP APIs the function registry carries (e.g. the evaluation API under /api) are mounted
beside them, built from ports: the bucket, a read-only view of the state, and invoke.
OpenAPI at /schema (interactive docs at /schema/swagger). With API tokens configured, every
endpoint but /health (and the docs, with open_docs) needs a bearer token."""

from __future__ import annotations

import hmac
import logging
import time
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

import msgspec
from litestar import Litestar, Request, Response, get, post, put
from litestar.params import Body, FromPath, FromQuery, JSONBody

from dropwire.functions.kit.errors import Conflict, DropwireError, NotFound
from dropwire.functions.kit.http_errors import exception_handlers
from dropwire.functions.kit.http_options import complete_allow_header
from dropwire.functions.kit.openapi import DOCS_PATH, NO_TOKEN, assets_router, error_responses, openapi_config, upload_operation
from dropwire.functions.platform.api_ports import GATEWAY_ERRORS, ApiPorts, HandlerRefused, NotReady
from dropwire.functions.platform.objects import InvalidKey, ObjectStore, check_key
from dropwire.functions.platform.registry import FunctionRegistry, HttpEvent, Invocation, OnHttp
from dropwire.functions.quota.meter import Meter
from dropwire.functions.quota.settings import metered_service, quota_settings
from dropwire.local_emulator import metrics
from dropwire.local_emulator.inference_proxy import build_inference_proxy
from dropwire.local_emulator.router import EventRouter, SourceHealth
from dropwire.local_emulator.schedules import Scheduler
from dropwire.storage.records import DeadLetter, QueueStats, TaskSpec, TaskStatus
from dropwire.storage.store import Store

log = logging.getLogger("dropwire.gateway")

ALWAYS_OPEN = frozenset({"/health"})
RAW_OBJECT = upload_operation("the object's bytes, stored as they are", multipart=False)


class NotAuthorized(DropwireError):
    http_status = 401
    code = "not_authorized"


class TooLarge(DropwireError):
    http_status = 413
    code = "upload_too_large"


HEALTH_503 = ("not ready (not_ready: the state store is not answering), or an event source cannot admit "
              "events (source_degraded: files or messages wait and are retried; details name the source, "
              "how many, since when)")


class SourceDegraded(DropwireError):
    """An event source has events it could not admit: the platform is up, but those files (or
    messages) are not being processed until they are."""

    http_status = 503
    code = "source_degraded"

    @classmethod
    def of(cls, degraded: list[SourceHealth], *, detailed: bool) -> SourceDegraded:
        said = "; ".join(f"{s.source}: {len(s.failing)} event(s) not admitted since {_iso(s.failing[0].since)}"
                         for s in degraded)
        sources = []
        for source in degraded:
            entry: dict[str, Any] = {"source": source.source, "not_admitted": len(source.failing),
                                     "since": _iso(source.failing[0].since), "failures": source.failures}
            if detailed:
                entry["events"] = [{"bucket": f.bucket, "key": f.key, "error": f.error, "since": _iso(f.since),
                                    "attempts": f.attempts} for f in source.failing[:HEALTH_EVENTS]]
            sources.append(entry)
        return cls(f"degraded: an event source cannot admit events ({said}); they are retried", sources=sources)


#: The failing events /health names per source (the oldest); the count covers them all.
HEALTH_EVENTS = 20


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


class Accepted(msgspec.Struct):
    task_id: int
    status_url: str


class Uploaded(msgspec.Struct):
    bucket: str
    key: str
    size: int
    url: str


class Reprocess(msgspec.Struct):
    function: str
    bucket: str
    key: str


class Health(msgspec.Struct):
    status: str


class InvocationRow(msgspec.Struct):
    """One run of a handler. `outcome`: succeeded, failed, timed_out, waiting (its
    prerequisite was not there yet; `error` says which) or refused (the user's mistake;
    `error` is the handler's message; never a dead letter)."""

    task_id: int
    attempt: int
    function: str
    source: str
    started_at: str
    duration_ms: float
    outcome: str
    error: str | None
    event: Any


def _key_as_sent(request: Request, key: str) -> str:
    """The object key exactly as the client sent it. Routing collapses '//', which would turn
    '/objects/%2Fabs/x' (an absolute key, refused) into the key 'abs/x'."""
    raw = request.scope.get("raw_path")
    if not raw:
        return key.removeprefix("/")
    try:  # /buckets/{bucket}/objects/{key}
        return unquote_to_bytes(raw.split(b"/", 4)[4]).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidKey("the object key in the URL is not UTF-8") from None


def build_gateway(store: Store, functions: FunctionRegistry, objects: ObjectStore, bucket: str, router: EventRouter,
                  scheduler: Scheduler, api_tokens: list[str], max_upload_bytes: int,
                  config: dict[str, Any] | None = None, inference_url: str | None = None,
                  inference_timeout_seconds: float = 120.0, open_docs: bool = True,
                  recovered: metrics.Recovered | None = None) -> Litestar:
    """`bucket`: where the mounted APIs write their uploads (the bucket whose events fire handlers);
    `inference_url`: the OpenAI-compatible runtime that direct /v1 inference requests go to;
    `open_docs`: the docs page, its assets and the OpenAPI document need no token;
    `recovered`: the folder source's count of files its reconciliation admitted."""
    openapi = openapi_config("dropwire gateway", "0.1.0", bearer=bool(api_tokens))

    def is_open(path: str) -> bool:
        return path in ALWAYS_OPEN or (open_docs and (path == DOCS_PATH or path.startswith(f"{DOCS_PATH}/")))

    def has_token(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and any(hmac.compare_digest(token, t) for t in api_tokens)

    async def require_token(request: Request) -> None:
        if not api_tokens or is_open(request.url.path):
            return
        if not has_token(request):
            raise NotAuthorized("a valid bearer token is required: send 'Authorization: Bearer <token>'"
                                if request.headers.get("authorization") else "missing 'Authorization: Bearer <token>' header")

    @get("/health", sync_to_thread=True, security=NO_TOKEN, responses=error_responses(503, meanings={503: HEALTH_503}))
    def health(request: Request) -> Health:
        """Liveness and readiness for a load balancer, open to anyone: so it says nothing else,
        but for an event source that cannot admit events (503 source_degraded: which source,
        how many events, since when; their keys and errors only with a valid token, or with
        no tokens configured)."""
        try:
            store.queue.stats()  # the store answers reads: ready
        except Exception as exc:  # whatever the cause, not ready; the cause goes to the log, not to anyone asking
            log.warning("/health: not ready: %s: %s", type(exc).__name__, exc)
            raise NotReady("not ready: the state store is not answering") from None
        degraded = [source for source in router.health.sources() if source.degraded]
        if degraded:
            raise SourceDegraded.of(degraded, detailed=not api_tokens or has_token(request))
        return Health(status="ok")

    # What invoke can run: naming the others would only send a caller to another 404.
    invocable = sorted(f.name for f in functions if any(isinstance(t, OnHttp) for t in f.triggers))

    def enqueue_http(name: str, body: Any) -> int:
        if name not in {f.name for f in functions}:
            raise NotFound(f"no function named {name!r}; functions with an HTTP trigger: {invocable}")
        spec = functions.get(name)
        if name not in invocable:
            raise NotFound(f"function {name!r} has no HTTP trigger; functions with an HTTP trigger: {invocable}")
        event = HttpEvent(body=body, received_at=datetime.now(UTC).isoformat())
        return store.queue.enqueue(TaskSpec(name=spec.task_name, args=Invocation(function=name, source="http", event=event),
                                            max_attempts=spec.max_attempts))

    @post("/functions/{name:str}/invoke", status_code=202, sync_to_thread=True,
          responses=error_responses(400, 404, 409, 413, *GATEWAY_ERRORS, meanings={
              409: "With ?wait: the function refused the request, or failed on its last attempt; the message is "
                   "its error (the tracebacks are in GET /tasks/{id})."}))
    def invoke(name: FromPath[str], data: Annotated[Any, Body(description="JSON passed to the handler as event.body")],
               wait: FromQuery[float] = 0.0) -> Accepted | TaskStatus:
        task_id = enqueue_http(name, data)
        deadline = time.monotonic() + min(wait, 300.0)
        while wait and time.monotonic() < deadline:
            status = store.queue.task(task_id)
            if status.status == "refused":  # the handler's own word on the request: a user's mistake
                raise HandlerRefused(f"function {name!r} refused it: {status.last_error}",
                                     task_id=task_id, status_url=f"/tasks/{task_id}")
            if status.status == "dead":
                raise HandlerRefused(f"function {name!r} failed after {status.attempts} attempt(s): {status.last_error}; "
                                     f"its attempts and tracebacks: GET /tasks/{task_id}",
                                     task_id=task_id, status_url=f"/tasks/{task_id}")
            if status.status == "succeeded":
                # An earlier attempt's traceback is for the operator (GET /tasks/{id}), not the caller.
                return msgspec.structs.replace(status, history=[msgspec.structs.replace(attempt, traceback=None)
                                                                for attempt in status.history])
            time.sleep(0.02)
        return Accepted(task_id=task_id, status_url=f"/tasks/{task_id}")

    @put("/buckets/{bucket:str}/objects/{key:path}", status_code=201, operation_class=RAW_OBJECT,
         responses=error_responses(400, 413, *GATEWAY_ERRORS))
    async def upload(bucket: FromPath[str], key: FromPath[str], request: Request) -> Uploaded:
        # This entry names the stored object itself, so it stores one Unicode form (NFC).
        key = check_key(unicodedata.normalize("NFC", _key_as_sent(request, key)))
        body = await request.body()
        if len(body) > max_upload_bytes:
            raise TooLarge(f"upload of {len(body)} bytes exceeds the limit of {max_upload_bytes} bytes")
        url = objects.write_bytes(bucket, key, body)
        return Uploaded(bucket=bucket, key=key, size=len(body), url=url)

    @get("/tasks/stats", sync_to_thread=True, responses=error_responses(*GATEWAY_ERRORS))
    def task_stats() -> QueueStats:
        return store.queue.stats()

    @get("/tasks/{task_id:int}", sync_to_thread=True, responses=error_responses(400, 404, *GATEWAY_ERRORS))
    def task(task_id: FromPath[int]) -> TaskStatus:
        return store.queue.task(task_id)

    @post("/tasks/cleanup", sync_to_thread=True, responses=error_responses(400, *GATEWAY_ERRORS))
    def cleanup(older_than_days: FromQuery[float] = 7.0) -> dict[str, int]:
        return {"removed": store.queue.cleanup(older_than_days)}

    @get("/dead-letters", sync_to_thread=True, responses=error_responses(400, *GATEWAY_ERRORS))
    def dead_letters(include_replayed: FromQuery[bool] = False) -> list[DeadLetter]:
        return store.queue.dead_letters(include_replayed=include_replayed)

    @get("/dead-letters/{task_id:int}", sync_to_thread=True, responses=error_responses(400, 404, *GATEWAY_ERRORS))
    def dead_letter(task_id: FromPath[int]) -> DeadLetter:
        return store.queue.dead_letter(task_id)

    @post("/dead-letters/{task_id:int}/replay", sync_to_thread=True, responses=error_responses(400, 404, 409, *GATEWAY_ERRORS))
    def replay(task_id: FromPath[int]) -> Accepted:
        new_id = store.queue.replay_dead_letter(task_id, triggered_by="http")
        return Accepted(task_id=new_id, status_url=f"/tasks/{new_id}")

    @get("/invocations", sync_to_thread=True, responses=error_responses(400, *GATEWAY_ERRORS))
    def invocations(function: FromQuery[str | None] = None, outcome: FromQuery[str | None] = None,
                    limit: FromQuery[int] = 50) -> list[InvocationRow]:
        """The latest handler runs, newest first; `outcome=refused` lists the users' mistakes."""
        rows = store.query(
            "SELECT task_id, attempt, function, source, started_at, duration_ms, outcome, error, event FROM invocations "
            "WHERE (? IS NULL OR function = ?) AND (? IS NULL OR outcome = ?) ORDER BY started_at DESC LIMIT ?",
            [function, function, outcome, outcome, max(1, min(limit, 1000))])
        return [InvocationRow(task_id=t, attempt=a, function=f, source=s, started_at=str(at), duration_ms=d, outcome=o,
                              error=e, event=msgspec.json.decode(ev)) for t, a, f, s, at, d, o, e, ev in rows]

    @post("/reprocess", status_code=202, sync_to_thread=True, responses=error_responses(400, 404, 413, *GATEWAY_ERRORS))
    def reprocess(data: JSONBody[Reprocess]) -> Accepted:
        task_id = router.reprocess(data.function, objects, data.bucket, data.key)
        return Accepted(task_id=task_id, status_url=f"/tasks/{task_id}")

    @post("/schedules/{name:str}/run", status_code=202, sync_to_thread=True, responses=error_responses(400, 404, *GATEWAY_ERRORS))
    def run_schedule(name: FromPath[str]) -> Accepted:
        task_id = scheduler.fire(name, datetime.now(UTC))
        if task_id is None:  # a run for this very instant is already queued
            raise Conflict(f"schedule {name!r} was already fired for this instant")
        return Accepted(task_id=task_id, status_url=f"/tasks/{task_id}")

    quota = quota_settings(config or {})

    @get("/metrics", sync_to_thread=True, media_type=metrics.CONTENT_TYPE, responses=error_responses(*GATEWAY_ERRORS))
    def prometheus_metrics() -> Response[bytes]:
        """Prometheus scrape: queue depth, invocations, batch lines, workflows, quota left, events
        each source could not admit, files the folder's reconciliation admitted."""
        return Response(metrics.metrics_text(store.query, quota, router.health, recovered), media_type=metrics.CONTENT_TYPE)

    ports = ApiPorts(objects=objects, bucket=bucket, store=store, invoke=enqueue_http, config=config or {},
                     wake=store.queue.wake)
    forwarding, on_shutdown = [], []
    if inference_url:
        proxy, close_proxy = build_inference_proxy(inference_url, inference_timeout_seconds,
                                                   Meter(store.quota, quota, metered_service(config or {})))
        forwarding.append(proxy)
        on_shutdown.append(close_proxy)
    return Litestar(
        route_handlers=[health, invoke, upload, task_stats, task, cleanup, dead_letters, dead_letter, replay,
                        invocations, reprocess, run_schedule, prometheus_metrics, assets_router(),
                        *(factory(ports) for factory in functions.http_apis()), *forwarding],
        on_shutdown=on_shutdown,
        before_request=require_token,
        exception_handlers=exception_handlers(
            lambda: TooLarge(f"upload exceeds the limit of {max_upload_bytes} bytes")),
        request_max_body_size=max_upload_bytes,
        before_send=[complete_allow_header],
        openapi_config=openapi,
        logging_config=None,
    )

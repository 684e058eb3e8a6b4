"""Training analysis over HTTP (seed 2), under /api/v1:

    POST /analyze                      sync (default): 200 with the AnalysisResult; "mode": "async": 202 with request_id
    GET  /analyses                     the history of analyses (newest first), ?run_id= for one run's
    GET  /analyses/{id}/status         queued | running | completed | partial | failed, with the state history
    GET  /analyses/{id}/result         the AnalysisResult JSON
    GET  /analyses/{id}/report         the report (Markdown or HTML); its plots at /analyses/{id}/plots/{name}
    POST /knowledge/query              ranked knowledge-base entries, each with a confidence
    GET  /knowledge/stats              the answer cache: size, TTL, hit rate

An analysis is the ``training-analysis`` function invoked through the queue, so HTTP, dropped
files and the schedule run one code path and every analysis has its state history in DuckDB.
A sync request waits (awaiting, holding no thread) for that invocation and answers with what
it wrote; the API itself gets no database. At most ``training.max_concurrent_analyses`` run
at once from here; more are answered 429 with Retry-After. Errors follow the seed's contract:
503 MLFLOW_CONNECTION_ERROR with Retry-After, 404 RUN_NOT_FOUND, 400 VALIDATION_ERROR naming
the field, in the one error body."""

from __future__ import annotations

import asyncio
import posixpath
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal, cast

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.concurrency import sync_to_thread
from litestar.exceptions import ClientException, HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody

from dropwire.functions.kit.errors import DropwireError, NotFound, error_body
from dropwire.functions.kit.http_errors import exception_handlers
from dropwire.functions.kit.openapi import error_responses
from dropwire.functions.platform.api_ports import GATEWAY_ERRORS, ApiPorts
from dropwire.functions.platform.registry import task_name
from dropwire.functions.training_analysis.core.knowledge import CacheStats, KnowledgeBase, KnowledgeQuery, KnowledgeResponse
from dropwire.functions.training_analysis.core.mlflow_reader import MlflowUnavailable, RunNotFound, check_tracking_uri
from dropwire.functions.training_analysis.core.model import AnalysisOptions, AnalysisResult, AnalysisStatus, ErrorInfo
from dropwire.functions.training_analysis.handlers import ANALYZE_FUNCTION, BUCKET, FILE_FUNCTION, analysis_id, result_key
from dropwire.functions.training_analysis.settings import TrainingAnalysisSettings
from dropwire.functions.training_analysis.states import KIND

POLL_S = 0.05
# Refused: the handler refused the request (the caller's mistake); dead: it failed on every attempt.
FINISHED = ("succeeded", "refused", "dead")
ANALYSIS_TASKS = (task_name(ANALYZE_FUNCTION), task_name(FILE_FUNCTION))
REQUEST_ID = re.compile(r"ta-(\d{1,18})")
PLOT = re.compile(r"[a-z0-9_-]{1,64}\.png")
# Litestar appends "; charset=utf-8" to a text/* media type itself.
MEDIA = {".md": "text/markdown", ".html": "text/html"}
# Plots drawn only from metrics a run may not log: why one is absent.
OPTIONAL_PLOTS = {"optimizer.png": "the run logged no learning rate or gradient norm"}


class ValidationFailed(DropwireError):
    code = "VALIDATION_ERROR"


class TooManyAnalyses(DropwireError):
    http_status = 429
    code = "TOO_MANY_REQUESTS"


class AnalysisNotFound(NotFound):
    code = "ANALYSIS_NOT_FOUND"


class NotFinished(DropwireError):
    http_status = 409
    code = "ANALYSIS_NOT_FINISHED"


class AnalysisCrashed(DropwireError):
    http_status = 500
    code = "ANALYSIS_CRASHED"


class AnalyzeRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    run_id: str
    mlflow_tracking_uri: str
    analysis_options: AnalysisOptions = msgspec.field(default_factory=AnalysisOptions)
    #: sync: answer with the result; async: answer 202 with the request id at once.
    mode: Literal["sync", "async"] = "sync"


class Accepted(msgspec.Struct, kw_only=True):
    request_id: str
    status: str
    status_url: str
    result_url: str


class AnalysisSummary(msgspec.Struct, kw_only=True):
    request_id: str
    status: str
    run_id: str | None
    tracking_uri: str | None
    source: str | None
    findings: list[str]
    updated_at: str


# The seed's error codes, each in the one error body.
MEANINGS = {400: "VALIDATION_ERROR: a field or parameter is missing or wrong (details.field, constraint, provided)",
            404: "RUN_NOT_FOUND (the run is not in that MLflow store) or ANALYSIS_NOT_FOUND",
            409: "ANALYSIS_NOT_FINISHED: ask again once status is completed, partial or failed",
            422: "ARTIFACT_INVALID: an artifact of the run cannot be read (details.artifact)",
            429: "TOO_MANY_REQUESTS: as many analyses as allowed are running; Retry-After says when to come back",
            500: "ANALYSIS_CRASHED: the analysis failed on every attempt (details.error), or an unexpected error",
            503: "MLFLOW_CONNECTION_ERROR: the tracking server did not answer (Retry-After, details.tracking_uri, "
                 "timeout); or the gateway's store is closed or locked"}


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    return error_responses(*statuses, *GATEWAY_ERRORS, meanings=MEANINGS)


def build_router(ports: ApiPorts) -> Router:
    api = _Analyses(ports, msgspec.convert(ports.config.get("training", {}), TrainingAnalysisSettings))

    @post("/analyze", status_code=200, summary="Analyse a training run",
          description="Sync (default) answers 200 with the AnalysisResult once it is done (202 with the request id if it "
                      "takes longer than training.sync_wait_seconds); mode async answers 202 at once.",
          responses={202: ResponseSpec(data_container=Accepted, description="queued (async, or sync past its wait)"),
                     **_errors(400, 404, 413, 422, 429)})
    async def analyze(data: JSONBody[AnalyzeRequest]) -> Response[AnalysisResult]:
        task_id = await sync_to_thread(api.admit, data)
        request_id = analysis_id(task_id)
        if data.mode == "sync":
            finished = await api.wait(task_id, api.settings.sync_wait_seconds)
            if finished:
                return Response(await sync_to_thread(api.answer, request_id))
        # The annotation is the 200 body's schema in OpenAPI; the 202 body is declared in responses.
        return Response(api.accepted(request_id), status_code=202)  # pyright: ignore[reportReturnType]

    @get("/analyses", sync_to_thread=True, summary="The history of analyses, newest first", responses=_errors(400))
    def analyses(run_id: FromQuery[str | None] = None, limit: FromQuery[int] = 100) -> list[AnalysisSummary]:
        return api.history(run_id, max(1, min(limit, 1000)))

    @get("/analyses/{request_id:str}/status", sync_to_thread=True, responses=_errors(400, 404))
    def status(request_id: FromPath[str]) -> AnalysisStatus:
        return api.status(request_id)

    @get("/analyses/{request_id:str}/result", sync_to_thread=True, responses=_errors(400, 404, 409))
    def result(request_id: FromPath[str]) -> AnalysisResult:
        return api.result(request_id)

    @get("/analyses/{request_id:str}/report", sync_to_thread=True, media_type="text/markdown",
         response_description="the report, Markdown (or HTML when analysis_options.report_format was html)",
         responses=_errors(400, 404, 409))
    def report(request_id: FromPath[str]) -> Response[bytes]:
        data, suffix = api.report(request_id)
        return Response(data, media_type=MEDIA[suffix])

    @get("/analyses/{request_id:str}/plots/{name:str}", sync_to_thread=True, media_type="image/png",
         response_description="a PNG plot of the report", responses=_errors(400, 404))
    def plot(request_id: FromPath[str], name: FromPath[str]) -> Response[bytes]:
        return Response(api.plot(request_id, name), media_type="image/png")

    @post("/knowledge/query", status_code=200, sync_to_thread=True, responses=_errors(400, 413),
          summary="Search the knowledge base (BM25), filtered by domain and query_type")
    def knowledge_query(data: JSONBody[KnowledgeQuery]) -> KnowledgeResponse:
        return api.knowledge.query(data)

    @get("/knowledge/stats", sync_to_thread=True, responses=_errors())
    def knowledge_stats() -> CacheStats:
        return api.knowledge.stats()

    shared = exception_handlers()
    return Router(path="/api/v1", tags=["training analysis"],
                  route_handlers=[analyze, analyses, status, result, report, plot, knowledge_query, knowledge_stats],
                  exception_handlers={ClientException: lambda request, exc: _client_error(request, exc, shared[HTTPException])})


class _Analyses:
    """What the routes do, over the ports: invoke the analysis function, read committed state
    and what the analyses wrote into the bucket."""

    def __init__(self, ports: ApiPorts, settings: TrainingAnalysisSettings) -> None:
        self.ports = ports
        self.settings = settings
        self.knowledge = KnowledgeBase(ttl_seconds=settings.knowledge_cache_ttl_seconds,
                                       max_size=settings.knowledge_cache_max_entries)
        self._running: set[int] = set()
        self._lock = threading.Lock()

    def admit(self, request: AnalyzeRequest) -> int:
        for field, value in (("run_id", request.run_id), ("mlflow_tracking_uri", request.mlflow_tracking_uri)):
            if not value.strip():
                raise ValidationFailed(f"Invalid request: field '{field}' must not be empty", field=field,
                                       constraint="non-empty", provided=value)
        check_tracking_uri(request.mlflow_tracking_uri)
        body = {"run_id": request.run_id, "mlflow_tracking_uri": request.mlflow_tracking_uri,
                "analysis_options": msgspec.to_builtins(request.analysis_options),
                "mlflow_timeout_seconds": self.settings.mlflow_timeout_seconds}
        with self._lock:  # count and admit as one step, so two requests never both take the last place
            self._running = {t for t in self._running if self.ports.store.queue.task(t).status not in FINISHED}
            if len(self._running) >= self.settings.max_concurrent_analyses:
                error = TooManyAnalyses(f"{len(self._running)} analyses are running, the most allowed at once "
                                        f"(training.max_concurrent_analyses); retry later",
                                        running=len(self._running), limit=self.settings.max_concurrent_analyses)
                error.retry_after = self.settings.busy_retry_after_seconds
                raise error
            task_id = self.ports.invoke(ANALYZE_FUNCTION, body)
            self._running.add(task_id)
        return task_id

    async def wait(self, task_id: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (await sync_to_thread(self.ports.store.queue.task, task_id)).status in FINISHED:
                return True
            await asyncio.sleep(POLL_S)
        return False

    def accepted(self, request_id: str) -> Accepted:
        base = f"/api/v1/analyses/{request_id}"
        return Accepted(request_id=request_id, status="queued", status_url=f"{base}/status", result_url=f"{base}/result")

    def answer(self, request_id: str) -> AnalysisResult:
        """A finished sync analysis: its result, or the seed's error for why it failed."""
        task = self._task(request_id)
        if task.status in ("refused", "dead"):
            why = "was refused" if task.status == "refused" else "failed on every attempt"
            raise AnalysisCrashed(f"analysis {request_id} {why}: {task.last_error}",
                                  request_id=request_id, error=task.last_error)
        result = self._read_result(request_id)
        if result.error is not None:
            raise _as_error(result.error, self.settings)
        return result

    def status(self, request_id: str) -> AnalysisStatus:
        task = self._task(request_id)
        base = f"/api/v1/analyses/{request_id}"
        try:
            snapshot = self.ports.store.states.snapshot(KIND, request_id)
        except NotFound:
            if task.status in ("refused", "dead"):
                return AnalysisStatus(request_id=request_id, status="failed", run_id=_run_of(task),
                                      error=ErrorInfo(error=AnalysisCrashed.code, message=task.last_error or "crashed"))
            return AnalysisStatus(request_id=request_id, status="queued" if task.status == "queued" else "running",
                                  run_id=_run_of(task))
        meta = _metadata(snapshot)
        return AnalysisStatus(
            request_id=request_id, status=snapshot.state, run_id=meta.get("run_id"),
            error=self._read_result(request_id).error if meta.get("error") else None,
            result_url=f"{base}/result", report_url=f"{base}/report",
            history=[msgspec.to_builtins(h) for h in snapshot.history])

    def result(self, request_id: str) -> AnalysisResult:
        self._finished(request_id)
        return self._read_result(request_id)

    def report(self, request_id: str) -> tuple[bytes, str]:
        self._finished(request_id)
        for suffix in MEDIA:
            data = self._read(result_key(request_id, f"report{suffix}"))
            if data is not None:
                return data, suffix
        raise AnalysisNotFound(f"analysis {request_id} has no report", request_id=request_id)

    def plot(self, request_id: str, name: str) -> bytes:
        data = self._read(result_key(request_id, f"plots/{name}")) if PLOT.fullmatch(name) else None
        if data is None:
            self._task(request_id)  # an unknown analysis is named as such
            have = self._plots(request_id)
            why = f" ({OPTIONAL_PLOTS[name]})" if name in OPTIONAL_PLOTS else ""
            raise AnalysisNotFound(f"analysis {request_id} has no plot {name!r}{why}; its plots: {have}",
                                   request_id=request_id, plot=name, plots=have)
        return data

    def _plots(self, request_id: str) -> list[str]:
        fs, root = self.ports.objects.filesystem(BUCKET)
        folder = posixpath.join(root, result_key(request_id, "plots"))
        paths = cast("list[str]", fs.glob(posixpath.join(folder, "*.png")))  # fsspec: a dict only with detail=True
        return sorted(posixpath.basename(p) for p in paths)

    def history(self, run_id: str | None, limit: int) -> list[AnalysisSummary]:
        out = []
        for entity_id, _, _ in self.ports.store.states.entities(KIND):
            snapshot = self.ports.store.states.snapshot(KIND, entity_id)
            meta = _metadata(snapshot)
            if run_id is not None and meta.get("run_id") != run_id:
                continue
            out.append(AnalysisSummary(request_id=entity_id, status=snapshot.state, run_id=meta.get("run_id"),
                                       tracking_uri=meta.get("tracking_uri"), source=meta.get("source"),
                                       findings=list(meta.get("findings") or []),
                                       updated_at=_iso(snapshot.history[-1].happened_at) if snapshot.history else ""))
        out.sort(key=lambda s: (s.updated_at, s.request_id), reverse=True)
        return out[:limit]

    # ------------------------------------------------------------------ reads
    def _task(self, request_id: str):
        match = REQUEST_ID.fullmatch(request_id)
        if match is None:
            raise AnalysisNotFound(f"no analysis {request_id!r}: request ids look like ta-<number>", request_id=request_id)
        try:
            task = self.ports.store.queue.task(int(match[1]))
        except DropwireError:
            task = None
        if task is None or task.name not in ANALYSIS_TASKS:
            raise AnalysisNotFound(f"no analysis {request_id!r}", request_id=request_id)
        return task

    def _finished(self, request_id: str) -> None:
        status = self.status(request_id)
        if status.status in ("queued", "running"):
            raise NotFinished(f"analysis {request_id} is {status.status}; its result is not there yet",
                              request_id=request_id, status=status.status)

    def _read(self, key: str) -> bytes | None:
        try:
            with self.ports.objects.open(BUCKET, key) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def _read_result(self, request_id: str) -> AnalysisResult:
        data = self._read(result_key(request_id))
        if data is None:
            raise AnalysisNotFound(f"analysis {request_id} wrote no result", request_id=request_id)
        return msgspec.json.decode(data, type=AnalysisResult)


def _metadata(snapshot) -> dict:
    """What the analysis's transitions recorded, the latest winning (run, source, findings, error)."""
    merged: dict = {}
    for record in snapshot.history:
        merged |= record.metadata
    return merged


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _run_of(task) -> str | None:
    """The run an invocation task was asked to analyse (its HTTP body)."""
    args = task.args if isinstance(task.args, dict) else {}
    body = (args.get("event") or {}).get("body")
    return body.get("run_id") if isinstance(body, dict) else None


def _as_error(error: ErrorInfo, settings: TrainingAnalysisSettings) -> DropwireError:
    if error.error == MlflowUnavailable.code:
        out: DropwireError = MlflowUnavailable(error.message, **error.details)
        out.retry_after = settings.mlflow_retry_after_seconds
        return out
    if error.error == RunNotFound.code:
        return RunNotFound(error.message, **error.details)
    out = DropwireError(error.message, **error.details)
    out.http_status, out.code = 422, error.error
    return out


def _client_error(request: Request, exc: ClientException, fallback) -> Response:
    """Bad request bodies as the seed's VALIDATION_ERROR, naming the field: the body is decoded
    again against its Struct for the full path (Litestar names only the top-level field)."""
    if exc.status_code != 400:
        return fallback(request, exc)
    target = {"/api/v1/analyze": AnalyzeRequest, "/api/v1/knowledge/query": KnowledgeQuery}.get(request.url.path)
    raw = getattr(getattr(request, "_connection_state", None), "body", None)
    field, constraint, message = None, "valid JSON body", str(exc.detail)
    if target is not None and isinstance(raw, bytes):
        try:
            msgspec.json.decode(raw or b"null", type=target)
        except msgspec.ValidationError as error:
            field, constraint, message = _field_of(str(error))
        except msgspec.DecodeError as error:
            message = f"body is not valid JSON: {error}"
    provided = _provided(raw, field)
    text = f"Invalid request: {message}"
    body = error_body(ValidationFailed.code, text, {"field": field, "constraint": constraint, "provided": provided})
    return Response(body, status_code=400)


def _field_of(message: str) -> tuple[str | None, str, str]:
    path = re.search(r" - at `\$\.?([^`]*)`", message)
    at = path[1] if path else ""
    named = re.search(r"(missing required|unknown) field `([^`]+)`", message)
    if named:
        field = ".".join(p for p in (at, named[2]) if p)
        return field, "required" if named[1] == "missing required" else "unknown field", \
            (f"missing required field '{field}'" if named[1] == "missing required" else f"unknown field '{field}'")
    if message.startswith("Expected `null`") or at == "":
        return (at or None), "object", message
    said = message.split(" - at ")[0]
    return at, said, f"field '{at}': {said}"


def _provided(raw: Any, field: str | None) -> Any:
    if field is None or not isinstance(raw, bytes):
        return None
    try:
        value: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    for part in re.split(r"\.|\[(\d+)\]", field):
        if not part:
            continue
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value if isinstance(value, (str, int, float, bool, type(None))) else msgspec.json.encode(value).decode()


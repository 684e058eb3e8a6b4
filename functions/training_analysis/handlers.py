"""Training-run analysis as functions. Three ways in, one analysis:

    HTTP (the API under /api/v1, ``training-analysis``)   {run_id, mlflow_tracking_uri, analysis_options}
    training-runs/<name>.request.json                     the same body; mlflow_tracking_uri defaults to
                                                          the product's store (settings.mlflow_uri)
    training-runs/<run>/training_artifacts/metrics.csv    a run's artifact folder dropped in the bucket
                                                          (params.yaml, dataset/, deepchecks/ beside it;
                                                          drop metrics.csv last: it fires the analysis)

Each analysis is entity ``ta-<task id>`` of kind training_analysis (states.py); its result
JSON, its report and the report's plots land under ``training-analyses/<id>/``, which no
trigger watches. A schedule re-analyses the runs of the last week whose latest analysis was
made with another knowledge-base version."""

from __future__ import annotations

import posixpath
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec

from dropwire.functions.platform.context import HandlerContext
from dropwire.functions.platform.registry import (
    FunctionRegistry,
    HttpEvent,
    Invocation,
    ObjectEvent,
    OnHttp,
    OnQueue,
    OnSchedule,
    OnUpload,
    Output,
    ScheduledEvent,
    task_name,
)
from dropwire.functions.platform.tasks import Refused
from dropwire.functions.training_analysis.core.knowledge import KnowledgeBase
from dropwire.functions.training_analysis.core.mlflow_reader import (
    METRICS_CSV,
    ArtifactInvalid,
    MlflowUnavailable,
    RunNotFound,
    TrackingUriInvalid,
    read_run,
    run_from_files,
)
from dropwire.functions.training_analysis.core.model import AnalysisOptions, AnalysisResult, ErrorInfo, RunData
from dropwire.functions.training_analysis.core.pipeline import run_analysis
from dropwire.functions.training_analysis.core.report import build_report
from dropwire.functions.training_analysis.states import KIND
from dropwire.storage.records import TaskSpec

BUCKET = "local"
SOURCE_PREFIX = "training-runs/"
RESULTS_PREFIX = "training-analyses/"
REQUEST_SUFFIX = ".request.json"
FOLDER_SUFFIX = "/" + METRICS_CSV
ANALYZE_FUNCTION = "training-analysis"
FILE_FUNCTION = "training-analysis-file"
REANALYSE_FUNCTION = "training-analysis-reanalyse"
REANALYSE_SCHEDULE = "training-analysis-knowledge-version"
REANALYSE_EVERY_S = 3600.0
RECENT = timedelta(days=7)
TIMEOUT_S = 900.0
FOLDER_KEY = re.compile(rf"{SOURCE_PREFIX}(?P<root>.+)/{METRICS_CSV}")


class AnalysisRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    run_id: str
    mlflow_tracking_uri: str | None = None
    analysis_options: AnalysisOptions = msgspec.field(default_factory=AnalysisOptions)
    #: How long the tracking server may take to answer (the API passes its setting).
    mlflow_timeout_seconds: float = 10.0


def register(functions: FunctionRegistry) -> None:
    outputs = [Output(bucket=BUCKET, prefix=RESULTS_PREFIX)]
    functions.function(ANALYZE_FUNCTION, on=[OnHttp(), OnQueue()], outputs=outputs, timeout_seconds=TIMEOUT_S,
                       max_attempts=2)(analyze_requested)
    functions.function(FILE_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix=REQUEST_SUFFIX),
                                          OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix=FOLDER_SUFFIX)],
                       outputs=outputs, timeout_seconds=TIMEOUT_S, max_attempts=2)(analyze_dropped)
    functions.function(REANALYSE_FUNCTION, on=[OnSchedule(name=REANALYSE_SCHEDULE, every_seconds=REANALYSE_EVERY_S)],
                       timeout_seconds=120)(reanalyse_on_new_knowledge)


def analysis_id(task_id: int) -> str:
    return f"ta-{task_id}"


def result_key(request_id: str, name: str = "result.json") -> str:
    return f"{RESULTS_PREFIX}{request_id}/{name}"


def analyze_requested(event: HttpEvent, context: HandlerContext) -> dict:
    try:
        request = msgspec.convert(event.body, AnalysisRequest)
    except msgspec.ValidationError as exc:
        raise Refused(f"invalid analysis request: {exc}") from None
    return _analyze(context, request, source="http")


def analyze_dropped(event: ObjectEvent, context: HandlerContext) -> dict:
    if event.key.endswith(REQUEST_SUFFIX):
        with context.objects.open(event.bucket, event.key) as stream:
            raw = stream.read()
        try:
            request = msgspec.json.decode(raw, type=AnalysisRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise Refused(f"{event.key}: {exc}; expected {{run_id, mlflow_tracking_uri?, analysis_options?}}") from None
        return _analyze(context, request, source=f"file {event.key}")
    match = FOLDER_KEY.fullmatch(event.key)
    if match is None:
        raise Refused(f"{event.key}: expected {SOURCE_PREFIX}<run>/{METRICS_CSV}")
    root = f"{SOURCE_PREFIX}{match['root']}/"
    fs, base = context.objects.filesystem(event.bucket)
    files = {}
    for path in fs.find(posixpath.join(base, root)):
        relative = path[len(posixpath.join(base, root)):].lstrip("/")
        if not posixpath.basename(relative).startswith("."):
            with fs.open(path, "rb") as stream:
                files[relative] = stream.read()
    request = AnalysisRequest(run_id=match["root"].rsplit("/", 1)[-1], mlflow_tracking_uri=context.objects.url(event.bucket, root.rstrip("/")))
    return _analyze(context, request, source=f"folder {root}", files=files)


def _analyze(context: HandlerContext, request: AnalysisRequest, *, source: str, files: dict[str, bytes] | None = None) -> dict:
    request_id = analysis_id(context.task_id)
    uri = request.mlflow_tracking_uri or context.mlflow_tracking_uri
    options = request.analysis_options
    knowledge = KnowledgeBase()
    requested = datetime.now(UTC).isoformat()
    run: RunData | None = None
    started = time.monotonic()
    try:
        run = (read_run(uri, request.run_id, timeout=request.mlflow_timeout_seconds) if files is None
               else run_from_files(request.run_id, uri, files))
    except (MlflowUnavailable, RunNotFound, ArtifactInvalid, TrackingUriInvalid) as exc:
        result = AnalysisResult(request_id=request_id, run_id=request.run_id, tracking_uri=uri, status="failed",
                                summary=exc.message, error=ErrorInfo(error=exc.code, message=exc.message,
                                                                     details={k: v for k, v in exc.details.items()}),
                                execution_time=round(time.monotonic() - started, 4), knowledge_base_version=knowledge.version)
    else:
        result = run_analysis(run, options, request_id=request_id, knowledge=knowledge)
    report = build_report(result, run, options)
    result.report = context.outputs.write_bytes(BUCKET, result_key(request_id, f"report{report.suffix}"), report.text.encode())
    for name, png in report.plots.items():
        context.outputs.write_bytes(BUCKET, result_key(request_id, f"plots/{name}"), png)
    if options.log_to_mlflow and run is not None and files is None:
        _log_back(context, request_id, uri, request.run_id, report, result)
    result.result = context.objects.url(BUCKET, result_key(request_id))
    context.outputs.write_bytes(BUCKET, result_key(request_id), msgspec.json.encode(result))
    metadata: dict[str, Any] = {"run_id": request.run_id, "tracking_uri": uri, "source": source,
                                "knowledge_base_version": knowledge.version}
    context.state.create(KIND, request_id, reason=f"analysis of run {request.run_id} requested ({source})",
                         metadata=metadata | {"requested_at": requested})
    context.state.transition(KIND, request_id, trigger="started", reason="reading the run and analysing",
                             metadata={"attempt": context.attempt})
    findings = sorted(result.rule_ids())
    context.state.transition(KIND, request_id, trigger=result.status, reason=result.summary[:500], metadata=metadata | {
        "findings": findings, "warnings": result.warnings, "execution_time": result.execution_time,
        "result": result.result, "report": result.report,
        "error": None if result.error is None else result.error.error})
    return {"request_id": request_id, "status": result.status, "run_id": request.run_id, "findings": findings,
            "error": None if result.error is None else msgspec.to_builtins(result.error)}


def _log_back(context: HandlerContext, request_id: str, uri: str, run_id: str, report, result: AnalysisResult) -> None:
    """The report and its plots as artifacts of the run (dropwire_analysis/); a failure to log
    is a warning of the result, not a failed analysis."""
    import tempfile
    from pathlib import Path

    from dropwire.functions.kit.tracking import tracking_client

    try:
        with tempfile.TemporaryDirectory(prefix="dropwire-report-") as tmp:
            folder = Path(tmp) / request_id
            (folder / "plots").mkdir(parents=True)
            (folder / f"report{report.suffix}").write_text(report.text)
            (folder / "result.json").write_bytes(msgspec.json.encode(result))
            for name, png in report.plots.items():
                (folder / "plots" / name).write_bytes(png)
            tracking_client(uri).log_artifacts(run_id, str(folder), f"dropwire_analysis/{request_id}")
    except Exception as exc:
        context.log.warning("could not log analysis %s back to run %s: %s", request_id, run_id, exc)
        result.warnings.append(f"report not logged to the MLflow run: {type(exc).__name__}: {exc}")


def reanalyse_on_new_knowledge(event: ScheduledEvent, context: HandlerContext) -> dict:
    """Queue a new analysis of every run analysed in the last week whose latest analysis used
    another knowledge-base version (once per run and version: the idempotency key)."""
    version = KnowledgeBase().version
    fs, base = context.objects.filesystem(BUCKET)
    since = datetime.now(UTC) - RECENT
    latest: dict[tuple[str, str], tuple[datetime, AnalysisResult]] = {}
    # fsspec's glob answers a dict only with detail=True.
    for path in cast("list[str]", fs.glob(posixpath.join(base, RESULTS_PREFIX, "*", "result.json"))):
        key = path[len(base):].lstrip("/")
        written = context.objects.modified(BUCKET, key)
        if written is None or written < since:
            continue
        with context.objects.open(BUCKET, key) as stream:
            try:
                result = msgspec.json.decode(stream.read(), type=AnalysisResult)
            except (msgspec.DecodeError, msgspec.ValidationError):
                context.log.warning("%s is not an analysis result; skipped", key)
                continue
        if result.error is not None and result.error.error != MlflowUnavailable.code:
            continue  # an unknown run or unreadable artifacts stay so under any knowledge base
        run = (result.tracking_uri, result.run_id)
        if run not in latest or written > latest[run][0]:
            latest[run] = (written, result)
    queued = []
    for (uri, run_id), (_, result) in sorted(latest.items()):
        if result.knowledge_base_version == version or uri.startswith(("file:", "s3:")):
            continue  # folder drops are analysed again by dropping them again
        body = msgspec.to_builtins(AnalysisRequest(run_id=run_id, mlflow_tracking_uri=uri))
        context.state.enqueue(TaskSpec(
            name=task_name(ANALYZE_FUNCTION), max_attempts=2, idempotency_key=f"reanalyse:{uri}:{run_id}:{version}",
            args=Invocation(function=ANALYZE_FUNCTION, source="schedule",
                            event=HttpEvent(body=body, received_at=event.fire_time))))
        queued.append(run_id)
    return {"knowledge_base_version": version, "requeued": queued}

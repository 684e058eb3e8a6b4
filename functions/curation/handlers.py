"""Curation as handlers (seed 5's curation app, its auto-import a function of its own): a
completed batch's lines become Label Studio review tasks, and reviewed tasks come back as an
evaluation dataset with truth columns.

    curation/<name>.json   an export request dropped into bucket `local`:
                           {"batch_id", "schema": NAME | {"kind", ...}, "evaluate_use_case"?, "evaluate_model"?}
    batch-outputs/...output.jsonl   a batch's output file: a completed batch whose metadata names
                           `curation_schema` (and optionally `curation_use_case`, `curation_model`)
                           is exported by itself (curation.auto_export)

Each export (one per batch and schema, kind `curation_export`) writes, always,
``curation-exports/<export id>/tasks.json`` (Label Studio's import JSON: data and a prediction
per line) with ``label-config.xml`` and, when lines do not fit the schema, ``problems.json``;
then, with `curation.label_studio_url` set, it creates or reuses the project and imports the
tasks Label Studio does not hold yet, in chunks. `curation-export` (HTTP) runs one again.

``curation-pull`` (HTTP with {"export_id"}, and the `curation-pull` schedule for every
imported export, which also retries exports that failed reaching Label Studio) reads the
reviewed annotations and writes ``curation-datasets/<export id>/dataset.csv`` (layout single:
record_id, <field>_true, <field>_pred) with ``evaluation-config.json``; an export that names a
use case and model also gets the dataset written as
``use-cases/<uc>/models/<model>/dataset.csv``, which the evaluation workflow evaluates as it
does any model's dataset. A pull that finds the same reviews as the last one writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import msgspec

from dropwire.functions.batches import BUCKET, BatchState, batch_file, batch_info, batch_status
from dropwire.functions.batches import KIND as BATCH_KIND
from dropwire.functions.batches import OUTPUT_PREFIX as BATCH_OUTPUT_PREFIX
from dropwire.functions.batches import TERMINAL as BATCH_TERMINAL
from dropwire.functions.curation import reads
from dropwire.functions.curation.core.label_studio import LabelStudio, LabelStudioError, import_chunks
from dropwire.functions.curation.core.reviewed import dataset_csv, dataset_rows, evaluation_config
from dropwire.functions.curation.core.tasks import build_tasks, prompt_texts
from dropwire.functions.curation.schemas import SchemaSpec, UnknownSchema, resolve
from dropwire.functions.curation.settings import CurationSettings, curation_settings
from dropwire.functions.curation.states import KIND
from dropwire.functions.curation.states import ExportState as E
from dropwire.functions.kit.backoff import equal_jitter
from dropwire.functions.kit.errors import NotFound
from dropwire.functions.platform.context import HandlerContext
from dropwire.functions.platform.registry import (
    FunctionRegistry,
    HttpEvent,
    ObjectEvent,
    OnHttp,
    OnSchedule,
    OnUpload,
    Output,
    ScheduledEvent,
)
from dropwire.functions.platform.tasks import PermanentTaskError, Refused
from dropwire.storage.curation import ExportError, ExportRow, Imported, ProjectRow, Pulled

REQUEST_PREFIX = "curation/"
EXPORT_PREFIX = "curation-exports/"
DATASET_PREFIX = "curation-datasets/"
USE_CASES_PREFIX = "use-cases/"
REQUEST_FUNCTION = "curation-request"
BATCH_DONE_FUNCTION = "curation-batch-completed"
EXPORT_FUNCTION = "curation-export"
PULL_FUNCTION = "curation-pull"
PULL_SCHEDULE = OnSchedule(name="curation-pull", every_seconds=300.0)
TIMEOUT_S = 1800.0
PROBLEMS_SHOWN = 5


class ExportRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    batch_id: str
    schema: str | dict[str, Any]
    evaluate_use_case: str | None = None
    evaluate_model: str | None = None


class PullRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    #: None: every imported export
    export_id: str | None = None


def register(functions: FunctionRegistry) -> None:
    exports = [Output(bucket=BUCKET, prefix=EXPORT_PREFIX)]
    functions.function(REQUEST_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=REQUEST_PREFIX, suffix=".json")],
                       outputs=exports, timeout_seconds=TIMEOUT_S, max_attempts=2)(export_requested)
    functions.function(BATCH_DONE_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=BATCH_OUTPUT_PREFIX, suffix="output.jsonl")],
                       outputs=exports, timeout_seconds=TIMEOUT_S, max_attempts=3)(batch_output_written)
    functions.function(EXPORT_FUNCTION, on=[OnHttp()], outputs=exports, timeout_seconds=TIMEOUT_S,
                       max_attempts=1)(export_invoked)
    functions.function(PULL_FUNCTION, on=[OnHttp(), PULL_SCHEDULE],
                       outputs=[*exports, Output(bucket=BUCKET, prefix=DATASET_PREFIX),
                                Output(bucket=BUCKET, prefix=USE_CASES_PREFIX)],
                       timeout_seconds=TIMEOUT_S, max_attempts=2)(pull_reviewed)


def _state(context: HandlerContext, kind: str, entity_id: str) -> str | None:
    try:
        return context.state.current(kind, entity_id)[0]
    except NotFound:
        return None


EXPECTED = {ExportRequest: '{"batch_id", "schema", "evaluate_use_case"?, "evaluate_model"?}', PullRequest: '{"export_id"?}'}


def _decode(data: Any, kind: type, where: str) -> Any:
    try:
        return msgspec.json.decode(data, type=kind) if isinstance(data, bytes) else msgspec.convert(data, kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Refused(f"{where}: {exc} (expected {EXPECTED[kind]})") from None


# A batch whose lines partly failed for good is reviewed on the lines that succeeded.
EXPORTABLE = (BatchState.COMPLETED, BatchState.PARTIALLY_PROCESSED)


def export_id_of(batch_id: str, schema_name: str) -> str:
    return "cx-" + hashlib.sha256(f"{batch_id}:{schema_name}".encode()).hexdigest()[:16]


# Label Studio refuses a project title longer than this (400, "no more than 50 characters").
TITLE_MAX = 50
ELLIPSIS = "…"


def project_title(prefix: str, name: str, schema_name: str, export_id: str) -> str:
    """`<prefix> <name> (<schema>) [<export id>]` within TITLE_MAX characters: the export id
    whole (what finds the project again), the readable parts shortened, longest first, each
    ending in an ellipsis where it was cut. A title that fits is left as it is, so a project
    made before under it is found again."""
    tail = f" [{export_id}]"
    full = f"{prefix} {name} ({schema_name}){tail}"
    if len(full) <= TITLE_MAX:
        return full
    parts = [prefix, name, schema_name]
    room = max(0, TITLE_MAX - len(tail) - len(" ()") - (1 if prefix else 0))
    # The longest part is cut one character at a time until they fit: short parts stay whole.
    lengths = [len(p) for p in parts]
    while sum(lengths) > room:
        longest = max(range(3), key=lambda i: (lengths[i], i == 1))
        lengths[longest] -= 1
    cut = [p if len(p) <= n else (p[:n - 1] + ELLIPSIS if n else "") for p, n in zip(parts, lengths, strict=False)]
    readable = f"{cut[0]} {cut[1]} ({cut[2]})" if prefix else f"{cut[1]} ({cut[2]})"
    return (readable + tail)[-TITLE_MAX:] if len(readable + tail) > TITLE_MAX else readable + tail


# ---------------------------------------------------------------- the three ways an export starts


def export_requested(event: ObjectEvent, context: HandlerContext) -> dict:
    with context.objects.open(event.bucket, event.key) as stream:
        request = _decode(stream.read(), ExportRequest, event.key)
    return _export_request(context, request, f"requested in {event.key}")


def export_invoked(event: HttpEvent, context: HandlerContext) -> dict:
    return _export_request(context, _decode(event.body, ExportRequest, "the request body"), "asked over HTTP")


def batch_output_written(event: ObjectEvent, context: HandlerContext) -> dict:
    """A batch's output file appeared: once the batch is committed completed (its finalize step
    writes the file just before it commits), export it if its metadata names a schema."""
    settings = curation_settings(context.config)
    if not settings.auto_export:
        return {"skipped": "curation.auto_export is off"}
    deadline = time.monotonic() + settings.batch_settle_seconds
    while True:
        batch_id = reads.batch_of_output(context.state.query, event.key)
        state = batch_id and _state(context, BATCH_KIND, batch_id)
        if state in BATCH_TERMINAL:
            break
        if time.monotonic() >= deadline:
            # Not a data problem: the queue tries again with backoff.
            raise RuntimeError(f"{event.key}: its batch was not committed finished within "
                               f"{settings.batch_settle_seconds} s (curation.batch_settle_seconds)")
        time.sleep(0.1)
    if batch_id is None or state not in EXPORTABLE:
        return {"batch": batch_id, "skipped": f"the batch is {state}"}
    metadata = batch_info(context.state.query, batch_id).metadata or {}
    if not metadata.get("curation_schema"):
        return {"batch": batch_id, "skipped": "its metadata names no curation_schema"}
    request = ExportRequest(batch_id=batch_id, schema=metadata["curation_schema"],
                            evaluate_use_case=metadata.get("curation_use_case"),
                            evaluate_model=metadata.get("curation_model"))
    return _export_request(context, request, f"batch {batch_id} completed")


def _export_request(context: HandlerContext, request: ExportRequest, why: str) -> dict:
    settings = curation_settings(context.config)
    try:
        name, spec = resolve(request.schema, settings.schemas)
    except UnknownSchema as exc:
        raise Refused(f"batch {request.batch_id}: {exc.message}") from None
    if (request.evaluate_use_case is None) != (request.evaluate_model is None):
        raise Refused("evaluate_use_case and evaluate_model go together: name both, or neither")
    return export(context, settings, request, name, spec, why)


# ---------------------------------------------------------------- the export


def export(context: HandlerContext, settings: CurationSettings, request: ExportRequest, name: str, spec: SchemaSpec,
           why: str) -> dict:
    query = context.state.query
    try:
        batch_state = batch_status(query, request.batch_id)
        info = batch_info(query, request.batch_id)
    except NotFound as exc:
        raise Refused(exc.message) from None
    if batch_state not in EXPORTABLE or info.output_file_id is None:
        # Not NotYet: a batch may run for hours, and the API answers this at once (409); a
        # batch whose metadata names a schema is exported when it completes.
        raise Refused(f"batch {request.batch_id} is {batch_state}; only a completed batch (or one "
                                 "partially processed: its lines that succeeded) is exported")
    export_id = export_id_of(request.batch_id, name)
    if request.evaluate_use_case is None and request.evaluate_model is None:
        # A re-export keeps what it does not name: the target a first export (or the batch's
        # metadata) gave stays, or reviews pulled after it would no longer be evaluated.
        try:
            before = reads.export(query, export_id)
        except NotFound:
            before = None
        if before is not None:
            request = msgspec.structs.replace(request, evaluate_use_case=before.evaluate_use_case,
                                              evaluate_model=before.evaluate_model)
    source, output = batch_file(query, info.input_file_id), batch_file(query, info.output_file_id)
    with context.objects.open(source.bucket, source.key) as stream:
        texts = prompt_texts(stream)
    with context.objects.open(output.bucket, output.key) as stream:
        built = build_tasks(spec, batch_id=request.batch_id, export_id=export_id, model=info.model or "unknown",
                            texts=texts, output_lines=(json.loads(raw) for raw in stream if raw.strip()))
    folder = f"{EXPORT_PREFIX}{export_id}/"
    key = f"{folder}tasks.json"
    problems = [{"custom_id": p.custom_id, "message": p.message} for p in built.problems]
    context.outputs.write_bytes(BUCKET, key, json.dumps(built.tasks, ensure_ascii=False).encode())
    context.outputs.write_bytes(BUCKET, f"{folder}label-config.xml", spec.label_config().encode())
    if problems:
        context.outputs.write_bytes(BUCKET, f"{folder}problems.json", json.dumps(problems, ensure_ascii=False).encode())
    title = project_title(settings.project_prefix, info.name or info.id, name, export_id)
    context.records.record("curation.export", ExportRow(
        id=export_id, batch_id=request.batch_id, schema_name=name, schema=msgspec.to_builtins(spec), project_title=title,
        export_key=key, tasks=len(built.tasks), problems=problems, failed_requests=len(built.failed_requests),
        evaluate_use_case=request.evaluate_use_case, evaluate_model=request.evaluate_model))
    summary = (f"{len(built.tasks)} task(s) from batch {request.batch_id} in {key} ({why}); "
               f"{len(built.failed_requests)} failed request(s) left out")
    if _state(context, KIND, export_id) is None:
        context.state.create(KIND, export_id, reason=summary, metadata={"batch_id": request.batch_id, "schema": name})
    else:
        context.state.transition(KIND, export_id, trigger="export", reason=summary, metadata={"key": key})
    outcome = {"export": export_id, "key": key, "tasks": len(built.tasks), "problems": len(problems)}
    if problems:
        shown = "; ".join(f"custom_id {p['custom_id']}: {p['message']}" for p in problems[:PROBLEMS_SHOWN])
        error = (f"{len(problems)} line(s) of batch {request.batch_id} do not fit schema {name!r}, nothing sent to "
                 f"Label Studio (see {folder}problems.json): {shown}")
        return _failed(context, export_id, error, retryable=False, outcome=outcome, problems=problems)
    if not settings.label_studio_url:
        return {**outcome, "status": E.EXPORTED}
    try:
        project_id, new = send(context, settings, export_id, title, spec, built.tasks)
    except LabelStudioError as exc:
        return _failed(context, export_id, str(exc), retryable=exc.retryable, outcome=outcome)
    context.records.record("curation.error", ExportError(id=export_id, error=None))
    context.state.transition(KIND, export_id, trigger="import",
                             reason=f"{len(built.tasks)} task(s) in Label Studio project {project_id} ({new} new)",
                             metadata={"project_id": project_id, "new": new})
    return {**outcome, "status": E.IMPORTED, "project_id": project_id, "new": new}


def _failed(context: HandlerContext, export_id: str, error: str, *, retryable: bool, outcome: dict,
            problems: list | None = None) -> dict:
    """The export ends failed with `error` in its history (the handler succeeds: that is the news)."""
    context.log.warning("curation export %s failed: %s", export_id, error)
    context.records.record("curation.error", ExportError(id=export_id, error=error, retryable=retryable))
    context.state.transition(KIND, export_id, trigger="fail", reason=error,
                             metadata={"retryable": retryable, "problems": (problems or [])[:20]})
    return {**outcome, "status": E.FAILED, "error": error, "retryable": retryable}


def _client(settings: CurationSettings, **overrides: Any) -> LabelStudio:
    options = dict(timeout_seconds=settings.request_timeout_seconds, max_attempts=settings.max_attempts,
                   retry_base_seconds=settings.retry_base_seconds, retry_max_seconds=settings.retry_max_seconds)
    return LabelStudio(settings.label_studio_url, settings.label_studio_token, **{**options, **overrides})


def send(context: HandlerContext, settings: CurationSettings, export_id: str, title: str, spec: SchemaSpec,
         tasks: list[dict[str, Any]]) -> tuple[int, int]:
    """Create or reuse the project and import the tasks it does not hold yet; (project id, new).

    An import request is never repeated blindly (its answer may be lost after Label Studio
    stored the tasks): after a failed one, what the project holds is read again and only the
    tasks still missing are sent, so running this again never duplicates a task."""
    known = reads.export(context.state.query, export_id).project_id
    with _client(settings) as ls, _client(settings, max_attempts=1) as importer:
        project = (known and ls.project(known)) or ls.find_project(title) or ls.create_project(
            title, spec.label_config(), f"Review of {export_id}: batch lines and their model's predictions (dropwire)")
        project_id = int(project["id"])
        if project_id != known:
            context.records.record("curation.project", ProjectRow(id=export_id, project_id=project_id))
        held_at_start, round_ = None, 0
        while True:
            round_ += 1
            held = {str((t.get("data") or {}).get("custom_id")) for t in ls.tasks(project_id)}
            held_at_start = len(held) if held_at_start is None else held_at_start
            missing = [t for t in tasks if t["data"]["custom_id"] not in held]
            sent = 0
            try:
                for chunk in import_chunks(missing, max_tasks=settings.import_chunk_tasks,
                                           max_bytes=settings.import_chunk_bytes):
                    sent += importer.import_tasks(project_id, chunk)
                    context.records.record("curation.imported", Imported(id=export_id, imported=len(held) + sent))
                return project_id, len(held) + sent - held_at_start
            except LabelStudioError as exc:
                if not exc.retryable or round_ >= settings.max_attempts:
                    raise
                context.log.info("import into project %s interrupted (%s); reading what it holds before going on",
                                 project_id, exc)
                time.sleep(equal_jitter(round_, settings.retry_base_seconds, settings.retry_max_seconds))


# ---------------------------------------------------------------- reviewed annotations back


def pull_reviewed(event: HttpEvent | ScheduledEvent, context: HandlerContext) -> dict:
    settings = curation_settings(context.config)
    if not settings.label_studio_url:
        if isinstance(event, ScheduledEvent):  # the schedule runs everywhere; without Label Studio it has nothing to do
            return {"skipped": "curation.label_studio_url is not set"}
        # The operator's setting to fix, not the user's request: stays a failure (a dead letter).
        raise PermanentTaskError("curation.label_studio_url is not set: there is no Label Studio to pull from")
    body = event.body if isinstance(event, HttpEvent) and event.body is not None else {}
    request = _decode(body, PullRequest, "the request body")
    if request.export_id is not None:
        try:
            info = reads.export(context.state.query, request.export_id)
        except NotFound as exc:
            raise Refused(exc.message) from None
        return pull(context, settings, info)
    # The schedule: every imported export, and a retry of those that failed reaching Label Studio.
    results = []
    for info in reads.exports(context.state.query, (E.FAILED,)):
        if info.retryable:
            name, spec = info.schema_name, msgspec.convert(info.schema, SchemaSpec)
            request_again = ExportRequest(batch_id=info.batch_id, schema=info.schema,
                                          evaluate_use_case=info.evaluate_use_case, evaluate_model=info.evaluate_model)
            try:
                results.append(export(context, settings, request_again, name, spec,
                                      "retried by the curation-pull schedule"))
            except (PermanentTaskError, Refused) as exc:  # one export that cannot run again does not stop the others
                results.append({"export": info.id, "error": exc.message})
    for info in reads.exports(context.state.query, (E.IMPORTED, E.REVIEWED)):
        try:
            results.append(pull(context, settings, info))
        except (PermanentTaskError, Refused) as exc:
            results.append({"export": info.id, "error": exc.message})
    return {"exports": results}


def pull(context: HandlerContext, settings: CurationSettings, info: reads.ExportInfo) -> dict:
    if info.state not in (E.IMPORTED, E.REVIEWED) or info.project_id is None:
        raise Refused(f"curation export {info.id} is {info.state}: reviews are pulled once it is imported")
    spec = msgspec.convert(info.schema, SchemaSpec)
    try:
        with _client(settings) as ls:
            annotated = ls.annotated_tasks(info.project_id)
    except LabelStudioError as exc:
        if exc.retryable:
            raise RuntimeError(str(exc)) from None  # the queue tries again with backoff
        raise PermanentTaskError(str(exc)) from None
    with context.objects.open(BUCKET, info.export_key) as stream:
        predictions = {t["data"]["custom_id"]: t["predictions"][0]["result"] for t in json.load(stream)}
    rows, fingerprint = dataset_rows(spec, annotated, predictions)
    outcome = {"export": info.id, "reviewed": len(rows), "tasks": info.tasks}
    if not rows:
        return {**outcome, "written": None}
    if reads.pulled(context.state.query, info.id, fingerprint):
        return {**outcome, "written": None, "unchanged": True}
    data = dataset_csv(spec, rows)
    key = f"{DATASET_PREFIX}{info.id}/dataset.csv"
    context.outputs.write_bytes(BUCKET, f"{DATASET_PREFIX}{info.id}/evaluation-config.json",
                                json.dumps(evaluation_config(spec, info.evaluate_use_case or info.id), indent=2).encode())
    context.outputs.write_bytes(BUCKET, key, data)
    written = [key]
    if info.evaluate_use_case and info.evaluate_model:
        target = f"{USE_CASES_PREFIX}{info.evaluate_use_case}/models/{info.evaluate_model}/dataset.csv"
        context.outputs.write_bytes(BUCKET, target, data)
        written.append(target)
    context.records.record("curation.pulled", Pulled(export_id=info.id, fingerprint=fingerprint, reviewed=len(rows),
                                                     dataset_key=key))
    context.state.transition(KIND, info.id, trigger="pull",
                             reason=f"{len(rows)} of {info.tasks} task(s) reviewed; dataset {written[-1]}",
                             metadata={"reviewed": len(rows), "written": written})
    return {**outcome, "written": written}

"""The file-driven evaluation workflow (seed 1): a team drops files under ``use-cases/`` in
bucket ``local`` and each one moves its use case or model along its state machine
(``functions/states.py``).

    use-cases/<uc>/use-case.json                     {"name", "team_email"}: the use case, its config template
    use-cases/<uc>/config.yaml|.yml|.json            the evaluation config, validated (every problem listed)
    use-cases/<uc>/models/<model>/register.json      {"name", "version"}: a model of the use case
    use-cases/<uc>/models/<model>/dataset.csv|.parquet|.xlsx   its dataset (layout single)

What they produce lies under prefixes no trigger watches: ``evaluation-templates/<uc>/``
(the template sent to the team), ``evaluation-configs/<uc>/config.json`` (the last valid
config, which evaluations use) and ``evaluation-results/<uc>/<model>/<version>/`` (the
quality report, Parquet results and the Excel report).

A dataset upload commits ``dataset_uploaded`` and ``quality_check_started`` and queues the
``evaluation-run`` invocation, whose success commits the quality check's outcome and, when it
passed, the evaluation's, in one completion. A crash is retried by the queue; a task whose
retries are spent leaves the model in QUALITY_CHECK_RUNNING with a dead letter (moving it to
EVALUATION_FAILED through the task's on_dead effects is not done yet).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Any, TypeVar

import fsspec
import msgspec

from functions.context import HandlerContext
from functions.evaluation import (
    ConfigInvalid,
    ConfigProblem,
    DatasetFiles,
    DatasetUnreadable,
    EvaluationConfig,
    QualityReport,
    ReportContext,
    TrackingStore,
    check_dataset,
    config_hash,
    evaluate_dataset,
    load_config,
    load_dataset,
    log_evaluation_run,
    render_template,
    write_excel_report,
    write_results,
)
from functions.platform import FunctionRegistry, HttpEvent, Invocation, ObjectEvent, OnHttp, OnUpload, Output
from functions.registry import PermanentTaskError
from functions.states import ModelEvaluationState as M
from functions.states import UseCaseState as U
from storage.errors import NotFound
from storage.records import TaskSpec

# The local folder played as a bucket (settings.events.bucket's default).
BUCKET = "local"
SOURCE_PREFIX = "use-cases/"
# Outputs: no trigger watches these, so writing them fires nothing.
TEMPLATES_PREFIX = "evaluation-templates/"
CONFIGS_PREFIX = "evaluation-configs/"
RESULTS_PREFIX = "evaluation-results/"

USE_CASE_FUNCTION = "evaluation-use-case"
CONFIG_FUNCTION = "evaluation-config"
MODEL_FUNCTION = "evaluation-model"
DATASET_FUNCTION = "evaluation-dataset"
RUN_FUNCTION = "evaluation-run"
RUN_TIMEOUT_S = 900.0
RUN_MAX_ATTEMPTS = 3
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
DATASET_SUFFIXES = (".csv", ".parquet", ".xlsx")
# Quality issues named in a transition's metadata and a notification's body (the attached
# report has them all).
ISSUES_LISTED = 20

USE_CASE_KEY = re.compile(r"use-cases/(?P<uc>[^/]+)/use-case\.json")
CONFIG_KEY = re.compile(r"use-cases/(?P<uc>[^/]+)/config\.(yaml|yml|json)")
MODEL_KEY = re.compile(r"use-cases/(?P<uc>[^/]+)/models/(?P<model>[^/]+)/register\.json")
DATASET_KEY = re.compile(r"use-cases/(?P<uc>[^/]+)/models/(?P<model>[^/]+)/dataset\.(csv|parquet|xlsx)")

# A new config may be uploaded in these use-case states; a dataset only once one is valid.
CONFIG_ACCEPTED_IN = (U.AWAITING_CONFIG, U.CONFIG_INVALID, U.CONFIG_VALIDATED)
DATASET_NEEDS_USE_CASE_IN = (U.CONFIG_VALIDATED, U.QUALITY_CHECK_RUNNING, U.QUALITY_CHECK_PASSED, U.QUALITY_CHECK_FAILED)
DATASET_ACCEPTED_IN = (M.REGISTERED, M.AWAITING_DATA_FIX, M.EVALUATION_COMPLETED, M.EVALUATION_FAILED)

T = TypeVar("T")


class UseCaseFile(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    team_email: str


class ModelFile(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    version: str


def register(functions: FunctionRegistry) -> None:
    functions.function(USE_CASE_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix="/use-case.json")],
                       outputs=[Output(bucket=BUCKET, prefix=TEMPLATES_PREFIX)], timeout_seconds=60)(use_case_uploaded)
    functions.function(CONFIG_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix=f"/config{s}")
                                            for s in CONFIG_SUFFIXES],
                       outputs=[Output(bucket=BUCKET, prefix=CONFIGS_PREFIX)], timeout_seconds=60)(config_uploaded)
    functions.function(MODEL_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix="/register.json")],
                       timeout_seconds=60)(model_registered)
    functions.function(DATASET_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix=f"/dataset{s}")
                                             for s in DATASET_SUFFIXES], timeout_seconds=60)(dataset_uploaded)
    # Queued by dataset_uploaded; the HTTP trigger only lets the
    # platform list it, and such an invocation is refused (see run_evaluation).
    functions.function(RUN_FUNCTION, on=[OnHttp()], outputs=[Output(bucket=BUCKET, prefix=RESULTS_PREFIX)],
                       timeout_seconds=RUN_TIMEOUT_S, max_attempts=RUN_MAX_ATTEMPTS)(run_evaluation)


def config_key(use_case: str) -> str:
    return f"{CONFIGS_PREFIX}{use_case}/config.json"


def results_prefix(use_case: str, model: str, version: str) -> str:
    return f"{RESULTS_PREFIX}{use_case}/{model}/{version}/"


def _state_or_none(context: HandlerContext, kind: str, entity_id: str) -> str | None:
    try:
        return context.state.current(kind, entity_id)[0]
    except NotFound:
        return None


def use_case_uploaded(event: ObjectEvent, context: HandlerContext) -> dict:
    use_case = _parse_key(event, USE_CASE_KEY, "use-cases/<use case>/use-case.json")["uc"]
    about = _decode(context, event, UseCaseFile)
    state = _state_or_none(context, "use_case", use_case)
    if state is not None:
        raise PermanentTaskError(f"{event.key}: use case {use_case!r} already exists (state {state}); "
                                 "a use case is registered once")
    template = context.outputs.write_bytes(BUCKET, f"{TEMPLATES_PREFIX}{use_case}/config-template.yaml",
                                           render_template(use_case).encode())
    metadata = _file(event) | {"name": about.name, "team_email": about.team_email}
    context.state.create("use_case", use_case, reason=f"{event.key} uploaded", metadata=metadata)
    context.state.transition("use_case", use_case, trigger="template_sent", reason="config template written",
                             metadata=_file(event) | {"template": template})
    context.state.transition("use_case", use_case, trigger="await_config", reason="waiting for the team's config",
                             metadata=_file(event))
    context.state.notify(
        "template_sent", f"Evaluation config template for {about.name}",
        f"Use case {about.name!r} ({use_case}) is registered. Fill in the attached template and upload it as "
        f"{SOURCE_PREFIX}{use_case}/config.yaml (or .yml / .json).",
        recipients=[about.team_email], attachments=[template], entity_kind="use_case", entity_id=use_case,
        metadata=_file(event))
    return {"use_case": use_case, "template": template}


def config_uploaded(event: ObjectEvent, context: HandlerContext) -> dict:
    use_case = _parse_key(event, CONFIG_KEY, "use-cases/<use case>/config.yaml|.yml|.json")["uc"]
    state, version = _require(context, "use_case", use_case, CONFIG_ACCEPTED_IN, event,
                              f"upload {SOURCE_PREFIX}{use_case}/use-case.json first")
    team = _created_with(context, "use_case", use_case, UseCaseFile)
    source = f"{event.bucket}/{event.key}"
    with context.objects.open(event.bucket, event.key) as stream:
        data = stream.read()
    problems: list[ConfigProblem] = []
    config: EvaluationConfig | None = None
    try:
        config = load_config(data, source=source)
    except ConfigInvalid as exc:
        problems = list(exc.problems)
    if config is not None:
        if config.use_case != use_case:
            problems.append(ConfigProblem("use_case", f"is {config.use_case!r}, but the file was uploaded for use "
                                                      f"case {use_case!r}"))
        if config.layout != "single":
            problems.append(ConfigProblem("layout", f"is {config.layout!r}; uploads take one dataset file per "
                                                    "model, so the layout must be single"))
    context.state.transition("use_case", use_case, trigger="config_uploaded", expected_version=version,
                             reason=f"{event.key} uploaded (was {state})", metadata=_file(event))
    context.state.transition("use_case", use_case, trigger="validation_started", reason="validating the config",
                             metadata=_file(event))
    if problems:
        listed = [{"path": p.path, "message": p.message} for p in problems]
        context.state.transition("use_case", use_case, trigger="config_invalid",
                                 reason=f"{len(problems)} problem(s) in {event.key}",
                                 metadata=_file(event) | {"problems": listed})
        context.state.notify(
            "config_invalid", f"The evaluation config of {team.name} has {len(problems)} problem(s)",
            f"{source} was not accepted:\n" + "\n".join(f"- {p.path}: {p.message}" for p in problems)
            + f"\n\nFix them and upload the config again to {SOURCE_PREFIX}{use_case}/.",
            recipients=[team.team_email], entity_kind="use_case", entity_id=use_case,
            metadata=_file(event) | {"problems": listed})
        return {"use_case": use_case, "valid": False, "problems": listed}
    assert config is not None
    digest = config_hash(config)
    context.outputs.write_bytes(BUCKET, config_key(use_case), msgspec.json.encode(config))
    context.state.transition("use_case", use_case, trigger="config_valid", reason=f"{event.key} is valid",
                             metadata=_file(event) | {"config_hash": digest, "fields": [f.name for f in config.fields]})
    return {"use_case": use_case, "valid": True, "config_hash": digest}


def model_registered(event: ObjectEvent, context: HandlerContext) -> dict:
    parts = _parse_key(event, MODEL_KEY, "use-cases/<use case>/models/<model>/register.json")
    use_case, model_id = parts["uc"], f"{parts['uc']}/{parts['model']}"
    about = _decode(context, event, ModelFile)
    try:
        context.state.current("use_case", use_case)
    except NotFound:
        raise PermanentTaskError(f"{event.key}: use case {use_case!r} does not exist; upload "
                                 f"{SOURCE_PREFIX}{use_case}/use-case.json first") from None
    state = _state_or_none(context, "model", model_id)
    if state is not None:
        raise PermanentTaskError(f"{event.key}: model {model_id!r} is already registered (state {state}); "
                                 "register a new version under a new model folder")
    context.state.create("model", model_id, reason=f"{event.key} uploaded",
                         metadata=_file(event) | {"use_case": use_case, "name": about.name, "version": about.version})
    return {"model": model_id, "name": about.name, "version": about.version}


def dataset_uploaded(event: ObjectEvent, context: HandlerContext) -> dict:
    parts = _parse_key(event, DATASET_KEY, "use-cases/<use case>/models/<model>/dataset.csv|.parquet|.xlsx")
    use_case, model_id = parts["uc"], f"{parts['uc']}/{parts['model']}"
    _require(context, "use_case", use_case, DATASET_NEEDS_USE_CASE_IN, event,
             f"upload a valid {SOURCE_PREFIX}{use_case}/config.yaml, then the dataset again")
    _, version = _require(context, "model", model_id, DATASET_ACCEPTED_IN, event,
                          f"upload {SOURCE_PREFIX}{model_id.replace('/', '/models/', 1)}/register.json first, "
                          "or wait for the running check to finish")
    context.state.transition("model", model_id, trigger="dataset_uploaded", expected_version=version,
                             reason=f"{event.key} uploaded", metadata=_file(event))
    context.state.transition("model", model_id, trigger="quality_check_started", reason="quality check queued",
                             metadata=_file(event))
    context.state.enqueue(TaskSpec(
        name=f"fn:{RUN_FUNCTION}",  # the platform's invocation task of a function (FunctionSpec.task_name)
        args=Invocation(function=RUN_FUNCTION, source="upload", event=event),
        max_attempts=RUN_MAX_ATTEMPTS,
        idempotency_key=f"{RUN_FUNCTION}:{event.bucket}/{event.key}@{event.version}"))
    return {"model": model_id, "dataset": event.key}


def run_evaluation(event: ObjectEvent | HttpEvent, context: HandlerContext) -> dict:
    """Quality-check a model's dataset and, when it passes, evaluate it; commits every
    transition from QUALITY_CHECK_RUNNING to where the model ends in one completion."""
    if not isinstance(event, ObjectEvent):
        raise PermanentTaskError(f"{RUN_FUNCTION} runs on a dataset upload, queued by {DATASET_FUNCTION}; upload "
                                 "use-cases/<use case>/models/<model>/dataset.<csv|parquet|xlsx> instead")
    parts = _parse_key(event, DATASET_KEY, "use-cases/<use case>/models/<model>/dataset.csv|.parquet|.xlsx")
    use_case, model_id = parts["uc"], f"{parts['uc']}/{parts['model']}"
    team = _created_with(context, "use_case", use_case, UseCaseFile)
    model = _created_with(context, "model", model_id, ModelFile)
    with context.objects.open(BUCKET, config_key(use_case)) as stream:
        config = load_config(stream.read(), source=context.objects.url(BUCKET, config_key(use_case)))
    folder = results_prefix(use_case, parts["model"], model.version)
    dataset_url = context.objects.url(event.bucket, event.key)
    files = DatasetFiles(dataset=dataset_url)
    try:
        dataset = load_dataset(config, files)
    except DatasetUnreadable as exc:
        dataset, report = None, QualityReport(passed=False, rows_checked=0, issues=exc.issues, files=[])
    else:
        report = check_dataset(dataset)
    report_url = context.outputs.write_bytes(BUCKET, f"{folder}quality-report.json", msgspec.json.encode(report))
    issues = [{"file": i.file, "column": i.column, "rows": i.rows, "row_count": i.row_count, "message": i.message}
              for i in report.errors[:ISSUES_LISTED]]
    checked = _file(event) | {"rows_checked": report.rows_checked, "errors": len(report.errors),
                              "warnings": len(report.warnings), "quality_report": report_url}
    if dataset is None or not report.passed:
        context.state.transition("model", model_id, trigger="quality_check_failed",
                                 reason=f"{len(report.errors)} quality error(s) in {event.key}",
                                 metadata=checked | {"issues": issues})
        context.state.transition("model", model_id, trigger="await_data_fix", reason="waiting for a fixed dataset",
                                 metadata=_file(event))
        context.state.notify(
            "qc_failed", f"The dataset of {model.name} {model.version} failed the quality check",
            f"{event.bucket}/{event.key} has {len(report.errors)} error(s):\n"
            + "\n".join(f"- {i['message']}" for i in issues)
            + f"\n\nFix them and upload the dataset again to {event.key}. Every issue is in the attached report.",
            recipients=[team.team_email], attachments=[report_url], entity_kind="model", entity_id=model_id,
            metadata=checked)
        return {"model": model_id, "passed": False, "errors": len(report.errors)}

    context.state.transition("model", model_id, trigger="quality_check_passed", reason=f"{event.key} passed",
                             metadata=checked)
    context.state.notify(
        "qc_passed", f"The dataset of {model.name} {model.version} passed the quality check",
        f"{event.bucket}/{event.key}: {report.rows_checked} rows checked, {len(report.warnings)} warning(s); "
        "the evaluation runs now.",
        recipients=[team.team_email], attachments=[report_url], entity_kind="model", entity_id=model_id,
        metadata=checked)
    context.state.transition("model", model_id, trigger="evaluation_queued", reason="quality check passed",
                             metadata=_file(event))
    context.state.transition("model", model_id, trigger="evaluation_started", reason="evaluating", metadata=_file(event))
    evaluation = evaluate_dataset(dataset)
    digest = config_hash(config)
    written = _written_through(context, folder, lambda root: msgspec.to_builtins(write_results(evaluation, root)))
    excel = ReportContext(use_case=use_case, model_name=model.name, model_version=model.version, config_hash=digest,
                          files=[dataset_url], evaluated_at=datetime.now(timezone.utc).isoformat())
    report_xlsx = _written_through(context, folder, lambda root: {
        "report": write_excel_report(evaluation, excel, f"{root}report.xlsx")})["report"]
    metrics = evaluation.metrics
    run_id = log_evaluation_run(
        TrackingStore(tracking_uri=context.mlflow_tracking_uri, artifact_location=context.mlflow_artifact_location),
        f"dropwire-evaluation/{use_case}", use_case=use_case, model_name=model.name, model_version=model.version,
        config_hash=digest, metrics=metrics, report_url=report_xlsx)
    summary = {
        "records": metrics.records, "records_all_matched": metrics.records_all_matched,
        "micro": msgspec.to_builtins(metrics.micro), "macro": msgspec.to_builtins(metrics.macro),
        "field_f1": {m.field: m.f1 for m in metrics.fields},
    }
    context.state.transition("model", model_id, trigger="evaluation_succeeded", reason=f"{event.key} evaluated",
                             metadata=_file(event) | summary | {"config_hash": digest, "report": report_xlsx,
                                                                "results": written, "mlflow_run_id": run_id})
    context.state.notify(
        "evaluation_completed", f"Evaluation of {model.name} {model.version} is done",
        f"{metrics.records} records; micro F1 {metrics.micro.f1:.3f}, accuracy {metrics.micro.accuracy:.3f}; "
        f"macro F1 {metrics.macro.f1:.3f}; all fields right in {metrics.records_all_matched:.1%} of records. "
        "The report is attached.",
        recipients=[team.team_email], attachments=[report_xlsx], entity_kind="model", entity_id=model_id,
        metadata={"mlflow_run_id": run_id, "micro_f1": metrics.micro.f1})
    return {"model": model_id, "passed": True, "mlflow_run_id": run_id, "report": report_xlsx}


def _written_through(context: HandlerContext, folder: str, write) -> dict[str, str]:
    """Let an evaluation-core writer (which takes a URL) write into memory, then put each file
    under `folder` through the handler's output writer (declared outputs, hop noting). Returns
    the writer's {name: url} with the memory URLs replaced by the objects' URLs."""
    memory = fsspec.filesystem("memory")
    root = f"memory://{RUN_FUNCTION}-{uuid.uuid4().hex}/"
    try:
        staged: dict[str, str] = write(root)
        return {name: context.outputs.write_bytes(BUCKET, folder + url.removeprefix(root), memory.cat_file(url))
                for name, url in staged.items()}
    finally:
        memory.rm(root, recursive=True)


def _parse_key(event: ObjectEvent, pattern: re.Pattern[str], layout: str) -> dict[str, str]:
    match = pattern.fullmatch(event.key)
    if match is None:
        raise PermanentTaskError(f"{event.bucket}/{event.key} does not follow the bucket layout: expected {layout}")
    return match.groupdict()


def _decode(context: HandlerContext, event: ObjectEvent, type_: type[T]) -> T:
    with context.objects.open(event.bucket, event.key) as stream:
        data = stream.read()
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.DecodeError as exc:
        fields = ", ".join(type_.__struct_fields__)  # type: ignore[attr-defined]
        raise PermanentTaskError(f"{event.bucket}/{event.key} is not valid: {exc} (expected a JSON object with "
                                 f"{fields})") from None


def _require(context: HandlerContext, kind: str, entity_id: str, states: tuple[str, ...], event: ObjectEvent,
             hint: str) -> tuple[str, int]:
    """(state, version) of the entity, or a permanent error naming the file, the entity and what to do."""
    try:
        state, version = context.state.current(kind, entity_id)
    except NotFound:
        raise PermanentTaskError(f"{event.key}: {kind} {entity_id!r} does not exist; {hint}") from None
    if state not in states:
        raise PermanentTaskError(f"{event.key}: {kind} {entity_id!r} is {state}, and this upload is taken only in "
                                 f"{', '.join(states)}; {hint}")
    return state, version


def _created_with(context: HandlerContext, kind: str, entity_id: str, type_: type[T]) -> T:
    """What the entity was registered with (its creation's metadata)."""
    rows = context.state.query("SELECT metadata FROM state_history WHERE kind = ? AND entity_id = ? AND seq = 1",
                               [kind, entity_id])
    if not rows:
        raise NotFound(f"{kind} {entity_id} does not exist", kind=kind, entity_id=entity_id)
    metadata = msgspec.json.decode(rows[0][0])
    return msgspec.convert({k: metadata[k] for k in type_.__struct_fields__ if k in metadata}, type_)  # type: ignore[attr-defined]


def _file(event: ObjectEvent) -> dict[str, Any]:
    """What every transition says about the upload behind it."""
    return {"file_uploaded": f"{event.bucket}/{event.key}", "file_version": event.version,
            "upload_event": event.event_name, "event_source": event.source}

"""The file-driven evaluation workflow (seed 1): a team drops files under ``use-cases/`` in
bucket ``local`` and each one moves its use case or model along its state machine
(``functions/states.py``).

    use-cases/<uc>/use-case.json                     {"name", "team_email"}: the use case, its config template
    use-cases/<uc>/config.yaml|.yml|.json            the evaluation config, validated (every problem listed)
    use-cases/<uc>/models/<model>/register.json      {"name", "version"}: a model of the use case
    use-cases/<uc>/models/<model>/dataset.<ext>      layout single: truth and predictions in one file;
                                                     layout separate: the truth file
    use-cases/<uc>/models/<model>/predictions.<ext>  layout separate: the predictions, joined on the record id
    (<ext>: csv, parquet or xlsx)

What they produce lies under prefixes no trigger watches: ``evaluation-templates/<uc>/``
(the template sent to the team), ``evaluation-configs/<uc>/config.json`` (the last valid
config, which checks and evaluations use) and ``evaluation-results/<uc>/<model>/<version>/``
(the quality report, Parquet results and the Excel report).

A dataset upload (for layout separate: the second of the two files) commits
``dataset_uploaded`` with the files to check and queues the quality check; a check that
passes queues the evaluation. Each step commits its transitions with its success. A crash is
not a data problem: the queue retries the step, each retried attempt moving the model through
RETRYING (the task's on-retry effects), and a step whose attempts are spent moves it to
EVALUATION_FAILED with the error (its on-dead effects) and tells the team. From there
``evaluation-retry`` (HTTP) queues the evaluation again; a new dataset starts over.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import fsspec
import msgspec

from dropwire.functions.evaluation.core import (
    ConfigInvalid,
    ConfigProblem,
    Dataset,
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
from dropwire.functions.evaluation.states import ModelEvaluationState as M
from dropwire.functions.evaluation.states import UseCaseState as U
from dropwire.functions.kit.errors import NotFound
from dropwire.functions.platform.context import HandlerContext
from dropwire.functions.platform.registry import (
    FunctionRegistry,
    HttpEvent,
    Invocation,
    ObjectEvent,
    OnHttp,
    OnQueue,
    OnUpload,
    Output,
    task_name,
)
from dropwire.functions.platform.tasks import NotYet, PermanentTaskError, Refused
from dropwire.storage.records import Effects, NotificationRequest, TaskSpec, TransitionRequest

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
QUALITY_CHECK_FUNCTION = "evaluation-quality-check"
RUN_FUNCTION = "evaluation-run"
RETRY_FUNCTION = "evaluation-retry"
STEP_TIMEOUT_S = 900.0
STEP_MAX_ATTEMPTS = 3
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
DATASET_FORMATS = ("csv", "parquet", "xlsx")
# Quality issues named in a transition's metadata and a notification's body (the attached
# report has them all).
ISSUES_LISTED = 20

USE_CASE_KEY = re.compile(r"use-cases/(?P<uc>[^/]+)/use-case\.json")
CONFIG_KEY = re.compile(r"use-cases/(?P<uc>[^/]+)/config\.(yaml|yml|json)")
MODEL_KEY = re.compile(r"use-cases/(?P<uc>[^/]+)/models/(?P<model>[^/]+)/register\.json")
DATA_KEY = re.compile(r"use-cases/(?P<uc>[^/]+)/models/(?P<model>[^/]+)/(?P<role>dataset|predictions)\.(csv|parquet|xlsx)")
DATA_LAYOUT = "use-cases/<use case>/models/<model>/dataset|predictions.csv|.parquet|.xlsx"

# A new config may be uploaded in these use-case states; a dataset only once one is valid.
CONFIG_ACCEPTED_IN = (U.AWAITING_CONFIG, U.CONFIG_INVALID, U.CONFIG_VALIDATED)
DATASET_NEEDS_USE_CASE_IN = (U.CONFIG_VALIDATED, U.QUALITY_CHECK_RUNNING, U.QUALITY_CHECK_PASSED, U.QUALITY_CHECK_FAILED)
# States a use case passes through on its way there: an upload that finds one waits (files
# dropped together arrive in any order), where any other state refuses it.
USE_CASE_ON_ITS_WAY = (U.TEMPLATE_GENERATION, U.TEMPLATE_SENT, U.CONFIG_RECEIVED, U.CONFIG_VALIDATION_RUNNING)
DATASET_ACCEPTED_IN = (M.REGISTERED, M.AWAITING_DATA_FIX, M.EVALUATION_COMPLETED, M.EVALUATION_FAILED)

T = TypeVar("T")


class UseCaseFile(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    team_email: str


class ModelFile(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    version: str


class ModelRef(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A model named in an HTTP body: use case id and the model's folder name."""

    use_case: str
    model: str


def register(functions: FunctionRegistry) -> None:
    functions.function(USE_CASE_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix="/use-case.json")],
                       outputs=[Output(bucket=BUCKET, prefix=TEMPLATES_PREFIX)], timeout_seconds=60)(use_case_uploaded)
    functions.function(CONFIG_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix=f"/config{s}")
                                            for s in CONFIG_SUFFIXES],
                       outputs=[Output(bucket=BUCKET, prefix=CONFIGS_PREFIX)], timeout_seconds=60)(config_uploaded)
    functions.function(MODEL_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix="/register.json")],
                       timeout_seconds=60)(model_registered)
    functions.function(DATASET_FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix=f"/{role}.{ext}")
                                             for role in ("dataset", "predictions") for ext in DATASET_FORMATS],
                       timeout_seconds=60)(dataset_uploaded)
    functions.function(QUALITY_CHECK_FUNCTION, on=[OnQueue()], outputs=[Output(bucket=BUCKET, prefix=RESULTS_PREFIX)],
                       timeout_seconds=STEP_TIMEOUT_S, max_attempts=STEP_MAX_ATTEMPTS)(run_quality_check)
    functions.function(RUN_FUNCTION, on=[OnQueue()], outputs=[Output(bucket=BUCKET, prefix=RESULTS_PREFIX)],
                       timeout_seconds=STEP_TIMEOUT_S, max_attempts=STEP_MAX_ATTEMPTS)(run_evaluation)
    functions.function(RETRY_FUNCTION, on=[OnHttp()], timeout_seconds=60)(retry_evaluation)


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
        raise Refused(f"{event.key}: use case {use_case!r} already exists (state {state}); "
                      "a use case is registered once")
    template = context.outputs.write_bytes(BUCKET, f"{TEMPLATES_PREFIX}{use_case}/config-template.yaml",
                                           render_template(use_case).encode())
    metadata = _file(event) | {"name": about.name, "team_email": about.team_email}
    context.state.create("use_case", use_case, reason=f"{posixpath.basename(event.key)} uploaded", metadata=metadata)
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
                              missing=f"upload {SOURCE_PREFIX}{use_case}/use-case.json first",
                              otherwise="its config is fixed once its models' data is checked against it; for another "
                                        "config, register a new use case under a new folder",
                              waits_in=USE_CASE_ON_ITS_WAY)
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
    if config is not None and config.use_case != use_case:
        problems.append(ConfigProblem("use_case", f"is {config.use_case!r}, but the file was uploaded for use "
                                                  f"case {use_case!r}"))
    context.state.transition("use_case", use_case, trigger="config_uploaded", expected_version=version,
                             reason=f"{posixpath.basename(event.key)} uploaded (was {state})", metadata=_file(event))
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
    context.state.transition("use_case", use_case, trigger="config_valid", reason=f"{posixpath.basename(event.key)} is valid",
                             metadata=_file(event) | {"config_hash": digest, "fields": [f.name for f in config.fields]})
    return {"use_case": use_case, "valid": True, "config_hash": digest}


def model_registered(event: ObjectEvent, context: HandlerContext) -> dict:
    parts = _parse_key(event, MODEL_KEY, "use-cases/<use case>/models/<model>/register.json")
    use_case, model_id = parts["uc"], f"{parts['uc']}/{parts['model']}"
    about = _decode(context, event, ModelFile)
    try:
        context.state.current("use_case", use_case)
    except NotFound:
        raise NotYet(f"{event.key}: use case {use_case!r} does not exist; upload "
                     f"{SOURCE_PREFIX}{use_case}/use-case.json first", kind="use_case", entity_id=use_case) from None
    state = _state_or_none(context, "model", model_id)
    if state is not None:
        raise Refused(f"{event.key}: model {model_id!r} is already registered (state {state}); "
                      "register a new version under a new model folder")
    context.state.create("model", model_id, reason=f"{posixpath.basename(event.key)} uploaded",
                         metadata=_file(event) | {"use_case": use_case, "name": about.name, "version": about.version})
    return {"model": model_id, "name": about.name, "version": about.version}


def dataset_uploaded(event: ObjectEvent, context: HandlerContext) -> dict:
    """A model's data file arrived: once the model has every file its use case's layout needs,
    record which files are checked and queue the quality check."""
    parts = _parse_key(event, DATA_KEY, DATA_LAYOUT)
    use_case, folder_name, role = parts["uc"], parts["model"], parts["role"]
    model_id = f"{use_case}/{folder_name}"
    _require(context, "use_case", use_case, DATASET_NEEDS_USE_CASE_IN, event,
             missing=f"upload {SOURCE_PREFIX}{use_case}/use-case.json first, then its config and the model's "
                     "register.json, then the dataset again",
             otherwise=f"upload a valid {SOURCE_PREFIX}{use_case}/config.yaml, then the dataset again",
             waits_in=(U.AWAITING_CONFIG, *USE_CASE_ON_ITS_WAY),
             waiting=f"upload {SOURCE_PREFIX}{use_case}/use-case.json and a valid config.yaml first")
    config = _valid_config(context, use_case)
    if role == "predictions" and config.layout == "single":
        raise Refused(f"{event.key}: use case {use_case!r} has layout single: upload one file, dataset.<ext>, "
                      "with truth and prediction columns (predictions.<ext> is for layout separate)")
    covering = _check_covering(context, model_id, event)
    if covering is not None:
        # Another upload's check started after this file was written, so it reads this content.
        return {"model": model_id, "covered_by_check_started_at": covering}
    _, version = _require(context, "model", model_id, DATASET_ACCEPTED_IN, event,
                          missing=f"upload {SOURCE_PREFIX}{use_case}/models/{folder_name}/register.json first, "
                                  "then the dataset again",
                          otherwise="upload again when the running check has finished (and the evaluation it starts)")
    files = {role: event.key}
    if config.layout == "separate":
        other = "predictions" if role == "dataset" else "dataset"
        found = _newest_data_file(context, event.bucket, f"{SOURCE_PREFIX}{use_case}/models/{folder_name}/{other}")
        if found is None:
            return {"model": model_id, "waiting_for": f"{SOURCE_PREFIX}{use_case}/models/{folder_name}/{other}."
                                                      f"{'|'.join(DATASET_FORMATS)}"}
        files[other] = found
    team = _created_with(context, "use_case", use_case, UseCaseFile)
    context.state.transition("model", model_id, trigger="dataset_uploaded", expected_version=version,
                             reason=f"{posixpath.basename(event.key)} uploaded", metadata=_file(event) | {"files": files})
    context.state.enqueue(_step(QUALITY_CHECK_FUNCTION, Invocation(function=QUALITY_CHECK_FUNCTION, source="upload",
                                                                   event=event),
                                model_id, "quality_check_started", team.team_email,
                                idempotency_key=f"{QUALITY_CHECK_FUNCTION}:{event.bucket}/{event.key}@{event.version}"))
    return {"model": model_id, "files": files}


def run_quality_check(event: ObjectEvent, context: HandlerContext) -> dict:
    """Check the files recorded by the model's last dataset upload; a pass queues the evaluation."""
    step = _start_step(event, context, (M.QUALITY_CHECK_PENDING, M.RETRYING), "quality_check_started",
                       QUALITY_CHECK_FUNCTION)
    model_id, team, model, report, report_url, checked = (step.model_id, step.team, step.model, step.report,
                                                          step.report_url, step.checked)
    if step.dataset is None or not report.passed:
        context.state.transition("model", model_id, trigger="quality_check_failed",
                                 reason=f"{len(report.errors)} quality error(s)", metadata=checked)
        context.state.transition("model", model_id, trigger="await_data_fix", reason="waiting for a fixed dataset",
                                 metadata=_file(event))
        context.state.notify(
            "qc_failed", f"The dataset of {model.name} {model.version} failed the quality check",
            f"{', '.join(checked['files'].values())}: {len(report.errors)} error(s):\n"
            + "\n".join(f"- {i['message']}" for i in checked["issues"])
            + "\n\nFix them and upload the dataset again. Every issue is in the attached report.",
            recipients=[team.team_email], attachments=[report_url], entity_kind="model", entity_id=model_id,
            metadata={k: v for k, v in checked.items() if k != "issues"})
        return {"model": model_id, "passed": False, "errors": len(report.errors)}

    context.state.transition("model", model_id, trigger="quality_check_passed",
                             reason=f"{report.rows_checked} rows passed", metadata=checked)
    context.state.transition("model", model_id, trigger="evaluation_queued", reason="quality check passed",
                             metadata=_file(event))
    context.state.notify(
        "qc_passed", f"The dataset of {model.name} {model.version} passed the quality check",
        f"{', '.join(checked['files'].values())}: {report.rows_checked} rows checked, {len(report.warnings)} "
        "warning(s); the evaluation is queued.",
        recipients=[team.team_email], attachments=[report_url], entity_kind="model", entity_id=model_id,
        metadata=checked)
    context.state.enqueue(_step(RUN_FUNCTION, Invocation(function=RUN_FUNCTION, source="upload", event=event),
                                model_id, "evaluation_started", team.team_email))
    return {"model": model_id, "passed": True, "rows": report.rows_checked}


def run_evaluation(event: ObjectEvent | HttpEvent, context: HandlerContext) -> dict:
    """Evaluate the model's checked files: Parquet results, the Excel report, an MLflow run."""
    # Checked again: a retry may come after a check that crashed, and what is evaluated must pass.
    step = _start_step(event, context, (M.EVALUATION_QUEUED, M.RETRYING), "evaluation_started", RUN_FUNCTION)
    use_case, folder_name, model_id, team, model, config = (step.use_case, step.folder_name, step.model_id, step.team,
                                                            step.model, step.config)
    dataset, report, report_url, checked = step.dataset, step.report, step.report_url, step.checked
    if dataset is None or not report.passed:
        context.state.transition("model", model_id, trigger="evaluation_failed",
                                 reason=f"the data no longer passes the quality check ({len(report.errors)} error(s)); "
                                        "upload a fixed dataset", metadata=checked)
        context.state.notify(
            "evaluation_failed", f"Evaluation of {model.name} {model.version} failed",
            "The data does not pass the quality check:\n" + "\n".join(f"- {i['message']}" for i in checked["issues"])
            + "\n\nUpload a fixed dataset; the attached report has every issue.",
            recipients=[team.team_email], attachments=[report_url], entity_kind="model", entity_id=model_id,
            metadata={k: v for k, v in checked.items() if k != "issues"})
        return {"model": model_id, "passed": False, "errors": len(report.errors)}
    folder = results_prefix(use_case, folder_name, model.version)
    evaluation = evaluate_dataset(dataset)
    digest = config_hash(config)
    written = _written_through(context, folder, lambda root: msgspec.to_builtins(write_results(evaluation, root)))
    excel = ReportContext(use_case=use_case, model_name=model.name, model_version=model.version, config_hash=digest,
                          files=[context.objects.url(BUCKET, key) for key in checked["files"].values()],
                          evaluated_at=datetime.now(UTC).isoformat())
    report_xlsx = _written_through(context, folder, lambda root: {
        "report": write_excel_report(evaluation, excel, f"{root}report.xlsx")})["report"]
    metrics = evaluation.metrics
    run_id = log_evaluation_run(
        TrackingStore(tracking_uri=context.mlflow_tracking_uri, artifact_location=context.mlflow_artifact_location),
        f"dropwire-evaluation/{use_case}", use_case=use_case, model_name=model.name, model_version=model.version,
        config_hash=digest, metrics=metrics, report_url=report_xlsx, storage_options=context.objects.storage_options)
    summary = {
        "records": metrics.records, "records_all_matched": metrics.records_all_matched,
        "micro": msgspec.to_builtins(metrics.micro), "macro": msgspec.to_builtins(metrics.macro),
        "field_f1": {m.field: m.f1 for m in metrics.fields},
    }
    context.state.transition("model", model_id, trigger="evaluation_succeeded",
                             reason=f"{metrics.records} records evaluated",
                             metadata=_event_note(event) | summary | {
                                 "files": checked["files"], "config_hash": digest, "report": report_xlsx,
                                 "results": written, "mlflow_run_id": run_id, "quality_report": report_url})
    context.state.notify(
        "evaluation_completed", f"Evaluation of {model.name} {model.version} is done",
        f"{metrics.records} records; micro F1 {metrics.micro.f1:.3f}, accuracy {metrics.micro.accuracy:.3f}; "
        f"macro F1 {metrics.macro.f1:.3f}; all fields right in {metrics.records_all_matched:.1%} of records. "
        "The report is attached.",
        recipients=[team.team_email], attachments=[report_xlsx], entity_kind="model", entity_id=model_id,
        metadata={"mlflow_run_id": run_id, "micro_f1": metrics.micro.f1})
    return {"model": model_id, "mlflow_run_id": run_id, "report": report_xlsx, "micro_f1": metrics.micro.f1}


def retry_evaluation(event: HttpEvent, context: HandlerContext) -> dict:
    """HTTP: queue the evaluation of a model in EVALUATION_FAILED again (body: use_case, model)."""
    try:
        ref = msgspec.convert(event.body, ModelRef)
    except msgspec.ValidationError as exc:
        raise Refused(f"{RETRY_FUNCTION} takes a JSON body {{\"use_case\": ..., \"model\": ...}}: {exc}") from None
    model_id = f"{ref.use_case}/{ref.model}"
    # Asked by a person: a model that is not there or not failed is their mistake, refused.
    _, version = _require_model(context, model_id, (M.EVALUATION_FAILED,), RETRY_FUNCTION, refusal=Refused)
    team = _created_with(context, "use_case", ref.use_case, UseCaseFile)
    context.state.transition("model", model_id, trigger="retry", expected_version=version,
                             reason="retry asked over HTTP", metadata={"requested_at": event.received_at})
    context.state.enqueue(_step(RUN_FUNCTION, Invocation(function=RUN_FUNCTION, source="http", event=event),
                                model_id, "evaluation_started", team.team_email))
    return {"model": model_id, "state": M.EVALUATION_QUEUED}


def _step(function: str, invocation: Invocation, model_id: str, start_trigger: str, team_email: str,
          idempotency_key: str | None = None) -> TaskSpec:
    """A queued step of a model's evaluation. A crashed attempt that will be retried records
    the step's start and the crash (-> RETRYING); the last one records the start and the
    failure (-> EVALUATION_FAILED) and tells the team. The store adds the error to both."""

    def moves(*triggers: str, reason: str) -> list[TransitionRequest]:
        return [TransitionRequest(kind="model", entity_id=model_id, trigger=t, triggered_by=f"queue:{function}",
                                  reason=reason) for t in triggers]

    return TaskSpec(
        name=task_name(function),
        args=invocation, max_attempts=STEP_MAX_ATTEMPTS, idempotency_key=idempotency_key,
        on_retry=Effects(transitions=moves(start_trigger, "attempt_failed", reason=f"{function} crashed; retried")),
        on_dead=Effects(
            transitions=moves(start_trigger, "evaluation_failed",
                              reason=f"{function} crashed on all {STEP_MAX_ATTEMPTS} attempts"),
            notifications=[NotificationRequest(
                kind="evaluation_failed", subject=f"Evaluation of {model_id} failed",
                body=f"{function} crashed on all {STEP_MAX_ATTEMPTS} attempts (not a problem in the data). "
                     f"Retry it with POST /api/use-cases/{model_id.replace('/', '/models/', 1)}/retry once the cause "
                     "is fixed.",
                recipients=[team_email], entity_kind="model", entity_id=model_id)]))


@dataclass(frozen=True)
class _Step:
    """A started step of a model's evaluation, with its files read and quality-checked."""

    use_case: str
    folder_name: str
    model_id: str
    team: UseCaseFile
    model: ModelFile
    config: EvaluationConfig
    dataset: Dataset | None  # None: the files could not be read (the report says why)
    report: QualityReport
    report_url: str
    checked: dict[str, Any]  # what the transitions record about the check


def _start_step(event: ObjectEvent | HttpEvent, context: HandlerContext, states: tuple[str, ...], trigger: str,
                function: str) -> _Step:
    """Record the step's start (from one of `states`), then read and check the model's files."""
    use_case, folder_name, model_id = _model_of(event, context)
    _, version = _require_model(context, model_id, states, function)
    model = _created_with(context, "model", model_id, ModelFile)
    context.state.transition("model", model_id, trigger=trigger, expected_version=version,
                             reason=f"attempt {context.attempt} of {context.max_attempts}", metadata=_event_note(event))
    config = _valid_config(context, use_case)
    dataset, report, report_url, checked = _load_and_check(context, config, model_id, folder_name, model.version)
    return _Step(use_case, folder_name, model_id, _created_with(context, "use_case", use_case, UseCaseFile), model,
                 config, dataset, report, report_url, checked)


def _load_and_check(context: HandlerContext, config: EvaluationConfig, model_id: str, folder_name: str,
                    version: str) -> tuple[Dataset | None, QualityReport, str, dict[str, Any]]:
    """Read the model's checked files and run the quality check; the report is written to the
    results folder. Returns the dataset (None if unreadable), the report, its URL and what the
    transitions record about it."""
    files = _checked_files(context, model_id)
    urls = {role: context.objects.url(BUCKET, key) for role, key in files.items()}
    options = context.objects.storage_options
    located = (DatasetFiles(dataset=urls.get("dataset"), storage_options=options) if config.layout == "single"
               else DatasetFiles(truth=urls.get("dataset"), predictions=urls.get("predictions"), storage_options=options))
    try:
        dataset = load_dataset(config, located)
    except DatasetUnreadable as exc:
        dataset, report = None, QualityReport(passed=False, rows_checked=0, issues=exc.issues, files=[])
    else:
        report = check_dataset(dataset)
    folder = results_prefix(model_id.split("/", 1)[0], folder_name, version)
    report_url = context.outputs.write_bytes(BUCKET, f"{folder}quality-report.json", msgspec.json.encode(report))
    issues = [{"file": i.file, "column": i.column, "rows": i.rows, "row_count": i.row_count, "message": i.message}
              for i in report.errors[:ISSUES_LISTED]]
    checked = {"files": files, "rows_checked": report.rows_checked, "errors": len(report.errors),
               "warnings": len(report.warnings), "quality_report": report_url, "issues": issues}
    return dataset, report, report_url, checked


def _last_upload(context: HandlerContext, model_id: str) -> tuple[datetime, dict[str, str]] | None:
    """When the model's last dataset upload was recorded, and its {role: key} files."""
    rows = context.state.query("SELECT epoch(happened_at), metadata FROM state_history WHERE kind = 'model' AND "
                               "entity_id = ? AND \"trigger\" = 'dataset_uploaded' ORDER BY seq DESC LIMIT 1",
                               [model_id])
    if not rows:
        return None
    return datetime.fromtimestamp(rows[0][0], UTC), msgspec.json.decode(rows[0][1])["files"]


def _checked_files(context: HandlerContext, model_id: str) -> dict[str, str]:
    """{role: key} of the files the model's last dataset upload recorded."""
    upload = _last_upload(context, model_id)
    if upload is None:
        raise PermanentTaskError(f"model {model_id!r} has no dataset upload on record; upload its dataset")
    return upload[1]


def _check_covering(context: HandlerContext, model_id: str, event: ObjectEvent) -> str | None:
    """When the model's last check was started for this key after the event's object was
    written (it reads the object then), that check's start time; else None."""
    try:
        written = datetime.fromisoformat(event.event_time)
    except ValueError:
        return None
    upload = _last_upload(context, model_id)
    if upload is None or event.key not in upload[1].values():
        return None
    return upload[0].isoformat() if upload[0] >= written else None


def _newest_data_file(context: HandlerContext, bucket: str, stem: str) -> str | None:
    """The most recently written of <stem>.csv / .parquet / .xlsx, or None."""
    found = [(when, f"{stem}.{ext}") for ext in DATASET_FORMATS
             if (when := context.objects.modified(bucket, f"{stem}.{ext}")) is not None]
    return max(found)[1] if found else None


def _valid_config(context: HandlerContext, use_case: str) -> EvaluationConfig:
    """The use case's last valid config (written by config_uploaded)."""
    with context.objects.open(BUCKET, config_key(use_case)) as stream:
        return load_config(stream.read(), source=context.objects.url(BUCKET, config_key(use_case)))


def _model_of(event: ObjectEvent | HttpEvent, context: HandlerContext) -> tuple[str, str, str]:
    """(use case, model folder, model id) of a step's event: the upload, or a retry's body."""
    if isinstance(event, ObjectEvent):
        parts = _parse_key(event, DATA_KEY, DATA_LAYOUT)
        use_case, folder_name = parts["uc"], parts["model"]
    else:
        ref = msgspec.convert(event.body, ModelRef)
        use_case, folder_name = ref.use_case, ref.model
    return use_case, folder_name, f"{use_case}/{folder_name}"


def _require_model(context: HandlerContext, model_id: str, states: tuple[str, ...], step: str,
                   refusal: type[PermanentTaskError | Refused] = PermanentTaskError) -> tuple[str, int]:
    try:
        state, version = context.state.current("model", model_id)
    except NotFound:
        raise refusal(f"{step}: model {model_id!r} does not exist") from None
    if state not in states:
        hint = (f"; retry it with POST /api/use-cases/{model_id.replace('/', '/models/', 1)}/retry"
                if state == M.EVALUATION_FAILED and step != RETRY_FUNCTION else "")
        raise refusal(f"{step}: model {model_id!r} is {state}; this step runs only in {', '.join(states)}{hint}")
    return state, version


def _event_note(event: ObjectEvent | HttpEvent) -> dict[str, Any]:
    return _file(event) if isinstance(event, ObjectEvent) else {"requested_at": event.received_at}


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
        raise Refused(f"{event.bucket}/{event.key} does not follow the bucket layout: expected {layout}")
    return match.groupdict()


def _decode(context: HandlerContext, event: ObjectEvent, type_: type[T]) -> T:
    with context.objects.open(event.bucket, event.key) as stream:
        data = stream.read()
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.DecodeError as exc:
        fields = ", ".join(type_.__struct_fields__)  # type: ignore[attr-defined]
        raise Refused(f"{event.bucket}/{event.key} is not valid: {exc} (expected a JSON object with {fields})") from None


def _require(context: HandlerContext, kind: str, entity_id: str, states: tuple[str, ...], event: ObjectEvent, *,
             missing: str, otherwise: str, waits_in: tuple[str, ...] = (), waiting: str | None = None) -> tuple[str, int]:
    """(state, version) of the entity when it is in one of `states`. Missing, or in one of
    `waits_in` (on its way there), the upload waits for it (NotYet: `missing`, or `waiting`);
    in any other state it is refused with the next step its state calls for (`otherwise` where
    no state shared by every kind says more). Both name the file, the entity and what to do."""
    try:
        state, version = context.state.current(kind, entity_id)
    except NotFound:
        raise NotYet(f"{event.key}: {kind} {entity_id!r} does not exist; {missing}",
                     kind=kind, entity_id=entity_id) from None
    if state not in states:
        message = f"{event.key}: {kind} {entity_id!r} is {state}, and this upload is taken only in {', '.join(states)}"
        if state in waits_in:
            raise NotYet(f"{message}; {waiting or missing}", kind=kind, entity_id=entity_id, version=version)
        if state == "SUSPENDED":
            step = f"resume it first (dropwire workflow resume {kind} {entity_id}), then upload the file again"
        elif state in ("ARCHIVED", "CANCELLED"):
            step = f"a {kind} {state.lower()} takes no more uploads"
        else:
            step = otherwise
        raise Refused(f"{message}; {step}")
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

"""The evaluation workflow over HTTP (seed 1's /api): create use cases and register models,
upload configs, datasets and predictions, read states with their history, quality issues,
results and the Excel report, and retry a failed evaluation.

Every write is the file a team would drop (``functions/evaluation/handlers.py`` lists them),
written into the bucket: an HTTP upload fires exactly the handlers a dropped file fires and
meets the same rules. ``?wait=S`` waits for those handlers and answers with their outcome; a
refusal comes back with the handler's own message, the one ``dropwire dlq list`` shows.
Reads come from the committed state and the handlers' outputs; nothing here writes state."""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import IO, Annotated, Any

import msgspec
import polars as pl
from litestar import Request, Response, Router, get, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import UploadFile
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from dropwire.functions.evaluation.core import FieldMetrics, MacroMetrics, MicroMetrics, QualityIssue, QualityReport, SourceFile
from dropwire.functions.evaluation.handlers import (
    CONFIG_SUFFIXES,
    DATASET_FORMATS,
    RETRY_FUNCTION,
    SOURCE_PREFIX,
    ModelFile,
    ModelRef,
    UseCaseFile,
)
from dropwire.functions.evaluation.states import ModelEvaluationState as M
from dropwire.functions.kit.errors import Conflict, DropwireError, NotFound
from dropwire.functions.kit.openapi import error_responses, upload_operation
from dropwire.functions.platform.api_ports import GATEWAY_ERRORS, ApiPorts, HandlerRefused
from dropwire.storage.records import EntitySnapshot, TransitionRecord

# A write waits for its handlers at most this long; past it the answer is 202 with where they are.
MAX_WAIT_S = 60.0
POLL_S = 0.05
FINISHED = ("succeeded", "refused", "dead")
# A handler waiting for another file will not finish while a request waits: answered as it stands.
SETTLED = (*FINISHED, "waiting")
MAX_ID = 100
# Ids become folder names in the bucket: no "/", no "." or ".." segments, no hidden names
# (the folder source ignores those).
ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_ID - 1}}}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
CONFIG_FORMATS = tuple(s.lstrip(".") for s in CONFIG_SUFFIXES)
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PARQUET = "application/vnd.apache.parquet"
# Each file an evaluation writes, by the name the API serves it under.
RESULT_FILES = ("per_record", "per_field", "mismatches")
# What the routes answer besides their result: a read by id, a write, an upload.
READ = error_responses(400, 404, *GATEWAY_ERRORS)
WRITE = error_responses(400, 404, 409, 413, *GATEWAY_ERRORS)
UPLOAD = error_responses(400, 409, 413, 415, *GATEWAY_ERRORS)

Wait = Annotated[float, QueryParameter(ge=0, le=MAX_WAIT_S, description="seconds to wait for the handlers this write fires")]
Format = Annotated[str | None, QueryParameter(name="format", description="the format of a raw (not multipart) body")]


class InvalidId(DropwireError):
    code = "invalid_id"


class UnsupportedFormat(DropwireError):
    http_status = 415
    code = "unsupported_format"


class NotEvaluated(NotFound):
    code = "not_evaluated"


class NewUseCase(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    team_email: str
    #: Defaults to a slug of the name.
    id: str | None = None


class NewModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version: str
    name: str | None = None
    #: The seed's spelling of `name`.
    model_name: str | None = None
    #: Defaults to a slug of "<name>-<version>".
    id: str | None = None


class HandlerRun(msgspec.Struct, kw_only=True):
    """A handler a write fired, as far as it got while the request waited."""

    function: str
    task_id: int
    #: queued | running | retrying | waiting (for a file not there yet; `error` says which) |
    #: succeeded | refused (the user's mistake; `error` says why) | dead
    status: str
    status_url: str
    result: Any = None
    error: str | None = None


class Accepted(msgspec.Struct, kw_only=True):
    """The answer to every write: 202 while its handlers have not run (or were not waited
    for), 200 once they all succeeded."""

    id: str
    #: The entity's state when answering; None while the handler that creates it has not run.
    state: str | None
    state_url: str
    #: The object written (none for a retry, which writes nothing).
    key: str | None = None
    url: str | None = None
    handlers: list[HandlerRun] = []


class ModelSummary(msgspec.Struct, kw_only=True):
    id: str
    name: str
    version: str
    state: str
    url: str


class UseCaseSummary(msgspec.Struct, kw_only=True):
    id: str
    name: str
    team_email: str
    state: str
    models: int
    url: str


class ConfigStatus(msgspec.Struct, kw_only=True):
    #: none | validating | valid | invalid: where the last config upload stands
    status: str
    file: str | None = None
    config_hash: str | None = None
    problems: list[dict[str, str]] = []


class UseCaseView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    team_email: str
    state: str
    #: Where to download the config template written for the team.
    template: str | None
    config: ConfigStatus
    models: list[ModelSummary]
    state_url: str


class QualitySummary(msgspec.Struct, kw_only=True):
    passed: bool
    #: The keys of the files checked, by role (dataset; predictions for layout separate).
    files: dict[str, str]
    rows_checked: int
    errors: int
    warnings: int
    #: Where to download the quality report (JSON).
    report: str


class ModelView(msgspec.Struct, kw_only=True):
    id: str
    use_case: str
    name: str
    version: str
    state: str
    #: The keys of the files of the last complete dataset upload, by role.
    files: dict[str, str]
    #: The last quality check, if any.
    quality: QualitySummary | None
    evaluated: bool
    links: dict[str, str]


class QualityIssues(msgspec.Struct, kw_only=True):
    model: str
    use_case: str
    state: str
    #: The keys of the files checked, by role, and how each was read.
    files: dict[str, str]
    sources: list[SourceFile]
    checked_at: float
    passed: bool
    rows_checked: int
    errors: list[QualityIssue]
    warnings: list[QualityIssue]
    #: Where to download the quality report (JSON).
    report: str


class Results(msgspec.Struct, kw_only=True):
    model: str
    use_case: str
    name: str
    version: str
    state: str
    #: The keys of the files evaluated, by role.
    files: dict[str, str]
    evaluated_at: float
    records: int
    records_all_matched: float
    micro: MicroMetrics
    macro: MacroMetrics
    fields: list[FieldMetrics]
    config_hash: str
    mlflow_run_id: str | None
    #: Where to download the Excel report.
    report: str
    #: Where to download each Parquet result, by name (per_record, per_field, mismatches).
    results: dict[str, str]


def build_router(ports: ApiPorts) -> Router:
    """The /api router over the bucket, the state and invoke in `ports`. Store reads and
    object writes run in worker threads; waits are awaited, so a waiting request holds no thread."""
    api = _Evaluation(ports)

    @post("/use-cases", responses=error_responses(400, 409, 413, *GATEWAY_ERRORS))
    async def create_use_case(data: JSONBody[NewUseCase], wait: Wait = 0.0) -> Response[Accepted]:
        use_case, content = await sync_to_thread(api.new_use_case, data)
        return await api.write("use_case", use_case, use_case, f"{SOURCE_PREFIX}{use_case}/use-case.json", content, wait)

    @get("/use-cases", sync_to_thread=True, responses=error_responses(*GATEWAY_ERRORS))
    def list_use_cases() -> list[UseCaseSummary]:
        return api.use_cases()

    @get("/use-cases/{use_case:str}", sync_to_thread=True, responses=READ)
    def get_use_case(use_case: FromPath[str], request: Request) -> UseCaseView:
        return api.use_case(_check_id(use_case, "use case"), _base(request))

    @get("/use-cases/{use_case:str}/template", sync_to_thread=True, responses=READ, media_type="application/yaml",
         response_description="the config template written for the team, to fill in and upload")
    def template(use_case: FromPath[str]) -> Stream:
        use_case = _check_id(use_case, "use case")
        return _download(api.open_url(api.template(use_case)), "application/yaml", f"{use_case}-config-template.yaml")

    @get("/use-cases/{use_case:str}/state", sync_to_thread=True, responses=READ)
    def use_case_state(use_case: FromPath[str]) -> EntitySnapshot:
        use_case = _check_id(use_case, "use case")
        api.require_use_case(use_case)
        return ports.store.states.snapshot("use_case", use_case)

    @post("/use-cases/{use_case:str}/upload-config", responses=UPLOAD,
          operation_class=upload_operation("A multipart upload (field 'file', its filename's suffix giving the format) "
                                           "or a raw body with ?format=yaml|yml|json."))
    async def upload_config(use_case: FromPath[str], request: Request, wait: Wait = 0.0,
                            format_: Format = None) -> Response[Accepted]:
        use_case = _check_id(use_case, "use case")
        data, suffix = await _read_upload(request, format_, CONFIG_FORMATS, "a config")
        return await api.write("use_case", use_case, use_case, f"{SOURCE_PREFIX}{use_case}/config.{suffix}", data, wait)

    @post("/use-cases/{use_case:str}/models", responses=WRITE)
    async def register_model(use_case: FromPath[str], data: JSONBody[NewModel], wait: Wait = 0.0) -> Response[Accepted]:
        use_case = _check_id(use_case, "use case")
        model, content = await sync_to_thread(api.new_model, use_case, data)
        return await api.write("model", f"{use_case}/{model}", model, f"{_model_folder(use_case, model)}/register.json",
                               content, wait)

    @get("/use-cases/{use_case:str}/models", sync_to_thread=True, responses=READ)
    def list_models(use_case: FromPath[str]) -> list[ModelSummary]:
        use_case = _check_id(use_case, "use case")
        api.require_use_case(use_case)
        return api.models(use_case)

    @get("/use-cases/{use_case:str}/models/{model:str}", sync_to_thread=True, responses=READ)
    def get_model(use_case: FromPath[str], model: FromPath[str], request: Request) -> ModelView:
        return api.model(_check_id(use_case, "use case"), _check_id(model, "model"), _base(request))

    @get("/use-cases/{use_case:str}/models/{model:str}/state", sync_to_thread=True, responses=READ)
    def model_state(use_case: FromPath[str], model: FromPath[str]) -> EntitySnapshot:
        use_case, model = _check_id(use_case, "use case"), _check_id(model, "model")
        api.require_model(use_case, model)
        return ports.store.states.snapshot("model", f"{use_case}/{model}")

    async def upload_data(use_case: str, model: str, request: Request, wait: float, format_: str | None,
                          file: str) -> Response[Accepted]:
        use_case, model = _check_id(use_case, "use case"), _check_id(model, "model")
        data, suffix = await _read_upload(request, format_, DATASET_FORMATS, f"a {file}")
        # No check that the model exists: that is the handler's rule, and its refusal is the answer.
        return await api.write("model", f"{use_case}/{model}", model, f"{_model_folder(use_case, model)}/{file}.{suffix}",
                               data, wait)

    data_upload = upload_operation("A multipart upload (field 'file', its filename's suffix giving the format) or a "
                                   "raw body with ?format=csv|parquet|xlsx.")

    @post("/use-cases/{use_case:str}/models/{model:str}/upload-dataset", operation_class=data_upload, responses=UPLOAD)
    async def upload_dataset(use_case: FromPath[str], model: FromPath[str], request: Request, wait: Wait = 0.0,
                             format_: Format = None) -> Response[Accepted]:
        return await upload_data(use_case, model, request, wait, format_, "dataset")

    @post("/use-cases/{use_case:str}/models/{model:str}/upload-predictions", operation_class=data_upload,
          responses=UPLOAD)
    async def upload_predictions(use_case: FromPath[str], model: FromPath[str], request: Request, wait: Wait = 0.0,
                                 format_: Format = None) -> Response[Accepted]:
        return await upload_data(use_case, model, request, wait, format_, "predictions")

    @get("/use-cases/{use_case:str}/models/{model:str}/quality-issues", sync_to_thread=True, responses=READ)
    def quality_issues(use_case: FromPath[str], model: FromPath[str], request: Request) -> QualityIssues:
        return api.quality_issues(_check_id(use_case, "use case"), _check_id(model, "model"), _base(request))

    @get("/use-cases/{use_case:str}/models/{model:str}/quality-report", sync_to_thread=True, responses=READ,
         media_type="application/json", response_description="the last quality check's report")
    def quality_report(use_case: FromPath[str], model: FromPath[str]) -> Stream:
        use_case, model = _check_id(use_case, "use case"), _check_id(model, "model")
        url = api.last_check(use_case, model)[1].metadata["quality_report"]
        return _download(api.open_url(url), "application/json", f"{use_case}-{model}-quality-report.json")

    @get("/use-cases/{use_case:str}/models/{model:str}/results", sync_to_thread=True, responses=READ)
    def results(use_case: FromPath[str], model: FromPath[str], request: Request) -> Results:
        return api.results(_check_id(use_case, "use case"), _check_id(model, "model"), _base(request))

    @get("/use-cases/{use_case:str}/models/{model:str}/results/{name:str}", sync_to_thread=True, responses=READ,
         media_type=PARQUET, response_description=f"one Parquet result of the last evaluation: {', '.join(RESULT_FILES)}")
    def result_file(use_case: FromPath[str], model: FromPath[str], name: FromPath[str]) -> Stream:
        use_case, model = _check_id(use_case, "use case"), _check_id(model, "model")
        files = api.evaluation(use_case, model)[1].metadata["results"]
        if name not in files:
            raise NotFound(f"no result {name!r}; the results are {', '.join(sorted(files))}", name=name)
        return _download(api.open_url(files[name]), PARQUET, f"{use_case}-{model}-{name}.parquet")

    @get("/use-cases/{use_case:str}/models/{model:str}/report", sync_to_thread=True, responses=READ, media_type=XLSX,
         response_description="the Excel report (Summary, Per field, Mismatches)")
    def report(use_case: FromPath[str], model: FromPath[str]) -> Stream:
        use_case, model = _check_id(use_case, "use case"), _check_id(model, "model")
        stream = api.open_url(api.evaluation(use_case, model)[1].metadata["report"])
        return _download(stream, XLSX, f"{use_case}-{model}-report.xlsx")

    @post("/use-cases/{use_case:str}/models/{model:str}/retry", responses=WRITE)
    async def retry(use_case: FromPath[str], model: FromPath[str], wait: Wait = 0.0) -> Response[Accepted]:
        use_case, model = _check_id(use_case, "use case"), _check_id(model, "model")
        task_id = await sync_to_thread(api.retry, use_case, model)
        runs = await api.follow(lambda: [(RETRY_FUNCTION, task_id)], wait)
        return await sync_to_thread(api.answer, "model", f"{use_case}/{model}", model, runs)

    return Router(path="/api", tags=["evaluation"], route_handlers=[
        create_use_case, list_use_cases, get_use_case, template, use_case_state, upload_config, register_model,
        list_models, get_model, model_state, upload_dataset, upload_predictions, quality_issues, quality_report, results,
        result_file, report, retry])


class _Evaluation:
    """What the routes do, over the ports: writes into the bucket, reads of committed state."""

    def __init__(self, ports: ApiPorts) -> None:
        self.ports = ports

    # ------------------------------------------------------------------ writes

    def new_use_case(self, data: NewUseCase) -> tuple[str, bytes]:
        """(id, use-case.json) of a use case to create, once its body and id are checked."""
        name, email = data.name.strip(), data.team_email.strip()
        if not name:
            raise DropwireError("name is empty; give the use case a name", field="name")
        if not EMAIL.fullmatch(email):
            raise DropwireError(f"team_email {email!r} is not an e-mail address (expected name@domain)", field="team_email")
        use_case = _check_id(data.id if data.id is not None else _slug(name), "use case", derived_from=data.id is None)
        if (state := self.state_of("use_case", use_case)) is not None:
            raise Conflict(f"use case {use_case!r} already exists (state {state})", use_case=use_case)
        return use_case, msgspec.json.encode(UseCaseFile(name=name, team_email=email))

    def new_model(self, use_case: str, data: NewModel) -> tuple[str, bytes]:
        """(id, register.json) of a model to register, once its body, id and use case are checked."""
        given = {n.strip() for n in (data.name, data.model_name) if n is not None} - {""}
        if len(given) != 1:
            raise DropwireError("give the model's name in 'name' (or the seed's 'model_name'), once"
                                + (f"; got two different names: {sorted(given)}" if given else ""), field="name")
        name, version = given.pop(), data.version.strip()
        if not version:
            raise DropwireError("version is empty; give the model's version", field="version")
        model = _check_id(data.id if data.id is not None else _slug(f"{name}-{version}"), "model",
                          derived_from=data.id is None)
        self.require_use_case(use_case)
        if (state := self.state_of("model", f"{use_case}/{model}")) is not None:
            raise Conflict(f"model {model!r} of use case {use_case!r} is already registered (state {state}); "
                           "register a new version under a new id", use_case=use_case, model=model)
        return model, msgspec.json.encode(ModelFile(name=name, version=version))

    def retry(self, use_case: str, model: str) -> int:
        """Invoke the retry handler (it decides whether the model may be retried); its task id."""
        self.require_model(use_case, model)
        return self.ports.invoke(RETRY_FUNCTION, ModelRef(use_case=use_case, model=model))

    async def write(self, kind: str, entity_id: str, shown_id: str, key: str, data: bytes,
                    wait: float) -> Response[Accepted]:
        """Put the object into the bucket, then (with `wait`) follow the handlers its event fires."""
        since = time.time()  # the receipts admitted from now on for this key are this write's
        url = await sync_to_thread(self.ports.objects.write_bytes, self.ports.bucket, key, data)
        runs = await self.follow(lambda: self._fired_by(key, since), wait) if wait else []
        return await sync_to_thread(self.answer, kind, entity_id, shown_id, runs, key=key, url=url)

    def _fired_by(self, key: str, since: float) -> list[tuple[str, int]]:
        """(function, task id) of the handlers fired by the key's events admitted since `since`."""
        return self.ports.store.query(
            'SELECT function, task_id FROM object_receipts WHERE bucket = ? AND "key" = ? AND epoch(received_at) >= ? '
            "ORDER BY received_at, function", [self.ports.bucket, key, since])

    async def follow(self, fired: Callable[[], list[tuple[str, int]]], wait: float) -> list[HandlerRun]:
        """The handler runs `fired` names, polled until all finished (or wait for another file) or
        `wait` seconds passed."""
        deadline = time.monotonic() + wait
        while True:
            runs = await sync_to_thread(self._runs, fired)
            if (runs and all(r.status in SETTLED for r in runs)) or time.monotonic() >= deadline:
                return runs
            await asyncio.sleep(POLL_S)

    def _runs(self, fired: Callable[[], list[tuple[str, int]]]) -> list[HandlerRun]:
        runs = []
        for function, task_id in fired():
            task = self.ports.store.queue.task(task_id)
            runs.append(HandlerRun(function=function, task_id=task_id, status=task.status, status_url=f"/tasks/{task_id}",
                                   result=task.result, error=task.last_error if task.status != "succeeded" else None))
        return runs

    def answer(self, kind: str, entity_id: str, shown_id: str, runs: list[HandlerRun], *, key: str | None = None,
               url: str | None = None) -> Response[Accepted]:
        for run in runs:
            if run.status in ("refused", "dead"):
                # A refusal is the user's to fix; only a real failure is in the dead letters.
                where = {"dead_letter": f"/dead-letters/{run.task_id}"} if run.status == "dead" else {}
                raise HandlerRefused(run.error or f"{run.function} failed", function=run.function, task_id=run.task_id,
                                     **where, **({"key": key} if key else {}))
        done = bool(runs) and all(r.status in FINISHED for r in runs)
        body = Accepted(id=shown_id, state=self.state_of(kind, entity_id), state_url=_state_url(kind, entity_id),
                        key=key, url=url, handlers=runs)
        return Response(body, status_code=200 if done else 202)

    # ------------------------------------------------------------------ reads

    def state_of(self, kind: str, entity_id: str) -> str | None:
        try:
            return self.ports.store.states.current(kind, entity_id)[0]
        except NotFound:
            return None

    def require_use_case(self, use_case: str) -> str:
        state = self.state_of("use_case", use_case)
        if state is None:
            raise NotFound(f"use case {use_case!r} does not exist; create it with POST /api/use-cases", use_case=use_case)
        return state

    def require_model(self, use_case: str, model: str) -> str:
        state = self.state_of("model", f"{use_case}/{model}")
        if state is None:
            self.require_use_case(use_case)
            raise NotFound(f"model {model!r} of use case {use_case!r} does not exist; register it with "
                           f"POST /api/use-cases/{use_case}/models", use_case=use_case, model=model)
        return state

    def _registered(self, kind: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        """What each entity (whose id starts with `prefix`) was created with, by id."""
        rows = self.ports.store.query("SELECT entity_id, metadata FROM state_history WHERE kind = ? AND seq = 1 "
                                      "AND starts_with(entity_id, ?)", [kind, prefix])
        return {entity_id: msgspec.json.decode(metadata) if metadata else {} for entity_id, metadata in rows}

    def use_cases(self) -> list[UseCaseSummary]:
        about = self._registered("use_case")
        counts: dict[str, int] = {}
        for model_id, _, _ in self.ports.store.states.entities("model"):
            use_case = model_id.split("/", 1)[0]
            counts[use_case] = counts.get(use_case, 0) + 1
        return [UseCaseSummary(id=uc, name=about.get(uc, {}).get("name", ""),
                               team_email=about.get(uc, {}).get("team_email", ""), state=state,
                               models=counts.get(uc, 0), url=f"/api/use-cases/{uc}")
                for uc, state, _ in self.ports.store.states.entities("use_case")]

    def template(self, use_case: str) -> str:
        """The object URL of the config template written for the use case."""
        self.require_use_case(use_case)
        sent = _last(self.ports.store.states.history("use_case", use_case), ("template_sent",))
        if sent is None:
            raise NotFound(f"use case {use_case!r} has no config template yet; it is written when the use case is "
                           "registered", use_case=use_case)
        return sent.metadata["template"]

    def use_case(self, use_case: str, base: str) -> UseCaseView:
        state = self.require_use_case(use_case)
        history = self.ports.store.states.history("use_case", use_case)
        config = _last(history, ("config_uploaded", "validation_started", "config_valid", "config_invalid"))
        if config is None:
            status = ConfigStatus(status="none")
        else:
            status = ConfigStatus(
                status={"config_valid": "valid", "config_invalid": "invalid"}.get(config.trigger, "validating"),
                file=config.metadata.get("file_uploaded"), config_hash=config.metadata.get("config_hash"),
                problems=config.metadata.get("problems", []))
        template = _last(history, ("template_sent",))
        return UseCaseView(id=use_case, name=history[0].metadata.get("name", ""),
                           team_email=history[0].metadata.get("team_email", ""), state=state,
                           template=f"{base}{_use_case_path(use_case)}/template" if template else None, config=status,
                           models=self.models(use_case), state_url=_state_url("use_case", use_case))

    def models(self, use_case: str) -> list[ModelSummary]:
        prefix = f"{use_case}/"
        about = self._registered("model", prefix)
        return [ModelSummary(id=model_id.removeprefix(prefix), name=about.get(model_id, {}).get("name", ""),
                             version=about.get(model_id, {}).get("version", ""), state=state,
                             url=f"/api/use-cases/{model_id.replace('/', '/models/', 1)}")
                for model_id, state, _ in self.ports.store.states.entities("model") if model_id.startswith(prefix)]

    def model(self, use_case: str, model: str, base: str) -> ModelView:
        state = self.require_model(use_case, model)
        history = self.ports.store.states.history("model", f"{use_case}/{model}")
        uploaded = _last(history, ("dataset_uploaded",))
        checked = _last_check(history)
        quality = None if checked is None else QualitySummary(
            passed=checked.metadata["errors"] == 0, files=checked.metadata["files"],
            rows_checked=checked.metadata["rows_checked"], errors=checked.metadata["errors"],
            warnings=checked.metadata["warnings"], report=f"{base}{_model_path(use_case, model)}/quality-report")
        path = _model_path(use_case, model)
        return ModelView(id=model, use_case=use_case, name=history[0].metadata.get("name", ""),
                         version=history[0].metadata.get("version", ""), state=state,
                         files=uploaded.metadata.get("files", {}) if uploaded else {}, quality=quality,
                         evaluated=state == M.EVALUATION_COMPLETED,
                         links={name: f"{path}/{name}" for name in ("state", "quality-issues", "results", "report")})

    def last_check(self, use_case: str, model: str) -> tuple[str, TransitionRecord]:
        """The model's state and the transition that recorded its last quality check;
        NotFound before one."""
        state = self.require_model(use_case, model)
        checked = _last_check(self.ports.store.states.history("model", f"{use_case}/{model}"))
        if checked is None:
            raise NotFound(f"model {model!r} of use case {use_case!r} has had no quality check yet (it is {state}); "
                           f"upload its dataset", use_case=use_case, model=model, state=state)
        return state, checked

    def quality_issues(self, use_case: str, model: str, base: str) -> QualityIssues:
        state, checked = self.last_check(use_case, model)
        with self.open_url(checked.metadata["quality_report"]) as stream:
            report = msgspec.json.decode(stream.read(), type=QualityReport)
        return QualityIssues(model=model, use_case=use_case, state=state, files=checked.metadata["files"],
                             sources=report.files, checked_at=checked.happened_at, passed=report.passed,
                             rows_checked=report.rows_checked, errors=report.errors, warnings=report.warnings,
                             report=f"{base}{_model_path(use_case, model)}/quality-report")

    def evaluation(self, use_case: str, model: str) -> tuple[list[TransitionRecord], TransitionRecord]:
        """The model's history and its last successful evaluation; NotEvaluated unless the
        model is EVALUATION_COMPLETED (a newer dataset in progress would make older results lie)."""
        state = self.require_model(use_case, model)
        history = self.ports.store.states.history("model", f"{use_case}/{model}")
        done = _last(history, ("evaluation_succeeded",))
        if state != M.EVALUATION_COMPLETED or done is None:
            raise NotEvaluated(f"model {model!r} of use case {use_case!r} has no results: it is {state}; they are "
                               f"here once it reaches {M.EVALUATION_COMPLETED}", use_case=use_case, model=model, state=state)
        return history, done

    def results(self, use_case: str, model: str, base: str) -> Results:
        history, done = self.evaluation(use_case, model)
        meta, path = done.metadata, _model_path(use_case, model)
        with self.open_url(meta["results"]["per_field"]) as stream:
            fields = msgspec.convert(pl.read_parquet(stream).to_dicts(), list[FieldMetrics])
        return Results(model=model, use_case=use_case, name=history[0].metadata.get("name", ""),
                       version=history[0].metadata.get("version", ""), state=history[-1].to_state,
                       files=meta["files"], evaluated_at=done.happened_at, records=meta["records"],
                       records_all_matched=meta["records_all_matched"], micro=msgspec.convert(meta["micro"], MicroMetrics),
                       macro=msgspec.convert(meta["macro"], MacroMetrics), fields=fields, config_hash=meta["config_hash"],
                       mlflow_run_id=meta.get("mlflow_run_id"), report=f"{base}{path}/report",
                       results={name: f"{base}{path}/results/{name}" for name in meta["results"]})

    def open_url(self, url: str) -> IO[bytes]:
        """Open an object by the URL a handler recorded, through the configured buckets."""
        for bucket, root in self.ports.objects.roots.items():
            if url.startswith(root + "/"):
                return self.ports.objects.open(bucket, url[len(root) + 1:])
        raise NotFound(f"{url} is not in a configured bucket ({', '.join(sorted(self.ports.objects.roots))})", url=url)


async def _read_upload(request: Request, format_: str | None, formats: tuple[str, ...], what: str) -> tuple[bytes, str]:
    """(content, format) of an upload: multipart (field 'file', the format from its filename,
    else ?format) or a raw body with ?format."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        file = (await request.form()).get("file")
        if not isinstance(file, UploadFile):
            raise DropwireError(f"the multipart upload has no file in field 'file'; send {what} as field 'file'")
        suffix = PurePosixPath(file.filename or "").suffix.lstrip(".") or format_ or ""
        data = await file.read()
    else:
        suffix, data = format_ or "", await request.body()
    suffix = suffix.lower()
    if suffix not in formats:
        raise UnsupportedFormat(f"{what} must be one of {', '.join(formats)}; got "
                                + (f"{suffix!r}" if suffix else "no format")
                                + ": name the file with its suffix in a multipart upload, or send the raw body with "
                                  f"?format={'|'.join(formats)}", accepted=list(formats))
    if not data:
        raise DropwireError(f"the upload is empty; send {what}")
    return data, suffix


def _base(request: Request) -> str:
    """The URL this server is reached at, as the client reached it (download links are built on it)."""
    return str(request.base_url).rstrip("/")


def _download(stream: IO[bytes], media_type: str, filename: str) -> Stream:
    return Stream(_chunks(stream), media_type=media_type,
                  headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _chunks(stream: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    with stream:
        while chunk := stream.read(size):
            yield chunk


def _last(history: list[TransitionRecord], triggers: tuple[str, ...]) -> TransitionRecord | None:
    return next((h for h in reversed(history) if h.trigger in triggers), None)


def _last_check(history: list[TransitionRecord]) -> TransitionRecord | None:
    """The transition that recorded the model's last quality check, with its counts and
    report (a check's outcome, or an evaluation that found its files failing again)."""
    return next((h for h in reversed(history) if "rows_checked" in h.metadata), None)


def _use_case_path(use_case: str) -> str:
    return f"/api/use-cases/{use_case}"


def _model_path(use_case: str, model: str) -> str:
    return f"{_use_case_path(use_case)}/models/{model}"


def _model_folder(use_case: str, model: str) -> str:
    return f"{SOURCE_PREFIX}{use_case}/models/{model}"


def _state_url(kind: str, entity_id: str) -> str:
    return f"/api/use-cases/{entity_id.replace('/', '/models/', 1) if kind == 'model' else entity_id}/state"


def _slug(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9.]+", "-", plain.lower()).strip("-.")[:MAX_ID]


def _check_id(value: str, what: str, *, derived_from: bool = False) -> str:
    if ID.fullmatch(value):
        return value
    if derived_from and not value:
        raise InvalidId(f"no {what} id can be made from its name; give an 'id'", field="id")
    raise InvalidId(f"{what} id {value!r} is not valid: use letters, digits, '.', '_' and '-', starting with a letter "
                    f"or digit, at most {MAX_ID} characters", field="id")

"""`dropwire demo`: the evaluation workflow end to end on the embedded default (a local folder
as the bucket, the DuckDB file, a local MLflow store), on generated data. It starts the
emulator, drops files into the bucket as a team would, and narrates what the handlers did:
one use case, three models; one passes and is evaluated, one fails the quality check, is
fixed and passes, one is still at work when the summary is taken. Then a small batch on the
runtime's embedded test model (demo_batch.py)."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime
from pathlib import Path

import msgspec
import polars as pl
from rich.console import Console
from rich.panel import Panel

from dropwire.functions.evaluation.core import QualityReport
from dropwire.functions.evaluation.core.samples import sample_config, sample_dataset
from dropwire.functions.evaluation.handlers import SOURCE_PREFIX, results_prefix
from dropwire.functions.kit.errors import DropwireError, NotFound
from dropwire.local_emulator.cli_context import print_records, prose, whole
from dropwire.local_emulator.demo_batch import DemoRuntime, run_batch
from dropwire.local_emulator.emulator import Emulator
from dropwire.local_emulator.settings import Settings

# name -> (version, records, error rate); the last one's dataset is big enough to still be at
# work when the others are done.
MODELS = {"gpt-4o": ("2024-08-06", 5_000, 0.04), "claude-3.5": ("2024-10-22", 5_000, 0.07),
          "llama-3.1": ("70b", 400_000, 0.10)}
DONE = ("EVALUATION_COMPLETED", "EVALUATION_FAILED", "AWAITING_DATA_FIX")
WAIT_S = 120.0


class DemoRun:
    def __init__(self, emulator: Emulator, use_case: str, console: Console) -> None:
        self.emulator = emulator
        self.store = emulator.store
        self.bucket = emulator.settings.events.bucket
        self.use_case = use_case
        self.console = console
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.perf_counter() - self.started:5.1f}s[/]  {text}", highlight=False)

    def drop(self, key: str, data: bytes) -> str:
        """Upload a file into the bucket whole, as a team would (a folder: write, then rename)."""
        self.emulator.objects.write_bytes(self.bucket, key, data)
        return key

    def state(self, kind: str, entity_id: str) -> str | None:
        try:
            return self.store.states.current(kind, entity_id)[0]
        except NotFound:
            return None

    def version(self, kind: str, entity_id: str) -> int:
        return self.store.states.current(kind, entity_id)[1]

    def wait(self, kind: str, entity_id: str, states: tuple[str, ...], past_version: int = 0) -> str:
        """Wait for one of `states`, reached after `past_version` (a re-upload's check must
        start before its model's current state counts)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                state, version = self.store.states.current(kind, entity_id)
            except NotFound:
                state, version = None, 0
            if state in states and version > past_version:
                return state
            time.sleep(0.05)
        letters = [f"{d.name}: {d.last_error}" for d in self.store.queue.dead_letters()]
        # Refused and waiting uploads are no dead letters, but as likely to be why.
        held = [f"{name} {status}: {error}" for name, status, error in self.store.query(
            "SELECT name, status, last_error FROM tasks WHERE status IN ('refused', 'waiting') ORDER BY id")]
        raise DropwireError(f"{kind} {entity_id} did not reach {' or '.join(states)} within {WAIT_S:.0f}s "
                            f"(it is {self.state(kind, entity_id)}); dead letters: {letters or 'none'}; "
                            f"refused or waiting: {held or 'none'}")

    def model_key(self, model: str, name: str) -> str:
        return f"{SOURCE_PREFIX}{self.use_case}/models/{model}/{name}"


def run_demo(settings: Settings, console: Console, settings_file: Path | None = None) -> None:
    use_case = f"invoices-{datetime.now():%Y%m%d-%H%M%S}"
    console.print(Panel.fit("dropwire demo: the evaluation workflow on generated invoice-extraction data,\n"
                            "then a batch on the runtime's tiny test model", title="dropwire"), soft_wrap=False)
    # Paths outside the panel: a panel breaks a long line, and a path must copy whole.
    console.print(f"bucket {settings.events.bucket}: {_local(settings.object_roots()[settings.events.bucket])}\n"
                  f"database: {settings.database_path}\nMLflow: {settings.mlflow_uri}", highlight=False)
    # The runtime starts first: it builds its test model while the evaluation part runs.
    with DemoRuntime(settings, settings_file) as runtime, Emulator(runtime.settings, serve_http=False) as emulator:
        run = DemoRun(emulator, use_case, console)
        run.say(f"emulator up: {settings.queue.workers} workers, each with a handler process; "
                + ("S3 notifications arrive through SQS" if settings.events.bucket_s3 else "the bucket folder is watched"))
        run.say(f"runtime starting in the background (log: {_local(str(runtime.log_path))})")
        _walk_through(run)
        summary_states = _summary(run)
        console.print()
        run_batch(run, runtime, _local)
        console.print()
        run.say("stopping: handlers finish, queued work stays queued, the runtime exits")
    _after_stop(settings, use_case, summary_states, console)


def _walk_through(run: DemoRun) -> None:
    uc = run.use_case
    run.drop(f"{SOURCE_PREFIX}{uc}/use-case.json", json.dumps({"name": "Invoice extraction",
                                                               "team_email": "ml-team@example.com"}).encode())
    run.say(f"dropped {SOURCE_PREFIX}{uc}/use-case.json")
    run.wait("use_case", uc, ("AWAITING_CONFIG",))
    run.say(f"  use case {uc}: AWAITING_CONFIG; config template written to evaluation-templates/{uc}/ and sent "
            "to the team (a notification)")
    run.drop(f"{SOURCE_PREFIX}{uc}/config.json", json.dumps(sample_config(uc), indent=2).encode())
    run.say(f"dropped {SOURCE_PREFIX}{uc}/config.json (6 fields: exact, normalised text, numeric tolerance, "
            "date, category, boolean)")
    run.say(f"  use case: {run.wait('use_case', uc, ('CONFIG_VALIDATED', 'CONFIG_INVALID'))}")
    for model, (version, _, _) in MODELS.items():
        run.drop(run.model_key(model, "register.json"), json.dumps({"name": model, "version": version}).encode())
    for model in MODELS:
        run.wait("model", f"{uc}/{model}", ("REGISTERED",))
    run.say(f"registered models {', '.join(MODELS)}: each has its own state machine")

    first, second, third = MODELS
    run.drop(run.model_key(first, "dataset.csv"), _dataset(first).write_csv().encode())
    run.drop(run.model_key(second, "dataset.csv"), _dataset(second, broken=True).write_csv().encode())
    run.say(f"dropped datasets: {first} (clean), {second} (with data problems), {MODELS[first][1]:,} records each")
    run.say(f"  {second}: {run.wait('model', f'{uc}/{second}', DONE)} (quality check failed)")
    _show_issues(run, second)
    run.say(f"  {first}: {run.wait('model', f'{uc}/{first}', DONE)}")

    # The fix (as Excel) and the big third dataset (as Parquet) arrive together.
    fixed, big = io.BytesIO(), io.BytesIO()
    _dataset(second).write_excel(fixed)
    _dataset(third).write_parquet(big)
    before_fix = run.version("model", f"{uc}/{second}")
    run.drop(run.model_key(second, "dataset.xlsx"), fixed.getvalue())
    run.drop(run.model_key(third, "dataset.parquet"), big.getvalue())
    run.say(f"dropped {second}'s fixed dataset (.xlsx) and {third}'s dataset ({MODELS[third][1]:,} records, .parquet)")
    run.say(f"  {second}: {run.wait('model', f'{uc}/{second}', DONE, past_version=before_fix)} after the fix")


def _dataset(model: str, *, broken: bool = False) -> pl.DataFrame:
    _, records, error_rate = MODELS[model]
    return sample_dataset(records, error_rate=error_rate, seed=sum(map(ord, model)), broken=broken)


def _show_issues(run: DemoRun, model: str) -> None:
    key = f"{results_prefix(run.use_case, model, MODELS[model][0])}quality-report.json"
    with run.emulator.objects.open(run.bucket, key) as stream:
        report = msgspec.json.decode(stream.read(), type=QualityReport)
    run.console.print(f"quality issues of {model}'s first dataset (all of them in "
                      f"{_local(run.emulator.objects.url(run.bucket, key))}):", highlight=False)
    print_records([whole("column"), whole("rows"), prose("what is wrong (the report has every row)")],
                  [[issue.column or "", str(issue.row_count), issue.message.split(": ", 1)[-1]] for issue in report.errors],
                  out=run.console)


def _summary(run: DemoRun) -> dict[str, str]:
    rows: list[list[str]] = []
    states: dict[str, str] = {}
    where: list[str] = []
    for model, (version, _, _) in MODELS.items():
        snapshot = run.store.states.snapshot("model", f"{run.use_case}/{model}")
        states[model] = snapshot.state
        if snapshot.state != "EVALUATION_COMPLETED":
            rows.append([model, snapshot.state, "", "", "", ""])  # still at work
            continue
        done = snapshot.history[-1].metadata
        rows.append([model, snapshot.state, f"{done['records']:,}", f"{done['micro']['f1']:.3f}",
                     f"{done['micro']['accuracy']:.3f}", f"{done['records_all_matched']:.1%}"])
        where.append(f"  {model} {version}: report {_local(done['report'])}\n    MLflow run {done['mlflow_run_id']} "
                     f"(experiment dropwire-evaluation/{run.use_case})")
    run.console.print()
    # Short headers, so the table fits 80 columns; the title says what they are.
    print_records([whole("model"), whole("state"), whole("records"), whole("F1"), whole("accuracy"), whole("all right")],
                  rows, title=f"use case {run.use_case}: {run.state('use_case', run.use_case)} (F1 and accuracy micro-"
                  "averaged over fields; all right: records with every field right)", out=run.console)
    run.console.print("Excel reports (summary, per field, mismatches) and MLflow runs:\n" + "\n".join(where),
                      highlight=False)

    second = list(MODELS)[1]
    print_records([whole("seq"), whole("state"), whole("by"), prose("why")],  # the trigger: in state_history
                  [[str(record.seq), record.to_state, record.triggered_by, record.reason or ""]
                   for record in run.store.states.history("model", f"{run.use_case}/{second}")],
                  title=f"history of {second}: failed the check, fixed, evaluated", out=run.console)
    kinds = run.store.query("SELECT kind, count(*) FROM notifications WHERE entity_id LIKE ? OR entity_id = ? "
                            "GROUP BY kind ORDER BY kind", [f"{run.use_case}/%", run.use_case])
    run.console.print("notifications (outbox; .eml files in " f"{run.emulator.settings.outbox_path}): "
                      + ", ".join(f"{kind} x{count}" for kind, count in kinds), highlight=False)
    return states


def _after_stop(settings: Settings, use_case: str, states: dict[str, str], console: Console) -> None:
    from dropwire.functions.machines import MACHINES
    from dropwire.storage.store import Store

    with Store.open(settings.database_path, MACHINES) as store:
        later = {m: store.states.current("model", f"{use_case}/{m}")[0] for m in MODELS}
        waiting = store.queue.stats().by_status
    for model, state in states.items():
        if state in DONE:
            continue
        if later[model] in DONE:
            console.print(f"[bold]{model}[/] was {state} at the summary; its running step was let finish, "
                          f"and it is {later[model]} now.", highlight=False)
        else:
            console.print(f"[bold]{model}[/] was {state} at the summary and is {later[model]} now: its next step "
                          "waits in the queue (durably), and `dropwire emulate` carries on from there.", highlight=False)
    console.print(f"queue now: {waiting}\n", highlight=False)
    print_look_further(settings, use_case, console)


def print_look_further(settings: Settings, use_case: str, console: Console) -> None:
    console.print("Look further (after `source .venv/bin/activate`), one command a line:", highlight=False)
    for command, what in look_further(settings, use_case):
        console.print(f"  {command}  # {what}", highlight=False)


def look_further(settings: Settings, use_case: str) -> list[tuple[str, str]]:
    """(command, what it shows) for after the demo; each is printed on a line of its own, whole,
    to be copied and run as it is."""
    return [
        ("dropwire emulate", f"the platform, with the HTTP API on http://{settings.http.host}:{settings.http.port}/api"),
        (f"dropwire db query \"SELECT entity_id, seq, to_state, reason FROM state_history WHERE entity_id LIKE "
         f"'{use_case}%' ORDER BY entity_id, seq\"", "every transition of the use case and its models"),
        ("dropwire batches list", "the batch, its counts and output file"),
        ("dropwire notifications list", "what was sent, and how"),
        ("dropwire dlq list", "tasks that spent their attempts"),
        ("dropwire db check", "the database's consistency"),
        (f"mlflow ui --backend-store-uri {settings.mlflow_uri}", "the evaluation runs"),
    ]


def _local(url: str) -> str:
    """An object's URL as a path a person can open (when it is a local file)."""
    if not url.startswith("file://"):
        return url
    path = Path(url.removeprefix("file://"))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)

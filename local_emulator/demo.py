"""`dropwire demo`: one use case, three models, real store and real workers, printed so a
person can follow what happened and where to look."""

from __future__ import annotations

import time
from datetime import datetime

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from functions.demo import ModelJob, Record, registry
from local_emulator.control_plane import open_store, start_pool
from local_emulator.settings import Settings
from storage.records import Effects, TaskSpec, TransitionRequest
from storage.store import Store

GOOD = [Record("invoice", "invoice"), Record("receipt", "receipt"), Record("invoice", "receipt"), Record("contract", "contract")]
MISSING = [Record("invoice", "invoice"), Record("receipt", None), Record("contract", None), Record("invoice", "invoice")]


def _upload(store: Store, model_id: str, records: list[Record], crash_attempts: int = 0, note: str = "") -> None:
    """A dataset arrives: the transition and the quality-check task commit together (outbox)."""
    job = ModelJob(model_id=model_id, records=records, crash_attempts=crash_attempts)
    store.apply(Effects(
        transitions=[TransitionRequest(kind="model", entity_id=model_id, trigger="dataset_uploaded", triggered_by="demo.team",
                                       reason=note or "dataset uploaded", metadata={"file_uploaded": f"{model_id}/dataset.csv"})],
        tasks=[TaskSpec(name="demo.quality_check", args=job)],
    ))


def _wait_until_settled(store: Store, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = {k: v for k, v in store.stats().by_status.items() if k in ("queued", "running", "retrying")}
        if not busy:
            return
        time.sleep(0.1)


def run_demo(settings: Settings, console: Console) -> None:
    started = time.perf_counter()
    use_case = f"uc-{datetime.now():%Y%m%d-%H%M%S}"
    models = {name: f"{use_case}/{name}" for name in ("gpt-4", "claude-3", "gemini")}
    with open_store(settings, registry) as store:
        console.print(Panel.fit(f"dropwire demo: use case [bold]{use_case}[/] with three models\n"
                                f"state database: {settings.database_path}", title="dropwire"))
        store.create("use_case", use_case, triggered_by="demo.team", reason="use case created")
        for trigger, reason in (("template_sent", "config template sent to the team"),
                                ("await_config", "waiting for the team's config"),
                                ("config_uploaded", "config.yaml uploaded"),
                                ("validation_started", "validating the config"),
                                ("config_valid", "config valid: 1 field, exact match")):
            store.transition("use_case", use_case, trigger=trigger, triggered_by="demo.team", reason=reason)
        for model_id in models.values():
            store.create("model", model_id, triggered_by="demo.team", reason="model registered")
        # A dataset with an unreadable argument shows a task that can never succeed.
        store.enqueue(TaskSpec(name="demo.quality_check", args={"model_id": models["gemini"], "records": "not a list"}))
        pool = start_pool(settings, store, registry, "demo")
        try:
            _upload(store, models["gpt-4"], GOOD)
            _upload(store, models["claude-3"], MISSING)
            _upload(store, models["gemini"], GOOD, crash_attempts=1)
            _wait_until_settled(store, timeout=30)
            _upload(store, models["claude-3"], GOOD, note="corrected dataset re-uploaded")
            _wait_until_settled(store, timeout=30)
        finally:
            pool.stop()
        _report(store, use_case, models, console)
    console.print(f"\nfinished in {time.perf_counter() - started:.1f}s. Look further with "
                  f"(after `source .venv/bin/activate`):\n"
                  f"  dropwire queue stats | dropwire dlq list | dropwire db check\n"
                  f"  dropwire db query \"SELECT entity_id, seq, to_state, reason FROM state_history "
                  f"WHERE entity_id LIKE '{use_case}%' ORDER BY entity_id, seq\"")


def _report(store: Store, use_case: str, models: dict[str, str], console: Console) -> None:
    states = Table("entity", "state", "version", "last step")
    states.columns[1].no_wrap = True
    snapshot = store.snapshot("use_case", use_case)
    states.add_row(f"use case {use_case}", snapshot.state, str(snapshot.version), snapshot.history[-1].reason or "")
    for name, model_id in models.items():
        snap = store.snapshot("model", model_id)
        states.add_row(f"model {name}", snap.state, str(snap.version), snap.history[-1].reason or "")
    console.print(states)

    history = Table("seq", "state", "trigger", "by", "why", title="history of model claude-3 (failed QC, fixed, passed)")
    for column in history.columns[1:3]:
        column.no_wrap = True  # state and trigger names stay whole; the reason wraps
    for record in store.history("model", models["claude-3"]):
        history.add_row(str(record.seq), record.to_state, record.trigger, record.triggered_by, record.reason or "")
    console.print(history)

    stats = store.stats()
    console.print(f"queue: {stats.by_status}; {stats.attempts_total} attempts in all "
                  f"(gemini's evaluation crashed once and was retried with backoff)")
    for letter in store.dead_letters():
        console.print(f"dead letter: task {letter.task_id} ({letter.name}) after {letter.attempts} attempt(s): {letter.last_error}")

"""`dropwire workflow` and `dropwire quota`: workflows of every kind at a glance, an operator's
suspend and resume (the reason kept in history), resuming what a quota parked, and a metered
service's usage. Through the running control plane when there is one, else on the file."""

from __future__ import annotations

import json

import msgspec
import typer

from dropwire.functions.kit.errors import Conflict, DropwireError
from dropwire.local_emulator.cli_context import Lazy, console, current_settings, print_records, prose, whole

MACHINES = Lazy("dropwire.functions.machines", "MACHINES")
quota_reads = Lazy("dropwire.functions.quota.reads")
reads = Lazy("dropwire.functions.workflow.reads")
QUOTA_RESUMES = Lazy("dropwire.functions.workflow.handlers", "QUOTA_RESUMES")
read_access = Lazy("dropwire.local_emulator.control_plane", "read_access")
store_access = Lazy("dropwire.local_emulator.control_plane", "store_access")
Effects = Lazy("dropwire.storage.records", "Effects")
TransitionRequest = Lazy("dropwire.storage.records", "TransitionRequest")

workflow_app = typer.Typer(help="Workflows of every kind: status, suspend, resume.", no_args_is_help=True)
quota_app = typer.Typer(help="Quotas of metered services.", no_args_is_help=True)


@workflow_app.command("status")
def workflow_status() -> None:
    """Counts by state per workflow kind, and the one waiting longest."""
    with read_access(current_settings()) as store:
        found = reads.status(store.query, MACHINES)
    rows = []
    for kind in found.kinds:
        waiting = kind.oldest_waiting
        rows.append([kind.kind, waiting.entity_id if waiting else "", waiting.state if waiting else "",
                     f"{waiting.waiting_seconds:.0f}" if waiting else "",
                     ", ".join(f"{s} {n}" for s, n in kind.counts.items()) or "none"])
    print_records([whole("kind"), whole("oldest waiting"), whole("state"), whole("waiting s"), prose("by state")], rows)


def _move(store, kind: str, entity_id: str, trigger: str, reason: str) -> tuple[str, int]:
    _state, version = store.states.current(kind, entity_id)
    store.states.apply(Effects(transitions=[TransitionRequest(
        kind=kind, entity_id=entity_id, trigger=trigger, expected_version=version, triggered_by="operator:cli",
        reason=reason)]))
    return store.states.current(kind, entity_id)


def _wake(store, kind: str, entity_id: str) -> int:
    return store.queue.wake(QUOTA_RESUMES[kind][2](entity_id)) if kind in QUOTA_RESUMES else 0


@workflow_app.command("suspend")
def workflow_suspend(kind: str, entity_id: str, reason: str = typer.Option(..., "--reason", help="Why (kept in history).")) -> None:
    """Hold one workflow (e.g. `dropwire workflow suspend batch batch_x --reason "upstream down"`)."""
    with store_access(current_settings()) as store:
        state, version = _move(store, kind, entity_id, "suspend", reason)
    console.print(f"{kind} {entity_id}: {state} (version {version})")


@workflow_app.command("resume")
def workflow_resume(kind: str, entity_id: str, reason: str = typer.Option("resumed by an operator", "--reason")) -> None:
    """Let a suspended workflow go on from the state it was suspended in."""
    with store_access(current_settings()) as store:
        state, version = _move(store, kind, entity_id, "resume", reason)
        woken = _wake(store, kind, entity_id)
    console.print(f"{kind} {entity_id}: {state} (version {version}); {woken} parked task(s) woken")


@workflow_app.command("resume-quota-exceeded")
def workflow_resume_quota(kind: str = typer.Option("batch", "--kind"),
                          entity_id: str | None = typer.Option(None, "--id", help="Only this one (default: all)."),
                          reason: str = typer.Option("resumed by hand from the CLI", "--reason")) -> None:
    """Resume now what a quota parked (it parks again if the quota is still spent)."""
    if kind not in QUOTA_RESUMES:
        raise DropwireError(f"kind {kind!r} is never parked by a quota; kinds: {sorted(QUOTA_RESUMES)}")
    parked, trigger, _ = QUOTA_RESUMES[kind]
    with store_access(current_settings()) as store:
        ids = [entity_id] if entity_id else [row[0] for row in store.query(
            "SELECT entity_id FROM entity_states WHERE kind = ? AND state = ? ORDER BY updated_at", [kind, parked])]
        for one in ids:
            state, _ = store.states.current(kind, one)
            if state != parked:
                raise Conflict(f"{kind} {one} is {state}, not {parked}: nothing to resume", state=state)
            _move(store, kind, one, trigger, reason)
            _wake(store, kind, one)
    console.print(f"resumed {len(ids)} {kind}(s): {', '.join(ids) or 'none was parked'}")


@quota_app.command("usage")
def quota_usage(service: str) -> None:
    """Limits, used and remaining, cost today, the upstream's word, the last 24 hours (JSON); the
    limits are the running emulator's."""
    from dropwire.local_emulator.control import ControlClient  # the real class: a Lazy is no isinstance target

    settings = current_settings()
    with read_access(settings) as store:
        # A running control plane answers with the limits it runs with; a stopped database is
        # read with this command's settings (nothing else knows them).
        usage = (store.quota.usage(service) if isinstance(store, ControlClient)
                 else quota_reads.configured_usage(store.query, service, settings.domain_config()))
    console.print_json(json.dumps(msgspec.to_builtins(usage)))

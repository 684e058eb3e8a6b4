"""CLI commands of the function platform: emulate, invoke, reprocess, schedules, events."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import typer

from dropwire.functions.kit.errors import DropwireError
from dropwire.local_emulator.cli_context import console, current_settings

if TYPE_CHECKING:
    from dropwire.functions.platform.registry import FunctionSpec, HttpEvent, ObjectEvent, ScheduledEvent

# The platform's modules (the store, the gateway, the sources) are imported inside each
# command, so that `dropwire --help` and the other commands do not load them.

schedule_app = typer.Typer(help="Schedules: list them, fire one now.", no_args_is_help=True)
events_app = typer.Typer(help="Print realistic events, for tests and for trying functions.", no_args_is_help=True)


def emulate(
    s3_endpoint: str = typer.Option("", help="S3/SQS endpoint URL (e.g. a moto server); default: the settings."),
    bucket: list[str] = typer.Option([], "--s3-bucket", help="S3 bucket to serve (repeatable)."),
    sqs_queue_url: str = typer.Option("", help="SQS queue that receives the buckets' notifications."),
    chaos_duplicate: float = typer.Option(0.0, min=0.0, max=1.0, help="Probability (0-1) that an event is delivered twice."),
    chaos_reorder: float = typer.Option(0.0, min=0.0, max=1.0,
                                        help="Probability (0-1) that an event is held back so later ones overtake it."),
    chaos_delay_ms: float = typer.Option(0.0, min=0.0, help="Largest random delay added to each event."),
    chaos_seed: int | None = typer.Option(None, help="Seed for repeatable chaos."),
    executor: str = typer.Option("", help="Where invocations run: local (handler processes) or ray; default: the settings."),
    ray_address: str = typer.Option("", help="Ray cluster address (host:port, ray://host:port); default: the settings."),
) -> None:
    """Run the platform: folder (and S3) events, dispatcher, scheduler, HTTP gateway. Ctrl-C stops it cleanly."""
    from dropwire.local_emulator.control_plane import stop_on_signals
    from dropwire.local_emulator.emulator import ChaosSettings, Emulator

    logging.getLogger().setLevel(logging.INFO)
    settings = current_settings()
    events = settings.events
    overrides = {k: v for k, v in {"s3_endpoint_url": s3_endpoint, "s3_buckets": bucket or None,
                                    "sqs_queue_url": sqs_queue_url}.items() if v}
    if overrides:
        settings = msgspec.structs.replace(settings, events=msgspec.structs.replace(events, **overrides))
    placement = {k: v for k, v in {"kind": executor, "ray_address": ray_address}.items() if v}
    if placement:
        try:
            settings = msgspec.structs.replace(settings, executor=msgspec.structs.replace(settings.executor, **placement))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--executor") from None
    chaos = ChaosSettings(duplicate=chaos_duplicate, reorder=chaos_reorder, max_delay_seconds=chaos_delay_ms / 1000,
                          seed=chaos_seed)
    stop = stop_on_signals()
    with Emulator(settings, chaos=chaos):
        console.print(f"dropwire is up: drop files into {settings.object_roots()[settings.events.bucket]}, HTTP on "
                      f"http://{settings.http.host}:{settings.http.port} (docs at /schema/swagger). Ctrl-C stops.")
        if settings.queue.workers == 0:
            console.print("queue.workers is 0: functions run only in `dropwire worker` processes (same settings).")
        stop.wait()


def _load_event(path: Path) -> ObjectEvent | ScheduledEvent | HttpEvent:
    """An event file: an S3 notification (its first record), or an ObjectEvent, ScheduledEvent
    or HttpEvent as JSON."""
    from dropwire.functions.platform.registry import HttpEvent, ObjectEvent, ScheduledEvent
    from dropwire.local_emulator.sources.s3 import MalformedEvent, parse_notification

    raw = path.read_bytes()
    try:
        return parse_notification(raw, source="file")[0]
    except (MalformedEvent, IndexError):
        pass
    for kind in (ObjectEvent, ScheduledEvent, HttpEvent):
        try:
            return msgspec.json.decode(raw, type=kind)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
    raise DropwireError(f"{path} is neither an S3 notification nor an ObjectEvent, ScheduledEvent or HttpEvent as JSON")


class UnwatchedEvent(DropwireError):
    code = "unwatched_event"


def _refuse_unwatched(spec: FunctionSpec, event: ObjectEvent | ScheduledEvent | HttpEvent) -> None:
    """invoke commits what the handler asks for real, so it runs a handler only on an event
    its triggers would deliver; a follow-up step (OnQueue) gets whatever event its caller had."""
    from dropwire.functions.platform.registry import ObjectEvent, OnHttp, OnQueue, OnSchedule, ScheduledEvent

    if any(isinstance(t, OnQueue) for t in spec.triggers):
        return
    if isinstance(event, ObjectEvent):
        uploads = spec.uploads()
        if any(t.matches(event) for t in uploads):
            return
        watched = "; ".join(f"bucket {t.bucket!r}, keys {t.prefix}*{t.suffix} ({', '.join(t.events)})" for t in uploads)
        raise UnwatchedEvent(f"function {spec.name!r} is not fired by {event.event_name} on bucket {event.bucket!r}, "
                             f"key {event.key!r}: it watches {watched or 'no bucket'}", function=spec.name,
                             bucket=event.bucket, key=event.key)
    if isinstance(event, ScheduledEvent):
        schedules = [t.name for t in spec.triggers if isinstance(t, OnSchedule)]
        if event.schedule in schedules:
            return
        raise UnwatchedEvent(f"function {spec.name!r} is not fired by schedule {event.schedule!r}: "
                             f"its schedules are {schedules or 'none'}", function=spec.name)
    if not any(isinstance(t, OnHttp) for t in spec.triggers):
        raise UnwatchedEvent(f"function {spec.name!r} has no HTTP trigger, so it never gets an HttpEvent",
                             function=spec.name)


def invoke(function: str = typer.Argument(...), event: Path = typer.Option(..., "--event", exists=True, dir_okay=False)) -> None:
    """Run one handler once, in this process, on an event from a file its triggers would fire
    on; commit what it asks."""
    from dropwire.functions.platform.objects import ObjectStore
    from dropwire.functions.platform.registry import Invocation, ObjectEvent, load_functions
    from dropwire.local_emulator.control_plane import store_access
    from dropwire.local_emulator.dispatcher import handler_config
    from dropwire.local_emulator.sandbox import Request, execute

    settings = current_settings()
    spec = load_functions(settings.functions).get(function)
    the_event = _load_event(event)
    _refuse_unwatched(spec, the_event)
    objects = ObjectStore(settings.object_roots(), settings.storage_options())
    with store_access(settings) as store:
        place = (the_event.bucket, the_event.key) if isinstance(the_event, ObjectEvent) else None
        hop = store.receipts.hops_of([place]).get(place, 0) if place else 0
        request = Request(invocation=Invocation(function=function, source="invoke", event=the_event, hop=hop),
                          task_id=0, attempt=1, max_attempts=1, deadline=time.time() + spec.timeout_seconds)
        config = handler_config(settings)
        outcome = execute(spec, request, objects, store,
                          lambda b, k, h, f, t: store.receipts.record_output(b, k, hop=h, function=f, task_id=t),
                          config.runtime_url, config.mlflow_tracking_uri, config.mlflow_artifact_location,
                          store.records, store.quota, config.config)
        if not outcome.ok:
            if not outcome.on_purpose:  # a crash: where it happened matters
                console.print(outcome.traceback or "", highlight=False)
            if outcome.waits_for is not None:  # nothing waits here: run it again once that is there
                raise DropwireError(f"function {function!r} cannot run yet: {outcome.error}")
            raise DropwireError(f"function {function!r} {'refused' if outcome.refused else 'failed'}: {outcome.error}")
        applied = store.states.apply(outcome.effects)
    console.print_json(json.dumps({"result": outcome.result, "transitions": len(applied.transitions),
                                   "tasks": applied.task_ids}, default=str))


def reprocess(function: str, bucket: str, key: str) -> None:
    """Run FUNCTION again on BUCKET/KEY on purpose (receipts would otherwise drop it)."""
    from dropwire.functions.platform.objects import ObjectStore
    from dropwire.functions.platform.registry import load_functions
    from dropwire.local_emulator.control_plane import store_access
    from dropwire.local_emulator.router import EventRouter

    settings = current_settings()
    functions = load_functions(settings.functions)
    objects = ObjectStore(settings.object_roots(), settings.storage_options())
    with store_access(settings) as store:
        # reprocess asks the receipts only for hops_of; the control plane's remote receipts have no admit.
        router = EventRouter(functions, store.receipts, store.queue, settings.events.hop_limit)  # pyright: ignore[reportArgumentType]
        task_id = router.reprocess(function, objects, bucket, key)
    console.print(f"queued task {task_id}: {function} on {bucket}/{key}")


@schedule_app.command("list")
def schedule_list() -> None:
    """Every schedule with its trigger and last run."""
    from dropwire.functions.platform.registry import load_functions
    from dropwire.local_emulator.control_plane import read_access

    settings = current_settings()
    with read_access(settings) as store:
        for schedule, spec in load_functions(settings.functions).schedules():
            last = store.query("SELECT last_fire FROM schedule_runs WHERE schedule = ?", [schedule.name])
            when = schedule.cron or f"every {schedule.every_seconds}s"
            console.print(f"{schedule.name}: {spec.name}, {when}, last run {last[0][0] if last else 'never'}")


@schedule_app.command("run")
def schedule_run(name: str) -> None:
    """Fire schedule NAME now."""
    from dropwire.functions.platform.registry import load_functions
    from dropwire.local_emulator.control_plane import store_access
    from dropwire.local_emulator.schedules import Scheduler

    settings = current_settings()
    with store_access(settings) as store:
        # fire asks the receipts only for fire_schedule; the control plane's remote receipts have no last_fire.
        scheduler = Scheduler(load_functions(settings.functions), store.receipts)  # pyright: ignore[reportArgumentType]
        task_id = scheduler.fire(name, datetime.now(UTC))
    console.print(f"schedule {name} fired: task {task_id}")


@events_app.command("s3")
def events_s3(
    bucket: str = typer.Option(...), key: str = typer.Option(...), size: int = typer.Option(0),
    etag: str = typer.Option("d41d8cd98f00b204e9800998ecf8427e"), event_name: str = typer.Option("ObjectCreated:Put"),
    version_id: str | None = typer.Option(None),
) -> None:
    """Print an S3 event notification (URL-encoded key, sequencer, size, etag)."""
    from dropwire.local_emulator.sources.s3 import example_notification

    print(json.dumps(example_notification(bucket, key, size, etag, event_name, version_id), indent=2))

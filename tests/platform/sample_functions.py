"""Functions the platform tests register (loaded by the emulator and its handler processes
through settings.functions = 'tests.platform.sample_functions:functions')."""

from __future__ import annotations

import os
import time

import msgspec

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
from dropwire.functions.platform.tasks import PermanentTaskError

functions = FunctionRegistry()


@functions.function("measure", on=[OnUpload(bucket="local", prefix="incoming/")], outputs=[Output(bucket="local", prefix="measured/")],
                    timeout_seconds=30)
def measure(event: ObjectEvent, context: HandlerContext) -> dict:
    """Counts the bytes of an upload by streaming it, and writes a small report."""
    total = 0
    with context.objects.open(event.bucket, event.key) as stream:
        while chunk := stream.read(65536):
            total += len(chunk)
    context.outputs.write_bytes("local", f"measured/{event.key}.txt", f"{total}\n".encode())
    return {"key": event.key, "bytes": total, "hop": None}


@functions.function("strict_json", on=[OnUpload(bucket="local", prefix="json-in/")], max_attempts=1)
def strict_json(event: ObjectEvent, context: HandlerContext) -> dict:
    """Fails for good on a file that is not one whole JSON document, as the product's use-case
    and config handlers do: a file read half-way fails it."""
    with context.objects.open(event.bucket, event.key) as stream:
        data = stream.read()
    try:
        return {"fields": sorted(msgspec.json.decode(data))}
    except msgspec.DecodeError as exc:
        raise PermanentTaskError(f"{event.bucket}/{event.key} is not valid: {exc}") from None


@functions.function("add", on=[OnHttp()], timeout_seconds=10)
def add(event: HttpEvent, context: HandlerContext) -> dict:
    return {"sum": sum(event.body["numbers"]), "attempt": context.attempt}


@functions.function("sleepy", on=[OnHttp()], timeout_seconds=0.5, max_attempts=2)
def sleepy(event: HttpEvent, context: HandlerContext) -> None:
    time.sleep(30)


@functions.function("broken", on=[OnUpload(bucket="local", prefix="broken/")], max_attempts=2)
def broken(event: ObjectEvent, context: HandlerContext) -> None:
    raise ValueError(f"cannot handle {event.key}")


@functions.function("tick", on=[OnSchedule(name="every-2s", every_seconds=2, catch_up_seconds=3600)])
def tick(event: ScheduledEvent, context: HandlerContext) -> dict:
    return {"fired_for": event.fire_time, "catch_up": event.catch_up}


@functions.function("s3_measure", on=[OnUpload(bucket="uploads", prefix="in/")], outputs=[Output(bucket="uploads", prefix="out/")],
                    timeout_seconds=30)
def s3_measure(event: ObjectEvent, context: HandlerContext) -> dict:
    """The same code as for a local folder: the object store hides where the bucket lives."""
    with context.objects.open(event.bucket, event.key) as stream:
        total = len(stream.read())
    context.outputs.write_bytes("uploads", f"out/{event.key}.txt", f"{total}\n".encode())
    return {"bytes": total}


@functions.function("escape", on=[OnHttp()], outputs=[Output(bucket="local", prefix="allowed/")], max_attempts=1)
def escape(event: HttpEvent, context: HandlerContext) -> None:
    """Writes its declared output, then tries a key outside its outputs."""
    context.outputs.write_bytes("local", "allowed/ok.txt", b"ok")
    context.outputs.write_bytes("local", event.body["key"], b"not allowed")


@functions.function("crash", on=[OnHttp()], max_attempts=2)
def crash(event: HttpEvent, context: HandlerContext) -> None:
    """Ends its process at once, as a segfaulting extension would: no exception, no clean-up."""
    os._exit(70)


@functions.function("relay", on=[OnUpload(bucket="local", prefix="relay-in/")], outputs=[Output(bucket="local", prefix="relay-out/")])
def relay(event: ObjectEvent, context: HandlerContext) -> None:
    context.outputs.write_bytes("local", f"relay-out/{event.key}", b"relayed")


@functions.function("relayed", on=[OnUpload(bucket="local", prefix="relay-out/")])
def relayed(event: ObjectEvent, context: HandlerContext) -> dict:
    return {"key": event.key}

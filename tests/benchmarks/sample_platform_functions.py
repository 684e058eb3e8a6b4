"""Functions the platform benchmark registers: they only note when they started."""

from __future__ import annotations

import time

from dropwire.functions.platform.registry import FunctionRegistry, ObjectEvent, OnUpload

functions = FunctionRegistry()


@functions.function("stamp", on=[OnUpload(bucket="local", prefix="bench/")])
def stamp(event: ObjectEvent, context) -> dict:
    return {"key": event.key, "started": time.time()}


@functions.function("s3_stamp", on=[OnUpload(bucket="bench-uploads", prefix="bench/")])
def s3_stamp(event: ObjectEvent, context) -> dict:
    return {"key": event.key, "started": time.time()}

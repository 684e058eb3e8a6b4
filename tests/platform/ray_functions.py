"""Functions for the Ray executor tests (settings.functions = 'tests.platform.ray_functions:functions'):
one past its timeout, one whose result cannot be encoded, one that reports the resources
its Ray task was given, one that holds (a cluster to lose under it)."""

from __future__ import annotations

import time

from dropwire.functions.platform.context import HandlerContext
from dropwire.functions.platform.registry import FunctionRegistry, HttpEvent, OnHttp, Resources

functions = FunctionRegistry()

HINTS = Resources(cpus=0.5, memory_bytes=64 * 1024 * 1024)


@functions.function("sleepy", on=[OnHttp()], timeout_seconds=3, max_attempts=1)
def sleepy(event: HttpEvent, context: HandlerContext) -> None:
    time.sleep(event.body["seconds"])


@functions.function("unencodable", on=[OnHttp()], max_attempts=1)
def unencodable(event: HttpEvent, context: HandlerContext) -> object:
    return object()


@functions.function("hinted", on=[OnHttp()], max_attempts=1, resources=HINTS)
def hinted(event: HttpEvent, context: HandlerContext) -> dict[str, float]:
    import ray  # only to show what Ray gave this invocation; handlers never need it

    return ray.get_runtime_context().get_assigned_resources()


@functions.function("hold", on=[OnHttp()], timeout_seconds=600, max_attempts=3)
def hold(event: HttpEvent, context: HandlerContext) -> None:
    time.sleep(event.body["seconds"])

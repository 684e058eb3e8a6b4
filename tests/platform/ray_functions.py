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


@functions.function("control-reach", on=[OnHttp()], max_attempts=1)
def control_reach(event: HttpEvent, context: HandlerContext) -> dict:
    """How this Ray worker reaches the control plane (the connection its handlers use), that a
    call over it works, and what the control plane answers the same address with a wrong key."""
    import os
    import socket

    import ray

    from dropwire.local_emulator.control import ControlClient, ControlUnavailable
    from dropwire.local_emulator.ray_executor import _hosts

    (host,) = _hosts.values()
    with socket.socket(fileno=os.dup(host.client._connection().fileno())) as sock:
        family, peer = sock.family.name, list(sock.getpeername())
    queued = host.client.queue.stats().by_status
    try:
        ControlClient(host.client.address, "a-wrong-key").close()
        refused = ""
    except ControlUnavailable as exc:
        refused = str(exc)
    return {"family": family, "peer": peer, "by_status": queued, "refused": refused,
            "node": ray.get_runtime_context().get_node_id()}

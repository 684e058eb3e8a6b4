"""A function for the worker tests (settings.functions = 'tests.platform.worker_functions:functions'):
it notes which process runs it, then holds, a long step to kill a worker in."""

from __future__ import annotations

import os
import time

from dropwire.functions.platform.context import HandlerContext
from dropwire.functions.platform.registry import FunctionRegistry, HttpEvent, OnHttp, Output

functions = FunctionRegistry()


@functions.function("hold", on=[OnHttp()], outputs=[Output(bucket="local", prefix="held/")], timeout_seconds=600,
                    max_attempts=1)
def hold(event: HttpEvent, context: HandlerContext) -> None:
    context.outputs.write_bytes("local", "held/pid", str(os.getpid()).encode())
    time.sleep(event.body["seconds"])

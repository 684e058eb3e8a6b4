"""Turning registered functions into queue tasks: each function is a task `fn:<name>` whose
runner calls the handler (in a sandbox process) and reports the invocation, its effects and
its outcome back to the queue. FunctionWorkers is the one way they run: inside the emulator
beside its store, or in a `dropwire worker` process against the control plane's socket; each
invocation in a local handler process, or (executor.kind = "ray") as a Ray task."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.platform.registry import FunctionRegistry, FunctionSpec, Invocation
from dropwire.functions.platform.tasks import (
    Completion,
    NotYet,
    PermanentTaskError,
    Refused,
    TaskContext,
    TaskFailed,
    TaskRegistry,
)
from dropwire.local_emulator.control_plane import start_pool
from dropwire.local_emulator.sandbox import ChildConfig, HandlerCrashed, HandlerTimeout, Outcome, Request, Sandbox
from dropwire.local_emulator.settings import Settings
from dropwire.local_emulator.workers import QueueBackend, WorkerPool
from dropwire.storage.records import InvocationRecord

if TYPE_CHECKING:
    from dropwire.local_emulator.ray_executor import RayExecutor

Runner = Callable[[FunctionSpec, Request], Outcome]


def invocation_tasks(functions: FunctionRegistry, runner: Runner) -> TaskRegistry:
    registry = TaskRegistry()
    for spec in functions:
        registry.task(spec.task_name, args_type=Invocation)(partial(_invoke, spec, runner))
    return registry


def _invoke(spec: FunctionSpec, runner: Runner, invocation: Invocation, context: TaskContext) -> Completion:
    started = time.time()
    request = Request(invocation=invocation, task_id=context.task_id, attempt=context.attempt,
                      max_attempts=context.max_attempts, deadline=started + spec.timeout_seconds)

    def record(outcome: str, error: str | None = None) -> InvocationRecord:
        return InvocationRecord(function=spec.name, source=invocation.source, event=invocation.event, started_at=started,
                                duration_ms=(time.time() - started) * 1000, outcome=outcome, error=error)

    try:
        outcome = runner(spec, request)
    except HandlerTimeout as exc:
        raise TaskFailed(exc.message, invocation=record("timed_out", exc.message)) from None
    except HandlerCrashed as exc:
        raise TaskFailed(exc.message, invocation=record("failed", exc.message)) from None
    if outcome.waits_for is not None:
        waits = outcome.waits_for
        raise NotYet(outcome.error or "a prerequisite is not there yet", kind=waits.kind, entity_id=waits.entity_id,
                     version=waits.seen_version, invocation=record("waiting", outcome.error))
    if outcome.refused:
        raise Refused(outcome.error or "the handler refused the request", invocation=record("refused", outcome.error))
    if not outcome.ok:
        failed = TaskFailed if outcome.retryable else PermanentTaskError
        raise failed(outcome.error or "the handler failed", traceback=outcome.traceback,
                     invocation=record("failed", outcome.error))
    return Completion(result=outcome.result, effects=outcome.effects, invocation=record("succeeded"))


class SandboxPool:
    """One sandbox process per dispatcher thread, started on first use."""

    def __init__(self, config: ChildConfig) -> None:
        self._config = config
        self._local = threading.local()
        self._all: list[Sandbox] = []
        self._lock = threading.Lock()
        self._prepared = threading.Condition(self._lock)
        self._ready = 0

    def _mine(self) -> Sandbox:
        sandbox = getattr(self._local, "sandbox", None)
        if sandbox is None:
            sandbox = self._local.sandbox = Sandbox(self._config)
            with self._lock:
                self._all.append(sandbox)
        return sandbox

    def prepare(self) -> None:
        """Start the calling thread's handler process now, not on its first event."""
        self._mine().start()
        with self._prepared:
            self._ready += 1
            self._prepared.notify_all()

    def wait_ready(self, count: int, timeout: float) -> bool:
        """Wait until `count` threads have a handler process that has loaded the functions."""
        with self._prepared:
            return self._prepared.wait_for(lambda: self._ready >= count, timeout)

    def run(self, spec: FunctionSpec, request: Request) -> Outcome:
        return self._mine().run(request)

    def close(self) -> None:
        with self._lock:
            for sandbox in self._all:
                sandbox.stop()


def handler_config(settings: Settings, *, on_ray: bool = False) -> ChildConfig:
    """What every handler process is given, wherever it runs: the catalog, the buckets, how to
    reach the control plane for state reads and output notes (over TCP from a Ray node or a
    worker elsewhere, when configured), the runtime and MLflow."""
    return ChildConfig(
        functions=settings.functions, roots=settings.object_roots(), storage_options=settings.storage_options(),
        control_socket=str(settings.control_socket_path), control_authkey=settings.control_key(),
        control_tcp=settings.control_for_remote_tasks() if on_ray else settings.control_address,
        runtime_url=settings.runtime_url,
        mlflow_tracking_uri=settings.mlflow_uri, mlflow_artifact_location=settings.mlflow_artifact_location,
        config=settings.domain_config())


def _executor(settings: Settings) -> SandboxPool | RayExecutor:
    if settings.executor.kind == "ray":
        from dropwire.local_emulator.ray_executor import RayExecutor  # ray is an optional extra

        return RayExecutor(settings.executor, handler_config(settings, on_ray=True))
    return SandboxPool(handler_config(settings))


class FunctionWorkers:
    """settings.queue.workers threads that claim the functions' invocation tasks, each thread
    with its own handler process (started before the first task) or submitting each task to
    Ray. `tasks` is known before start, so the store can be opened knowing the task names it
    serves."""

    ready_timeout_seconds = 180.0

    def __init__(self, settings: Settings, functions: FunctionRegistry) -> None:
        self.settings = settings
        self.executor = _executor(settings)
        self.tasks = invocation_tasks(functions, self.executor.run)
        self._pool: WorkerPool | None = None

    @property
    def threads(self) -> int:
        return self.settings.queue.workers

    def start(self, backend: QueueBackend, name: str) -> FunctionWorkers:
        """Start the threads against `backend` (the Store, or a ControlClient); return once
        every handler process has loaded the functions. On failure, call stop()."""
        if self.threads == 0:
            return self
        self._pool = start_pool(self.settings, backend, self.tasks, name, thread_start=self.executor.prepare)
        if not self.executor.wait_ready(self.threads, self.ready_timeout_seconds):
            raise DropwireError(f"the handler processes did not start within {self.ready_timeout_seconds:.0f}s; "
                                "see the log above")
        return self

    def stop(self) -> None:
        """Running handlers finish, claimed tasks not started are released, then the handler
        processes stop."""
        if self._pool is not None:
            self._pool.stop()
        self.executor.close()

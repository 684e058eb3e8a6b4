"""Running a handler: in-process for `dropwire invoke`, or in a long-lived child process per
dispatcher worker, so that a handler past its timeout can be killed (a thread cannot be) and
counted as a failed attempt, and a handler that crashes the interpreter takes only its child
with it."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import msgspec

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.platform.context import DomainRecords, HandlerContext, QuotaPort, StateChanges, StateReader
from dropwire.functions.platform.objects import ObjectStore, ObjectWriter
from dropwire.functions.platform.registry import FunctionSpec, Invocation, ObjectEvent, load_functions
from dropwire.functions.platform.tasks import NotYet, PermanentTaskError, Refused
from dropwire.storage.records import Effects, WaitFor

log = logging.getLogger("dropwire.sandbox")


class HandlerTimeout(DropwireError):
    code = "handler_timeout"


class HandlerCrashed(DropwireError):
    code = "handler_crashed"


class Request(msgspec.Struct, kw_only=True, frozen=True):
    invocation: Invocation
    task_id: int
    attempt: int
    max_attempts: int
    deadline: float


class Outcome(msgspec.Struct, kw_only=True, frozen=True):
    ok: bool
    result: Any = None
    effects: Effects = Effects()
    error: str | None = None
    traceback: str | None = None
    # False when the handler raised PermanentTaskError: no retry, straight to the dead letters.
    retryable: bool = True
    # True when the handler refused on purpose (it raised a DropwireError): its message says
    # why, so a person needs no traceback; a crash (any other exception) keeps it.
    on_purpose: bool = False
    # The handler raised Refused (the user's mistake: final, not a dead letter) or NotYet (its
    # prerequisite is not there yet: the task waits for this entity).
    refused: bool = False
    waits_for: WaitFor | None = None


# A handler that fails on an object that was being written meanwhile runs again on the
# finished object, at most this many times, instead of failing on a half-read file.
REREADS = 3


def execute(spec: FunctionSpec, request: Request, objects: ObjectStore, reader: StateReader,
            note_output: Callable[[str, str, int, str, int], None], runtime_url: str, mlflow_tracking_uri: str,
            mlflow_artifact_location: str | None, records: DomainRecords, quota: QuotaPort,
            config: dict[str, Any]) -> Outcome:
    """Call the handler with its context; what it asked to change comes back as effects."""
    invocation = request.invocation
    event = invocation.event
    for reread in range(REREADS + 1):
        before = objects.local_state(event.bucket, event.key) if isinstance(event, ObjectEvent) else None
        context = HandlerContext(
            function=spec.name, task_id=request.task_id, attempt=request.attempt, max_attempts=request.max_attempts,
            deadline=request.deadline, objects=objects,
            outputs=ObjectWriter(objects, spec.may_write,
                                 lambda bucket, key: note_output(bucket, key, invocation.hop + 1, spec.name, request.task_id),
                                 spec.name),
            state=StateChanges(reader, triggered_by=f"function:{spec.name}"),
            runtime_url=runtime_url, mlflow_tracking_uri=mlflow_tracking_uri,
            mlflow_artifact_location=mlflow_artifact_location, log=logging.getLogger(f"dropwire.fn.{spec.name}"),
            records=records, quota=quota, config=config,
        )
        try:
            result = spec.handler(event, context)
            return Outcome(ok=True, result=result, effects=context.state.effects())
        except Exception as exc:
            # Whatever the handler made of a half-written file (a crash, or a refusal of its
            # truncated content), the finished file is what it must judge.
            if before is not None and isinstance(event, ObjectEvent) and reread < REREADS and _finished_after_change(objects, event, before[0],
                                                                                request.deadline):
                log.info("%s/%s changed while function %s read it; reading the finished file again instead of "
                         "failing", event.bucket, event.key, spec.name)
                continue
            if isinstance(exc, (NotYet, Refused)):  # outcomes on purpose, not failures: the message is all a person needs
                return Outcome(ok=False, error=exc.message, retryable=False, on_purpose=True,
                               refused=isinstance(exc, Refused), waits_for=exc.waits_for if isinstance(exc, NotYet) else None)
            message = exc.message if isinstance(exc, DropwireError) else f"{type(exc).__name__}: {exc}"
            return Outcome(ok=False, error=message, traceback=traceback.format_exc(),
                           retryable=not isinstance(exc, PermanentTaskError), on_purpose=isinstance(exc, DropwireError))
    raise AssertionError("unreachable: the last read returns")


def _finished_after_change(objects: ObjectStore, event: ObjectEvent, read: str | None, deadline: float,
                           still_seconds: float = 0.1) -> bool:
    """Whether a local object changed since the handler began reading it (or is still being
    written), and is finished now: no one has it open for writing and it holds still. Waits
    for that until the handler's deadline is near."""
    state = objects.local_state(event.bucket, event.key)
    if state is None or state == (read, False) or state == (read, None):
        return False  # not a local object, or untouched: the failure is the handler's own
    while time.time() < deadline - 1.0:
        version, writing = state
        if version is None:
            return False  # deleted meanwhile: nothing to read again
        if not writing:
            time.sleep(still_seconds)
            later = objects.local_state(event.bucket, event.key)
            if later is not None and later[0] == version and not later[1]:
                return True
            state = later or state
            continue
        time.sleep(0.05)
        state = objects.local_state(event.bucket, event.key) or state
    return False


class ChildConfig(msgspec.Struct, frozen=True):
    functions: str
    roots: dict[str, str]
    storage_options: dict[str, dict]
    control_socket: str
    control_authkey: str
    runtime_url: str
    mlflow_tracking_uri: str
    mlflow_artifact_location: str | None
    #: Domain sections of the settings (HandlerContext.config).
    config: dict[str, Any] = {}
    # "host:port": the control plane is dialled over TCP instead (a Ray node or a worker elsewhere).
    control_tcp: str = ""


def _exit_with_parent(poll_seconds: float = 0.5) -> None:
    """A parent killed with -9 cannot stop its handler process, whose task will be retried
    elsewhere once the lease expires: the process stops itself rather than run on unseen."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="dropwire-parent-watch", daemon=True).start()


class HandlerHost:
    """What a process that runs handlers holds once: the functions, the object store and the
    control client (state reads, output notes). A handler process and a Ray worker both use it."""

    def __init__(self, config: ChildConfig) -> None:
        from pathlib import Path

        from dropwire.local_emulator.control import ControlClient
        from dropwire.local_emulator.settings import tcp_address

        self.config = config
        self.registry = load_functions(config.functions)
        self.objects = ObjectStore(config.roots, config.storage_options)
        self.client = ControlClient(tcp_address(config.control_tcp, "control_tcp") if config.control_tcp
                                    else Path(config.control_socket), config.control_authkey)
        self._decode = msgspec.msgpack.Decoder(Request).decode

    def _note(self, bucket: str, key: str, hop: int, function: str, task_id: int) -> None:
        self.client.receipts.record_output(bucket, key, hop=hop, function=function, task_id=task_id)

    def run(self, request_bytes: bytes) -> bytes:
        """One encoded Request in, one encoded Outcome out (a failed one if the result cannot
        be encoded, so the caller never waits on a reply that cannot come)."""
        request = self._decode(request_bytes)
        config = self.config
        outcome = execute(self.registry.get(request.invocation.function), request, self.objects, self.client,
                          self._note, config.runtime_url, config.mlflow_tracking_uri, config.mlflow_artifact_location,
                          self.client.records, self.client.quota, config.config)
        try:
            return msgspec.msgpack.encode(outcome)
        except (TypeError, msgspec.EncodeError) as exc:
            return msgspec.msgpack.encode(Outcome(ok=False, error=f"the handler's result cannot be encoded: {exc}"))


def _child_main(connection: Connection, config_bytes: bytes) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when children stop
    _exit_with_parent()
    host = HandlerHost(msgspec.msgpack.decode(config_bytes, type=ChildConfig))
    connection.send_bytes(b"ready")
    while True:
        try:
            request = connection.recv_bytes()
        except EOFError:
            return
        connection.send_bytes(host.run(request))


class Sandbox:
    """One child process that runs handlers one at a time; replaced when it is killed."""

    start_timeout_seconds = 120.0

    def __init__(self, config: ChildConfig) -> None:
        self._config = msgspec.msgpack.encode(config)
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._connection: Connection | None = None

    def start(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_child_main, args=(child, self._config), daemon=True,
                                              name="dropwire-handler")
        self._process.start()
        child.close()
        self._connection = parent
        # Ready means imported and loaded: the first event must not wait for that.
        try:
            ready = parent.poll(self.start_timeout_seconds) and parent.recv_bytes() == b"ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._process.exitcode
            self.stop(kill=True)
            raise HandlerCrashed(f"the handler process did not become ready within {self.start_timeout_seconds}s"
                                 + (f" (it exited with code {code}; see its error above)" if code is not None else ""))

    def run(self, request: Request) -> Outcome:
        self.start()
        assert self._connection is not None and self._process is not None
        self._connection.send_bytes(msgspec.msgpack.encode(request))
        timeout = max(0.0, request.deadline - time.time())
        if not self._connection.poll(timeout):
            self.stop(kill=True)
            raise HandlerTimeout(f"function {request.invocation.function!r} ran past its timeout "
                                 f"({timeout:.1f}s left at start) and was stopped")
        try:
            return msgspec.msgpack.decode(self._connection.recv_bytes(), type=Outcome)
        except (EOFError, OSError):
            self._process.join(1)
            code = self._process.exitcode
            self.stop(kill=True)
            raise HandlerCrashed(f"the process running function {request.invocation.function!r} died "
                                 f"(exit code {code})") from None

    def stop(self, kill: bool = False) -> None:
        if self._process is None:
            return
        if self._connection is not None:
            self._connection.close()
        if kill:
            self._process.kill()
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._process = self._connection = None

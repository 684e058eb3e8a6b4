"""Running claimed invocations as Ray tasks. The control plane keeps every piece of state: its
worker threads claim (lease + fencing token) and heartbeat as for local handler processes;
each invocation is one Ray task whose reply (the handler's outcome and effects) comes back
to the claiming thread, which hands it in with the completion. Ray's own retries are off: a
task lost with its worker or node is one failed attempt, retried by the queue with backoff,
so an effect still commits once. The handlers inside a Ray task read state and note outputs
through the control plane: over TCP when it listens there (settings control_tcp_*), so Ray
nodes may be other machines; else over its Unix socket, so on this machine only."""

from __future__ import annotations

import logging
import os
import socket
import time
from urllib.parse import urlsplit

import msgspec
import ray
from ray import exceptions as ray_errors

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.platform.registry import FunctionSpec
from dropwire.functions.platform.tasks import ExecutorLost
from dropwire.local_emulator.sandbox import ChildConfig, HandlerCrashed, HandlerHost, HandlerTimeout, Outcome, Request
from dropwire.local_emulator.settings import ExecutorSettings

log = logging.getLogger("dropwire.ray")


class RayUnavailable(DropwireError):
    code = "ray_unavailable"


# Ray ends a driver process whose cluster's GCS stays unreachable past this many seconds (60
# by default), and the driver is the emulator: the control plane, the gateway and the queue
# would go with it. Read once, when the driver connects; so long it never runs out, so the
# emulator stays up saying the cluster is gone, and leases return its invocations to the queue.
DRIVER_GCS_RECONNECT = ("RAY_gcs_rpc_server_reconnect_timeout_s", str(10**9))


# One HandlerHost per Ray worker process, made by its first invocation, for as long as the
# worker lives (the functions are loaded once, not per task).
_hosts: dict[bytes, HandlerHost] = {}


def _run_invocation(config_bytes: bytes, request_bytes: bytes) -> bytes:
    host = _hosts.get(config_bytes)
    if host is None:
        host = _hosts[config_bytes] = HandlerHost(msgspec.msgpack.decode(config_bytes, type=ChildConfig))
    return host.run(request_bytes)


_remote_invocation = ray.remote(max_retries=0, retry_exceptions=False)(_run_invocation)


def _answers(address: str, timeout: float) -> str | None:
    """None if host:port accepts a connection, else why not."""
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    if parts.hostname is None or parts.port is None:
        return f"{address!r} is not host:port or ray://host:port"
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _probe(address: str, timeout: float) -> None:
    """A host:port address that does not answer fails here at once, with its name, rather
    than after Ray's own long reconnect loop."""
    if address in ("", "auto", "local"):
        return
    problem = _answers(address, min(timeout, 5.0))
    if problem is not None:
        raise RayUnavailable(f"the Ray cluster at {address} does not answer ({problem}); "
                             "start it (ray start --head) or set executor.ray_address") from None


def _connect_driver(address: str) -> None:
    """ray.init with the driver's GCS reconnect timeout raised; the variable is set only
    while it connects, so Ray processes started later from this one keep their own."""
    name, value = DRIVER_GCS_RECONNECT
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        ray.init(address=address, namespace="dropwire", log_to_driver=True, configure_logging=False)
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class RayExecutor:
    """Submits each invocation as a Ray task with its function's resources; the calling worker
    thread waits for it until the invocation's deadline, then cancels it."""

    def __init__(self, settings: ExecutorSettings, config: ChildConfig) -> None:
        _probe(settings.ray_address, settings.ray_connect_timeout_seconds)
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            try:
                _connect_driver(settings.ray_address)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayUnavailable(f"the Ray cluster at {settings.ray_address} does not answer: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        # The cluster's own address (what "auto" found): probed when a task is lost, to tell a
        # lost node (a failed attempt) from a lost cluster (nothing runs until it is back).
        self._gcs = ray.get_runtime_context().gcs_address or settings.ray_address
        self._config = ray.put(msgspec.msgpack.encode(config))
        log.info("invocations run as Ray tasks on %s (%s CPU(s))", settings.ray_address,
                 ray.cluster_resources().get("CPU", 0))

    def prepare(self) -> None:
        """Nothing to start per thread: Ray starts its workers."""

    def wait_ready(self, count: int, timeout: float) -> bool:
        return True

    def run(self, spec: FunctionSpec, request: Request) -> Outcome:
        self._check_cluster(started=False)
        try:
            return self._run(spec, request)
        except HandlerCrashed:
            self._check_cluster(started=True)
            raise
        except SystemExit:  # Ray ends a driver thread this way when its cluster is gone
            raise ExecutorLost(f"the Ray cluster at {self._gcs} went away") from None

    def _check_cluster(self, *, started: bool) -> None:
        problem = _answers(self._gcs, 2.0)
        if problem is not None:
            raise ExecutorLost(f"the Ray cluster at {self._gcs} went away ({problem})", started=started)

    def _run(self, spec: FunctionSpec, request: Request) -> Outcome:
        resources = spec.resources
        options = {"num_cpus": resources.cpus, "num_gpus": resources.gpus, "name": f"dropwire:{spec.name}"}
        if resources.memory_bytes is not None:
            options["memory"] = resources.memory_bytes
        try:
            ref = _remote_invocation.options(**options).remote(self._config, msgspec.msgpack.encode(request))
        except ray_errors.RayError as exc:
            raise HandlerCrashed(f"function {spec.name!r} could not be submitted to Ray: {exc}") from None
        ready, _ = ray.wait([ref], timeout=max(0.0, request.deadline - time.time()))
        if not ready:
            ray.cancel(ref, force=True)
            raise HandlerTimeout(f"function {spec.name!r} ran past its timeout ({spec.timeout_seconds:.1f}s) "
                                 "and its Ray task was cancelled")
        try:
            reply = ray.get(ref)
        except ray_errors.TaskCancelledError:
            raise HandlerTimeout(f"the Ray task of function {spec.name!r} was cancelled") from None
        except (ray_errors.WorkerCrashedError, ray_errors.NodeDiedError, ray_errors.ObjectLostError,
                ray_errors.RaySystemError, ray_errors.TaskUnschedulableError) as exc:
            raise HandlerCrashed(f"the Ray task of function {spec.name!r} was lost "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        except ray_errors.RayTaskError as exc:
            # Raised outside the handler (the handler's own errors are in its Outcome).
            raise HandlerCrashed(f"the Ray task of function {spec.name!r} failed: {exc.cause!r}") from None
        try:
            return msgspec.msgpack.decode(reply, type=Outcome)
        except msgspec.DecodeError as exc:
            return Outcome(ok=False, error=f"the reply of function {spec.name!r} from Ray does not decode: {exc}")

    def close(self) -> None:
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()

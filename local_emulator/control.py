"""The control plane's RPC: the process that owns the DuckDB file serves the queue and
inspection calls over a Unix socket and, when configured, over TCP (both authenticated with
the one key, msgpack-framed), so worker processes, Ray tasks on other nodes and CLI tools can
work while it runs. A second owner is impossible (the file lock), so these are the only ways in."""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any, cast

import msgspec

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.quota import reads as quota_reads
from dropwire.storage.quota import Grant, Limits, Observation, Usage
from dropwire.storage.records import (
    Applied,
    ClaimedTask,
    DeadLetter,
    Done,
    Effects,
    InvocationRecord,
    NotificationRecord,
    QueueStats,
    TaskSpec,
    TaskStatus,
    WaitFor,
)
from dropwire.storage.store import Store

log = logging.getLogger("dropwire.control")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class ControlUnavailable(DropwireError):
    http_status = 503
    code = "control_unavailable"


def _error_classes() -> dict[str, type[DropwireError]]:
    found: dict[str, type[DropwireError]] = {}
    pending = [DropwireError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


# method name ("facet.method") -> (how to call the store, the type of each argument that needs converting)
_METHODS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "queue.claim": (lambda store, **kw: store.queue.claim(**kw), {}),
    "queue.heartbeat": (lambda store, leases, lease_seconds=None: store.queue.heartbeat([tuple(l) for l in leases], lease_seconds), {}),
    "queue.complete_many": (lambda store, done: [None if e is None else [e.code, e.message, {k: str(v) for k, v in e.details.items()}]
                                                 for e in store.queue.complete_many(done, wait=True)], {"done": list[Done]}),
    "queue.fail": (lambda store, **kw: store.queue.fail(**kw, wait=True), {"invocation": InvocationRecord | None}),
    "queue.release": (lambda store, **kw: store.queue.release(**kw), {}),
    "queue.wait_for": (lambda store, **kw: store.queue.wait_for(**kw, wait=True),
                       {"waits_for": WaitFor, "invocation": InvocationRecord | None}),
    "queue.refuse": (lambda store, **kw: store.queue.refuse(**kw, wait=True), {"invocation": InvocationRecord | None}),
    "queue.enqueue": (lambda store, **kw: store.queue.enqueue(**kw), {"spec": TaskSpec}),
    "queue.task": (lambda store, **kw: store.queue.task(**kw), {}),
    "queue.stats": (lambda store: store.queue.stats(), {}),
    "queue.dead_letters": (lambda store, **kw: store.queue.dead_letters(**kw), {}),
    "queue.dead_letter": (lambda store, **kw: store.queue.dead_letter(**kw), {}),
    "queue.replay_dead_letter": (lambda store, **kw: store.queue.replay_dead_letter(**kw), {}),
    "queue.cleanup": (lambda store, **kw: store.queue.cleanup(**kw), {}),
    "states.current": (lambda store, **kw: store.states.current(**kw), {}),
    "states.apply": (lambda store, **kw: store.states.apply(**kw), {"effects": Effects}),
    "receipts.record_output": (lambda store, **kw: store.receipts.record_output(**kw), {}),
    "receipts.hops_of": (lambda store, objects: list(store.receipts.hops_of([tuple(o) for o in objects]).items()), {}),
    "receipts.fire_schedule": (lambda store, **kw: store.receipts.fire_schedule(**kw), {"spec": TaskSpec}),
    "outbox.notifications": (lambda store, **kw: store.outbox.notifications(**kw), {}),
    "export": (lambda store, directory: str(store.export(directory)), {}),
    "query": (lambda store, **kw: store.query(**kw), {}),
    "query_table": (lambda store, **kw: store.query_table(**kw), {}),
    "records.record": (lambda store, **kw: store.records.record(**kw), {}),
    "quota.acquire": (lambda store, **kw: store.quota.acquire(**kw), {"limits": Limits}),
    "quota.settle": (lambda store, **kw: store.quota.settle(**kw), {"grant": Grant}),
    "quota.observe": (lambda store, **kw: store.quota.observe(**kw), {"observations": list[Observation]}),
    "quota.count": (lambda store, **kw: store.quota.count(**kw), {"usage": list[Usage]}),
    "queue.wake": (lambda store, **kw: store.queue.wake(**kw), {}),
}


class ControlServer:
    """Serves the store on the Unix socket and, with ``tcp`` (host, port), on TCP as well.
    ``config``: the product's settings sections it runs with (Settings.domain_config), for the
    answers that depend on them (a quota's limits), so a tool reports this process's, not its own."""

    def __init__(self, store: Store, socket_path: Path, authkey: str, tcp: tuple[str, int] | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.store = store
        self._methods = {**_METHODS, "quota.usage": (
            lambda store, service: quota_reads.configured_usage(store.query, service, config or {}), {})}
        self.socket_path = socket_path
        self._authkey = authkey.encode()
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        if socket_path.exists():
            # We own the database, so any socket left here is from a dead owner.
            socket_path.unlink()
        # The key is checked per connection in its own thread (not in accept()), so a peer
        # that never answers the challenge holds up nobody else.
        self._listeners = [Listener(str(socket_path), family="AF_UNIX")]
        socket_path.chmod(0o600)  # only this user may even try the key
        if tcp is not None:
            try:
                self._listeners.append(Listener(tcp, family="AF_INET"))
            except OSError as exc:
                self._listeners[0].close()
                raise ControlUnavailable(f"the control plane cannot listen on {tcp[0]}:{tcp[1]} "
                                         f"(settings control_tcp_host/control_tcp_port): {exc.strerror or exc}") from None
        self._closed = threading.Event()
        self._accepting = [threading.Thread(target=self._accept, args=(listener,), name="dropwire-control", daemon=True)
                           for listener in self._listeners]

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """Where the TCP listener is bound (its real port when 0 was asked for)."""
        # An AF_INET listener's address is its (host, port); the stubs type every family's.
        return cast("tuple[str, int]", self._listeners[1].address) if len(self._listeners) > 1 else None

    @property
    def listening(self) -> str:
        """Where it listens, for the start-up log line."""
        tcp = self.tcp_address
        return f"socket {self.socket_path}" + (f" and TCP {tcp[0]}:{tcp[1]}" if tcp else "")

    def start(self) -> ControlServer:
        for thread in self._accepting:
            thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        for listener in self._listeners:
            listener.close()
        self.socket_path.unlink(missing_ok=True)

    def _accept(self, listener: Listener) -> None:
        while not self._closed.is_set():
            try:
                connection = listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _authenticated(self, connection: Connection, peer: str) -> bool:
        try:
            deliver_challenge(connection, self._authkey)
            answer_challenge(connection, self._authkey)
            return True
        except (AuthenticationError, EOFError, OSError) as exc:  # the wrong key, or a peer that hung up
            log.warning("refused a control connection from %s: %s", peer, exc or type(exc).__name__)
            return False

    def _serve(self, connection: Connection) -> None:
        peer, worker = _peer(connection), None
        with connection:
            if not self._authenticated(connection, peer):
                return
            while not self._closed.is_set():
                try:
                    method, kwargs = _decode(connection.recv_bytes())
                except (EOFError, OSError):
                    return  # the peer hung up between calls
                if method == "queue.claim":
                    worker = kwargs.get("worker")
                reply = self._dispatch(method, kwargs)
                try:
                    connection.send_bytes(reply)
                except OSError as exc:
                    # A worker killed while its call ran: expected. What it held is retried
                    # once its lease expires.
                    log.warning("control peer %s%s went away before the answer to its %s call (%s)", peer,
                                f" (worker {worker})" if worker else "", method, type(exc).__name__)
                    return

    def _dispatch(self, method: str, kwargs: dict[str, Any]) -> bytes:
        try:
            if method not in self._methods:
                raise DropwireError(f"unknown control method {method!r}")
            call, types = self._methods[method]
            for name, kind in types.items():
                if name in kwargs:
                    kwargs[name] = msgspec.convert(kwargs[name], kind)
            return _encode(["ok", call(self.store, **kwargs)])
        except DropwireError as exc:
            return _encode(["error", exc.code, exc.message, {k: str(v) for k, v in exc.details.items()}])
        except Exception as exc:
            log.exception("control call %s failed", method)
            return _encode(["error", "internal", f"{type(exc).__name__}: {exc}", {}])


def _peer(connection: Connection) -> str:
    """Who is on the other end, for the log: host:port over TCP, else its process id where
    the system tells (SO_PEERCRED on Linux)."""
    try:
        with socket.socket(fileno=os.dup(connection.fileno())) as sock:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                host, port = sock.getpeername()[:2]
                return f"{host}:{port}"
            pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return f"process {pid}"
    except (AttributeError, OSError):
        return f"on descriptor {connection.fileno()}"


class ControlClient:
    """Speaks to a running control plane: the store's facets (`queue`, `states`, `receipts`,
    `outbox`) and `query`/`export`, each with the calls a process outside may make."""

    _errors = _error_classes()

    def __init__(self, address: Path | tuple[str, int], authkey: str) -> None:
        """``address``: the Unix socket's path, or (host, port) over TCP."""
        self.address = address
        self._family = "AF_UNIX" if isinstance(address, Path) else "AF_INET"
        self.where = str(address) if isinstance(address, Path) else f"{address[0]}:{address[1]}"
        self._authkey = authkey.encode()
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._connection()  # fail now, clearly, if nobody listens
        self.queue = _RemoteQueue(self)
        self.states = _RemoteStates(self)
        self.receipts = _RemoteReceipts(self)
        self.outbox = _RemoteOutbox(self)
        self.records = _RemoteRecords(self)
        self.quota = _RemoteQuota(self)

    def _connection(self) -> Connection:
        """One connection per thread, so a worker's long-poll claim never delays a heartbeat."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            address = str(self.address) if isinstance(self.address, Path) else self.address
            try:
                connection = Client(address, family=self._family, authkey=self._authkey)
            except (FileNotFoundError, ConnectionRefusedError):
                raise ControlUnavailable(f"no control plane is listening on {self.where}; start one with "
                                         "`dropwire emulate` (or `dropwire control --tasks MODULE:ATTR`)") from None
            except AuthenticationError:
                raise ControlUnavailable(f"the control plane on {self.where} refused the key (setting "
                                         "control_authkey, or the data dir's control.key)") from None
            except Exception as exc:
                raise ControlUnavailable(f"the control plane on {self.where} refused the connection: {exc}") from None
            self._local.connection = connection
            self._connections.append(connection)
        return connection

    @classmethod
    def try_connect(cls, address: Path | tuple[str, int], authkey: str) -> ControlClient | None:
        if isinstance(address, Path) and not address.exists():
            return None
        try:
            return cls(address, authkey)
        except ControlUnavailable:
            return None

    def close(self) -> None:
        for connection in self._connections:
            connection.close()

    def _call(self, method: str, result_type: Any = Any, **kwargs: Any) -> Any:
        connection = self._connection()
        try:
            connection.send_bytes(_encode([method, kwargs]))
            reply = _decode(connection.recv_bytes())
        except (EOFError, OSError) as exc:
            self._local.connection = None
            raise ControlUnavailable(f"lost the control plane on {self.where}: {exc or 'connection closed'}") from None
        if reply[0] == "ok":
            return msgspec.convert(reply[1], result_type)
        _, code, message, details = reply
        raise self._errors.get(code, DropwireError)(message, **details)

    def export(self, directory: Path | str) -> Path:
        return Path(self._call("export", str, directory=str(Path(directory).resolve())))

    def query(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        return [tuple(row) for row in self._call("query", list, sql=sql, params=list(params))]

    def query_table(self, sql: str, params: list | tuple = ()) -> tuple[list[str], list[tuple]]:
        columns, rows = self._call("query_table", list, sql=sql, params=list(params))
        return columns, [tuple(row) for row in rows]


class _RemoteQueue:
    """The store's queue facet, remotely: what WorkerPool needs, and the CLI's inspection."""

    def __init__(self, client: ControlClient) -> None:
        self._call = client._call
        self._errors = client._errors

    def claim(self, worker: str, *, names: Iterable[str] | None = None, limit: int = 1,
              lease_seconds: float | None = None, wait_seconds: float = 0.0) -> list[ClaimedTask]:
        return self._call("queue.claim", list[ClaimedTask], worker=worker, names=sorted(names) if names is not None else None,
                          limit=limit, lease_seconds=lease_seconds, wait_seconds=wait_seconds)

    def heartbeat(self, leases: Iterable[tuple[int, int]], lease_seconds: float | None = None) -> list[int]:
        return self._call("queue.heartbeat", list[int], leases=[list(l) for l in leases], lease_seconds=lease_seconds)

    def complete_many(self, done: list[Done], *, wait: bool = True) -> Any:
        def call() -> list[DropwireError | None]:
            return [None if outcome is None else self._errors.get(outcome[0], DropwireError)(outcome[1], **outcome[2])
                    for outcome in self._call("queue.complete_many", list, done=done)]

        return _maybe_future(wait, call)

    def fail(self, task_id: int, token: int, *, error: str, traceback: str | None = None, retryable: bool = True,
             invocation: InvocationRecord | None = None, wait: bool = True) -> Any:
        return _maybe_future(wait, lambda: self._call("queue.fail", task_id=task_id, token=token, error=error,
                                                      traceback=traceback, retryable=retryable, invocation=invocation))

    def release(self, task_id: int, token: int) -> None:
        self._call("queue.release", task_id=task_id, token=token)

    def wait_for(self, task_id: int, token: int, *, error: str, waits_for: WaitFor,
                 invocation: InvocationRecord | None = None, wait: bool = True) -> Any:
        return _maybe_future(wait, lambda: self._call("queue.wait_for", task_id=task_id, token=token, error=error,
                                                      waits_for=waits_for, invocation=invocation))

    def refuse(self, task_id: int, token: int, *, error: str, invocation: InvocationRecord | None = None,
               wait: bool = True) -> Any:
        return _maybe_future(wait, lambda: self._call("queue.refuse", task_id=task_id, token=token, error=error,
                                                      invocation=invocation))

    def enqueue(self, spec: TaskSpec) -> int:
        return self._call("queue.enqueue", int, spec=spec)

    def task(self, task_id: int) -> TaskStatus:
        return self._call("queue.task", TaskStatus, task_id=task_id)

    def stats(self) -> QueueStats:
        return self._call("queue.stats", QueueStats)

    def dead_letters(self, *, include_replayed: bool = False) -> list[DeadLetter]:
        return self._call("queue.dead_letters", list[DeadLetter], include_replayed=include_replayed)

    def dead_letter(self, task_id: int) -> DeadLetter:
        return self._call("queue.dead_letter", DeadLetter, task_id=task_id)

    def replay_dead_letter(self, task_id: int, *, triggered_by: str = "operator") -> int:
        return self._call("queue.replay_dead_letter", int, task_id=task_id, triggered_by=triggered_by)

    def cleanup(self, older_than_days: float) -> int:
        return self._call("queue.cleanup", int, older_than_days=older_than_days)

    def wake(self, key_prefix: str) -> int:
        return self._call("queue.wake", int, key_prefix=key_prefix)


class _RemoteStates:
    """The store's states facet, remotely: what handler processes read and commit."""

    def __init__(self, client: ControlClient) -> None:
        self._call = client._call

    def current(self, kind: str, entity_id: str) -> tuple[str, int]:
        return tuple(self._call("states.current", list, kind=kind, entity_id=entity_id))

    def apply(self, effects: Effects) -> Applied:
        return self._call("states.apply", Applied, effects=effects)


class _RemoteReceipts:
    """The store's receipts facet, remotely: output lineage and schedule runs."""

    def __init__(self, client: ControlClient) -> None:
        self._call = client._call

    def record_output(self, bucket: str, key: str, *, hop: int, function: str, task_id: int) -> None:
        self._call("receipts.record_output", bucket=bucket, key=key, hop=hop, function=function, task_id=task_id)

    def hops_of(self, objects: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        pairs = self._call("receipts.hops_of", list, objects=[list(o) for o in objects])
        return {(bucket, key): hop for (bucket, key), hop in pairs}

    def fire_schedule(self, schedule: str, fire_time: float, spec: TaskSpec) -> int | None:
        return self._call("receipts.fire_schedule", int | None, schedule=schedule, fire_time=fire_time, spec=spec)


class _RemoteRecords:
    """The domain facets' records port (store.records), for handler processes: durable when it returns."""

    def __init__(self, client: ControlClient) -> None:
        self._call = client._call

    def record(self, op: str, payload: Any) -> None:
        self._call("records.record", op=op, payload=msgspec.to_builtins(payload))


class _RemoteQuota:
    """The quota facet, remotely: handler processes admit metered requests through it."""

    def __init__(self, client: ControlClient) -> None:
        self._call = client._call

    def acquire(self, service: str, limits: Limits, *, tokens: int = 0, cost_usd: float = 0.0) -> Grant:
        return self._call("quota.acquire", Grant, service=service, limits=limits, tokens=tokens, cost_usd=cost_usd)

    def settle(self, grant: Grant, *, sent: bool, input_tokens: int = 0, output_tokens: int = 0,
               cost_usd: float = 0.0) -> None:
        self._call("quota.settle", grant=grant, sent=sent, input_tokens=input_tokens, output_tokens=output_tokens,
                   cost_usd=cost_usd)

    def observe(self, service: str, observations: list[Observation]) -> None:
        self._call("quota.observe", service=service, observations=observations)

    def count(self, service: str, usage: list[Usage]) -> bool:
        return self._call("quota.count", bool, service=service, usage=usage)

    def usage(self, service: str) -> quota_reads.QuotaUsage:
        """A service's usage under the limits the control plane runs with."""
        return self._call("quota.usage", quota_reads.QuotaUsage, service=service)


class _RemoteOutbox:
    def __init__(self, client: ControlClient) -> None:
        self._call = client._call

    def notifications(self, status: str | None = None, limit: int = 100) -> list[NotificationRecord]:
        return self._call("outbox.notifications", list[NotificationRecord], status=status, limit=limit)


def _maybe_future(wait: bool, call: Callable[[], Any]) -> Any:
    if wait:
        return call()
    future: Future = Future()
    try:
        future.set_result(call())
    except Exception as exc:
        future.set_exception(exc)
    return future

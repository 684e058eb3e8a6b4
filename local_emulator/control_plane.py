"""Wiring the control plane: the Store (sole owner of the database), its RPC socket, and the
local worker threads; plus the way tools reach the store whether or not one is running."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

from dropwire.functions.kit.errors import DatabaseUnusable
from dropwire.functions.machines import MACHINES
from dropwire.functions.platform.domain import machines_of, migrations_of
from dropwire.functions.platform.tasks import TaskRegistry
from dropwire.local_emulator.control import ControlClient, ControlServer
from dropwire.local_emulator.settings import Settings
from dropwire.local_emulator.workers import WorkerPool
from dropwire.storage import migrate
from dropwire.storage.store import Store

log = logging.getLogger("dropwire.control_plane")


def open_store(settings: Settings, registry: TaskRegistry | None = None, domains: tuple = ()) -> Store:
    """The store, with the machines and migrations of `domains` (those the served registry was
    built from), else the product catalog's machines and the platform's migrations."""
    return Store.open(settings.database_path, machines_of(domains) if domains else MACHINES, settings=settings.queue,
                      database=settings.database, known_tasks=registry.names() if registry is not None else None,
                      migrations=migrate.chain(migrations_of(domains)))


def start_pool(settings: Settings, backend, registry: TaskRegistry, name: str,
               thread_start: Callable[[], None] | None = None) -> WorkerPool:
    queue = settings.queue
    return WorkerPool(backend, registry, workers=queue.workers, max_prefetch=queue.max_prefetch,
                      claim_batch_seconds=queue.claim_batch_seconds, lease_seconds=queue.lease_seconds,
                      heartbeat_seconds=queue.heartbeat_seconds, name=name, thread_start=thread_start).start()


def running_control_plane(settings: Settings) -> ControlClient | None:
    """A client of the control plane running on this data dir, or None; creates nothing (no
    key where none was made: then no control plane ever ran here)."""
    key = settings.existing_control_key()
    return None if key is None else ControlClient.try_connect(settings.control_socket_path, key)


def require_database(settings: Settings) -> None:
    """A command that only reads refuses where there is no database yet, creating nothing
    (it would otherwise make an empty one and report it as empty)."""
    path = settings.database_path.absolute()
    if path.exists():
        return
    if settings.db_path:
        where, fix = "with this db_path", "set DROPWIRE_DB_PATH to the database you mean"
    else:
        where, fix = f"with data dir {settings.data_path.absolute()}", "set DROPWIRE_DATA_DIR to the data dir that has one"
    raise DatabaseUnusable(f"database {path} does not exist yet: nothing has run {where}; `dropwire emulate` "
                           f"(or `dropwire demo`) there creates it, or {fix}", path=str(path))


@contextlib.contextmanager
def read_access(settings: Settings) -> Iterator[Store | ControlClient]:
    """As store_access, for a command that only reads: no database is one clear error."""
    require_database(settings)
    with store_access(settings) as store:
        yield store


@contextlib.contextmanager
def store_access(settings: Settings) -> Iterator[Store | ControlClient]:
    """The running control plane if there is one, else the database file opened directly."""
    client = running_control_plane(settings)
    if client is not None:
        try:
            yield client
        finally:
            client.close()
        return
    with open_store(settings) as store:
        yield store


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a long-running command can stop in order."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_control_plane(settings: Settings, registry: TaskRegistry, stop: threading.Event) -> None:
    """Own the database, serve the socket, run local workers until `stop` is set; then stop
    in order: workers finish or release their tasks, the socket closes, the store commits
    what it has and closes."""
    store = open_store(settings, registry)
    server = ControlServer(store, settings.control_socket_path, settings.control_key(), settings.control_tcp,
                           settings.domain_config()).start()
    pool = start_pool(settings, store.queue, registry, "local") if registry.names() else None
    log.info("control plane up: database %s, %s, %d local worker(s)", settings.database_path, server.listening,
             settings.queue.workers if pool else 0)
    try:
        stop.wait()
    finally:
        if pool is not None:
            pool.stop()
        server.close()
        store.close()
        log.info("control plane stopped")

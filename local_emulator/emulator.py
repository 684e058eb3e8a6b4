"""The whole platform on one machine: the store and its control socket, the dispatcher
(queue.workers threads, each with a handler process; 0 when `dropwire worker` processes do
the work), event sources (a local folder, and S3 via SQS when configured), optional chaos,
the scheduler, the notifier and the HTTP gateway. Stops in order: no new events, held events
delivered, gateway closed, no new schedules, notifier stopped, running handlers finished and
claimed tasks released, then the store commits and closes."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import uvicorn

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.platform.objects import ObjectStore
from dropwire.functions.platform.registry import FunctionRegistry, load_functions
from dropwire.local_emulator.chaos import Chaos
from dropwire.local_emulator.control import ControlServer
from dropwire.local_emulator.control_plane import open_store
from dropwire.local_emulator.dispatcher import FunctionWorkers
from dropwire.local_emulator.gateway import build_gateway
from dropwire.local_emulator.notifier import Notifier
from dropwire.local_emulator.router import EventRouter
from dropwire.local_emulator.schedules import Scheduler
from dropwire.local_emulator.settings import Settings
from dropwire.local_emulator.sources.folder import FolderSource
from dropwire.local_emulator.sources.reconcile import Reconciler
from dropwire.local_emulator.sources.s3 import SqsSource

log = logging.getLogger("dropwire.emulator")


@dataclass(frozen=True)
class ChaosSettings:
    duplicate: float = 0.0
    reorder: float = 0.0
    max_delay_seconds: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("duplicate", "reorder"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"chaos {name} must be a probability from 0 to 1, got {getattr(self, name)}")
        if self.max_delay_seconds < 0:
            raise ValueError(f"chaos max_delay_seconds must be 0 or more, got {self.max_delay_seconds}")

    @property
    def active(self) -> bool:
        return bool(self.duplicate or self.reorder or self.max_delay_seconds)


class Emulator:
    def __init__(self, settings: Settings, *, chaos: ChaosSettings = ChaosSettings(),
                 functions: FunctionRegistry | None = None, serve_http: bool = True) -> None:
        self.settings = settings
        self.functions = functions or load_functions(settings.functions)
        self.chaos_settings = chaos
        self.serve_http = serve_http
        self._stops: list = []

    def start(self) -> Emulator:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Emulator:
        settings = self.settings
        self.objects = ObjectStore(settings.object_roots(), settings.storage_options())
        self.workers = FunctionWorkers(settings, self.functions)
        # The database lock first: an emulator started beside a running one stops here with
        # one line. The MLflow store is opened (and a new one migrated) on first use, not here.
        self.store = open_store(settings, self.workers.tasks, self.functions.domains)
        self._stops.append(self.store.close)
        # What start loads, so a slow start is not silence (after the lock: a second emulator
        # on this data dir says one line); the heavy libraries wait for their first use.
        log.info("starting: database %s open; %d worker(s) each loading the functions (%s)%s; MLflow, torch, "
                 "transformers and bm25s load on first use", settings.database_path, settings.queue.workers,
                 settings.functions, ", the HTTP gateway" if self.serve_http else "")
        server = ControlServer(self.store, settings.control_socket_path, settings.control_key(), settings.control_tcp,
                               settings.domain_config()).start()
        self._stops.append(server.close)
        log.info("control plane on %s", server.listening)
        self._stops.append(self.workers.stop)
        self.workers.start(self.store.queue, "dispatcher")

        self.notifier = Notifier(self.store.outbox, settings.notify, settings.outbox_path, settings.storage_options()).start()
        self._stops.append(self.notifier.stop)
        self.router = EventRouter(self.functions, self.store.receipts, self.store.queue, settings.events.hop_limit)
        self.scheduler = Scheduler(self.functions, self.store.receipts).start()
        self._stops.append(self.scheduler.stop)
        route = self.router.route
        if self.chaos_settings.active:
            chaos = Chaos(route, duplicate=self.chaos_settings.duplicate, reorder=self.chaos_settings.reorder,
                          max_delay_seconds=self.chaos_settings.max_delay_seconds, seed=self.chaos_settings.seed)
            self._stops.append(chaos.close)
            route = chaos.submit
        # Both sources route through the router, which keeps their admission health (/health, /metrics).
        self.folder = None
        if not settings.events.bucket_s3:  # the bucket is the local folder
            self.router.health.expect("folder")
            reconciler = Reconciler(self.functions, self.store.query, settings.events.bucket, settings.data_path / "tmp")
            self.folder = FolderSource(settings.bucket_path, settings.events.bucket, route, settings.events.settle_seconds,
                                       unadmitted=reconciler.unadmitted,
                                       reconcile_seconds=settings.events.reconcile_seconds)
        if self.serve_http:
            self._start_gateway()
        if self.folder is not None:
            self.folder.start()
            self._stops.append(self.folder.stop)
        if settings.events.sqs_queue_url:
            self.router.health.expect("sqs")
            import boto3  # only for S3 events: boto3 takes most of a second to import

            sqs = boto3.client("sqs", region_name=settings.events.aws_region,
                               endpoint_url=settings.events.s3_endpoint_url or None)
            self._stops.append(SqsSource(sqs, settings.events.sqs_queue_url, route, settings.events.sqs_wait_seconds,
                                         settings.events.bucket_names).start().stop)
        log.info("emulator up: bucket %s = %s, database %s, %d function(s)%s", settings.events.bucket,
                 self.objects.roots[settings.events.bucket], settings.database_path, len(list(self.functions)),
                 f", HTTP on http://{settings.http.host}:{settings.http.port}" if self.serve_http else "")
        return self

    def _start_gateway(self) -> None:
        settings = self.settings
        app = build_gateway(self.store, self.functions, self.objects, settings.events.bucket, self.router, self.scheduler,
                            settings.http.api_tokens, settings.http.max_upload_bytes, settings.domain_config(),
                            settings.inference_base_url, settings.runtime.request_timeout_s, settings.http.open_docs,
                            recovered=(lambda folder=self.folder: folder.recovered) if self.folder is not None else None)
        server = uvicorn.Server(uvicorn.Config(app, host=settings.http.host, port=settings.http.port,
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, name="dropwire-gateway", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise DropwireError(f"the HTTP gateway could not start on {settings.http.host}:{settings.http.port} "
                                    "(is the port in use? set DROPWIRE_HTTP__PORT)")
            time.sleep(0.01)

        def stop() -> None:
            server.should_exit = True
            thread.join()

        self._stops.append(stop)

    def stop(self) -> None:
        if not self._stops:
            return  # nothing started (e.g. the database is another emulator's): nothing to report
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception:
                log.exception("stopping %s failed", getattr(stop, "__qualname__", stop))
        log.info("emulator stopped")

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

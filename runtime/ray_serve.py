"""The runtime as a Ray Serve deployment. Each replica opens the same RuntimeHost and
serves the same Litestar app as `dropwire runtime serve`, whatever routes it has, so the
HTTP contract is one. Ray Serve has no request priority: the two lanes (interactive before
background) stay inside each replica's scheduler. The Serve proxy listens on the runtime's
host and port, so handlers reach it through the same runtime URL."""

from __future__ import annotations

import logging
from pathlib import Path

from litestar import Litestar
from ray import serve

from dropwire.runtime.app import create_app
from dropwire.runtime.host import RuntimeHost
from dropwire.runtime.model_source import ModelSource
from dropwire.runtime.settings import RuntimeSettings

APP_NAME = "dropwire-runtime"


@serve.ingress()
class RuntimeReplica:
    def __init__(self, settings: RuntimeSettings, model_source: ModelSource, text_model_dir: Path) -> None:
        self._log = logging.getLogger("dropwire.runtime")
        self._log.setLevel(settings.log_level.upper())
        self._host = RuntimeHost(settings, model_source, self._log, text_model_dir=text_model_dir)
        self._host.open()  # a model that cannot load fails the replica, with its error

    def __serve_build_asgi_app__(self) -> Litestar:
        # The app's shutdown hook runs the host's ordered shutdown when Serve stops the replica.
        return create_app(self._host, self._log)


def deploy(settings: RuntimeSettings, model_source: ModelSource, *, text_model_dir: Path, replicas: int = 1,
           cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0) -> str:
    """Run the runtime on the connected Ray cluster (ray.init first); returns its URL."""
    serve.start(http_options={"host": settings.host, "port": settings.port})
    deployment = serve.deployment(RuntimeReplica, name="runtime", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    serve.run(deployment.bind(settings, model_source, text_model_dir), name=APP_NAME, route_prefix="/")
    return f"http://{settings.host}:{settings.port}"


def undeploy() -> None:
    serve.delete(APP_NAME)

"""The runtime's Litestar app. Every error, ours or Litestar's, answers with the product's one
error body ``{error, message, details, timestamp}``.

    POST   /datasets?precompute=true        CSV body -> handle; background precompute starts
    GET    /datasets/{handle}               what is known about it
    DELETE /datasets/{handle}               drop it and all its pending work
    GET    /datasets/{handle}/forecasts/{index}?format=json|png     interactive: ahead of everything
    GET    /datasets/{handle}/forecasts?start=&stop=&wait=S         a range at background priority
    POST   /quick-draw?format=json|png      CSV body -> forecast of its last index, then forgotten
    PUT    /forecasts/background           {"paused": bool}: hold or resume the background lane
    GET    /health, GET /stats
    /v1/...                             OpenAI-compatible text generation (textgen/api.py)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Schema
from litestar.params import Parameter

from dropwire.functions.kit.http_errors import exception_handlers
from dropwire.functions.kit.http_options import complete_allow_header
from dropwire.functions.kit.openapi import assets_router, error_responses, openapi_config, upload_operation
from dropwire.runtime import metrics
from dropwire.runtime.forecast_schemas import (
    BackgroundLane,
    BackgroundLaneChange,
    DatasetInfo,
    Deleted,
    Forecast,
    ForecastRange,
    Health,
    Stats,
)
from dropwire.runtime.forecast_service import upload_limit_error
from dropwire.runtime.host import RuntimeHost
from dropwire.runtime.plotting import fan_chart_png
from dropwire.runtime.textgen.api import textgen_router

Format = Literal["json", "png"]
# Answers even while shutting down: monitoring must see it happen.
ALWAYS_OPEN = frozenset({"/stats"})
CSV_BODY = upload_operation("the time series as CSV: a timestamp column, then one column per series",
                            media_types=("text/csv",), multipart=False)


def or_png(base: type[Operation] = Operation) -> type[Operation]:
    """``base`` whose 200 answer is the forecast as JSON, or with ?format=png its fan chart."""

    @dataclass
    class ForecastOperation(base):  # type: ignore[valid-type, misc]
        def __post_init__(self) -> None:
            if hasattr(super(), "__post_init__"):
                super().__post_init__()
            png = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, content_media_type="image/png"))
            self.responses["200"].content["image/png"] = png  # type: ignore[index, union-attr]

    return ForecastOperation


def create_app(host: RuntimeHost, log: logging.Logger) -> Litestar:
    service = host.forecasts
    limit = service.settings.max_upload_bytes

    async def forecast_response(forecast: Forecast, output: Format) -> Response[Forecast]:
        if output == "png":
            return Response(await asyncio.to_thread(fan_chart_png, forecast), media_type="image/png")
        return Response(forecast)

    @post("/datasets", operation_class=CSV_BODY, responses=error_responses(400, 413, 422, 500, 503))
    async def process_and_cache(request: Request, precompute: bool = True) -> Response[DatasetInfo]:
        info, created = await service.upload(await request.body(), precompute=precompute)
        return Response(info, status_code=201 if created else 200)

    @get("/datasets/{handle:str}", responses=error_responses(400, 404, 500, 503))
    async def show_dataset(handle: str) -> DatasetInfo:
        return service.info(handle)

    @delete("/datasets/{handle:str}", status_code=200, responses=error_responses(400, 404, 500, 503))
    async def delete_dataset(handle: str) -> Deleted:
        return service.delete(handle)

    @get("/datasets/{handle:str}/forecasts/{index:int}", responses=error_responses(400, 404, 422, 500, 503, 504),
         operation_class=or_png())
    async def draw(handle: str, index: int, format: Format = "json") -> Response[Forecast]:
        return await forecast_response(await service.forecast(handle, index), format)

    @get("/datasets/{handle:str}/forecasts", responses=error_responses(400, 404, 422, 500, 503, 504))
    async def draw_range(
        handle: str, start: int, stop: int, wait: float | None = Parameter(default=None, gt=0)
    ) -> ForecastRange:
        # For batch consumers: never jumps ahead of interactive work, waits (bounded) for
        # the background lane instead.
        return await service.forecast_range(handle, start, stop, wait)

    @post("/quick-draw", status_code=200, operation_class=or_png(CSV_BODY),
          responses=error_responses(400, 413, 422, 500, 503, 504))
    async def quick_draw(request: Request, format: Format = "json") -> Response[Forecast]:
        return await forecast_response(await service.quick_draw(await request.body()), format)

    @put("/forecasts/background", responses=error_responses(400, 500, 503))
    async def background_lane(data: BackgroundLaneChange) -> BackgroundLane:
        # Interactive work goes on while it is held; range fetches wait until it resumes.
        return service.pause_background(data.paused)

    @get("/health", responses=error_responses(500, 503))
    async def health() -> Health:
        return service.health()  # 503 (the error shape) once shutting down

    @get("/stats", responses=error_responses(500))
    async def stats() -> Stats:
        return host.stats()

    @get("/metrics", media_type=metrics.CONTENT_TYPE, responses=error_responses(500))
    async def prometheus_metrics() -> Response[bytes]:
        """Prometheus scrape: lanes, cache hit rates, the /v1 rate limit's answers."""
        text = metrics.metrics_text(host.stats, lambda: host.textgen.rate_limit if host.textgen else None)
        return Response(text, media_type=metrics.CONTENT_TYPE)

    async def refuse_when_shutting_down(request: Request) -> None:
        if request.url.path not in ALWAYS_OPEN:
            host.ensure_accepting()

    textgen = [textgen_router(host.textgen)] if host.textgen else []
    return Litestar(
        route_handlers=[process_and_cache, show_dataset, delete_dataset, draw, draw_range, quick_draw, background_lane,
                        health, stats, prometheus_metrics, assets_router(), *textgen],
        before_request=refuse_when_shutting_down,
        exception_handlers=exception_handlers(lambda: upload_limit_error(limit)),
        request_max_body_size=limit,
        before_send=[complete_allow_header],
        openapi_config=openapi_config("dropwire runtime", "0.1.0"),
        on_shutdown=[host.shutdown],
        logging_config=None,
    )

"""The runtime's Litestar app. Every error, ours or Litestar's, answers with the product's one
error body ``{error, message, details, timestamp}``.

    POST   /datasets?precompute=true        CSV body -> handle; background precompute starts
    GET    /datasets/{handle}               what is known about it
    DELETE /datasets/{handle}               drop it and all its pending work
    GET    /datasets/{handle}/forecasts/{index}?format=json|png
    POST   /quick-draw?format=json|png      CSV body -> forecast of its last index, then forgotten
    GET    /health, GET /stats
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Literal

from litestar import Litestar, Request, Response, delete, get, post
from litestar.exceptions import HTTPException, ValidationException

from runtime.errors import ShuttingDown
from runtime.plotting import fan_chart_png
from runtime.schemas import DatasetInfo, Deleted, Forecast, Health, Stats
from runtime.service import ForecastService, upload_limit_error
from storage.errors import DropwireError, ErrorBody, error_body, error_body_for

Format = Literal["json", "png"]
# Answers even while shutting down: monitoring must see it happen.
ALWAYS_OPEN = frozenset({"/stats"})


def create_app(service: ForecastService, log: logging.Logger) -> Litestar:
    limit = service.settings.max_upload_bytes

    async def forecast_response(forecast: Forecast, output: Format) -> Response:
        if output == "png":
            return Response(await asyncio.to_thread(fan_chart_png, forecast), media_type="image/png")
        return Response(forecast)

    @post("/datasets")
    async def process_and_cache(request: Request, precompute: bool = True) -> Response[DatasetInfo]:
        info, created = await service.upload(await request.body(), precompute=precompute)
        return Response(info, status_code=201 if created else 200)

    @get("/datasets/{handle:str}")
    async def show_dataset(handle: str) -> DatasetInfo:
        return service.info(handle)

    @delete("/datasets/{handle:str}", status_code=200)
    async def delete_dataset(handle: str) -> Deleted:
        return service.delete(handle)

    @get("/datasets/{handle:str}/forecasts/{index:int}")
    async def draw(handle: str, index: int, format: Format = "json") -> Response:
        return await forecast_response(await service.forecast(handle, index), format)

    @post("/quick-draw", status_code=200)
    async def quick_draw(request: Request, format: Format = "json") -> Response:
        return await forecast_response(await service.quick_draw(await request.body()), format)

    @get("/health")
    async def health() -> Health:
        return service.health()  # 503 (the error shape) once shutting down

    @get("/stats")
    async def stats() -> Stats:
        return service.stats()

    async def refuse_when_shutting_down(request: Request) -> None:
        if request.url.path not in ALWAYS_OPEN:
            service.ensure_accepting()

    def ours(_: Request, exc: DropwireError) -> Response[ErrorBody]:
        if exc.http_status >= 500 and not isinstance(exc, ShuttingDown):
            log.error("%s: %s", exc.code, exc.message)
        return Response(error_body_for(exc), status_code=exc.http_status)

    def litestars(request: Request, exc: HTTPException) -> Response[ErrorBody]:
        if exc.status_code == 413:
            return ours(request, upload_limit_error(limit))
        if isinstance(exc, ValidationException):
            body = error_body("invalid_request", exc.detail, {"errors": exc.extra or []})
        else:
            code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
            body = error_body(code, exc.detail)
        return Response(body, status_code=exc.status_code)

    def unexpected(request: Request, exc: Exception) -> Response[ErrorBody]:
        log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return Response(
            error_body("internal_error", f"unexpected error: {type(exc).__name__}: {exc}"), status_code=500
        )

    return Litestar(
        route_handlers=[process_and_cache, show_dataset, delete_dataset, draw, quick_draw, health, stats],
        before_request=refuse_when_shutting_down,
        exception_handlers={DropwireError: ours, HTTPException: litestars, Exception: unexpected},
        request_max_body_size=limit,
        on_shutdown=[service.shutdown],
        logging_config=None,
    )

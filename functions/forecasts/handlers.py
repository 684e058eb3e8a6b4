"""Forecast precompute: a CSV dropped under ``forecasts/`` goes to the forecast runtime, and
every index's forecast lands as Parquet under ``forecast-results/<name>/`` with a manifest
(model version, rows, source key and content hash). A schedule re-queues the datasets whose
manifest names a model version other than the one the runtime serves now.

Batch work must not get ahead of people drawing forecasts interactively, so results are
fetched through the runtime's range endpoint, which waits for its background lane a chunk
at a time, and never through the per-index (interactive) one.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import msgspec
import polars as pl

from dropwire.functions.kit.errors import DropwireError
from dropwire.functions.platform.context import HandlerContext
from dropwire.functions.platform.registry import (
    FunctionRegistry,
    Invocation,
    ObjectEvent,
    OnSchedule,
    OnUpload,
    Output,
    ScheduledEvent,
    task_name,
)
from dropwire.functions.platform.tasks import PermanentTaskError
from dropwire.storage.records import TaskSpec

# The local folder played as a bucket (settings.events.bucket's default).
BUCKET = "local"
SOURCE_PREFIX = "forecasts/"
# No trigger watches it, so writing results fires nothing.
RESULTS_PREFIX = "forecast-results/"
MANIFEST = "manifest.json"
FUNCTION = "forecast"
REFRESH_FUNCTION = "forecast-refresh"
REFRESH = OnSchedule(name="forecast-refresh", cron="17 * * * *")
TIMEOUT_S = 900.0
MAX_ATTEMPTS = 3

# Indices per range request: enough that the round trip between two requests is a small
# share of device time, and within the runtime's default max_range_indices (256).
RANGE_INDICES = 128
# Indices per Parquet part: bounds the handler's memory on long datasets.
PART_INDICES = 4096
# Longest single wait asked of the runtime (it caps waits at its request_timeout_s).
MAX_WAIT_S = 30.0
CONNECT_TIMEOUT_S = 5.0
# Time kept back from the invocation's deadline to fail with a clear error instead of a kill.
DEADLINE_MARGIN_S = 2.0
READ_CHUNK_BYTES = 1 << 20

T = TypeVar("T")


class RuntimeUnavailable(DropwireError):
    """The runtime is down, busy or lost the dataset: worth another attempt later."""

    code = "runtime_unavailable"


class ForecastManifest(msgspec.Struct, kw_only=True, frozen=True):
    source_bucket: str
    source_key: str
    source_version: str
    source_sha256: str
    model_version: str
    series: list[str]
    first_index: int
    last_index: int
    rows: int
    horizon: int
    levels: list[float]
    # The Parquet files of this result, in index order; read these, not the folder.
    parts: list[str]
    written_at: str


# The runtime's bodies, as far as this job reads them.
class _Dataset(msgspec.Struct):
    handle: str
    series: list[str]
    first_index: int
    last_index: int


class _Series(msgspec.Struct):
    name: str
    mean: list[float]
    std: list[float]
    quantiles: list[list[float]]


class _Forecast(msgspec.Struct):
    index: int
    origin: str
    timestamps: list[str]
    series: list[_Series]


class _Range(msgspec.Struct):
    model_version: str
    horizon: int
    levels: list[float]
    forecasts: list[_Forecast]


class _Health(msgspec.Struct):
    model_version: str


class _Error(msgspec.Struct):
    message: str


def register(functions: FunctionRegistry) -> None:
    functions.function(FUNCTION, on=[OnUpload(bucket=BUCKET, prefix=SOURCE_PREFIX, suffix=".csv")],
                       outputs=[Output(bucket=BUCKET, prefix=RESULTS_PREFIX)], timeout_seconds=TIMEOUT_S,
                       max_attempts=MAX_ATTEMPTS)(precompute_forecasts)
    functions.function(REFRESH_FUNCTION, on=[REFRESH], timeout_seconds=120)(refresh_forecasts)


def results_folder(source_key: str) -> str:
    """forecasts/a/b.csv -> forecast-results/a/b/"""
    return f"{RESULTS_PREFIX}{source_key.removeprefix(SOURCE_PREFIX).removesuffix('.csv')}/"


def precompute_forecasts(event: ObjectEvent, context: HandlerContext) -> dict:
    folder = results_folder(event.key)
    digest = hashlib.sha256()
    with _Runtime(context) as runtime:
        dataset = runtime.upload(_read(context, event, digest), what=f"{event.bucket}/{event.key}")
        parts: list[str] = []
        rows = 0
        model_version, horizon, levels = "", 0, []
        for part_start in range(dataset.first_index, dataset.last_index + 1, PART_INDICES):
            part_stop = min(part_start + PART_INDICES, dataset.last_index + 1)
            frames = []
            for start in range(part_start, part_stop, RANGE_INDICES):
                chunk = runtime.forecast_range(dataset.handle, start, min(start + RANGE_INDICES, part_stop))
                if model_version and chunk.model_version != model_version:
                    raise RuntimeUnavailable(f"the runtime's model changed from {model_version} to "
                                             f"{chunk.model_version} while {event.key} was being precomputed")
                model_version, horizon, levels = chunk.model_version, chunk.horizon, chunk.levels
                frames.append(_frame(chunk))
            frame = pl.concat(frames)
            key = f"{folder}part-{len(parts):05d}.parquet"
            buffer = io.BytesIO()
            frame.write_parquet(buffer)
            context.outputs.write_bytes(BUCKET, key, buffer.getvalue())
            parts.append(key)
            rows += frame.height
    # Written last: a manifest means every part it names is complete.
    manifest = ForecastManifest(
        source_bucket=event.bucket, source_key=event.key, source_version=event.version,
        source_sha256=digest.hexdigest(), model_version=model_version, series=dataset.series,
        first_index=dataset.first_index, last_index=dataset.last_index, rows=rows, horizon=horizon, levels=levels,
        parts=parts, written_at=datetime.now(UTC).isoformat())
    context.outputs.write_bytes(BUCKET, folder + MANIFEST, msgspec.json.encode(manifest))
    context.log.info("%s: %d forecasts (%d rows) with model %s under %s", event.key,
                     dataset.last_index - dataset.first_index + 1, rows, model_version, folder)
    return {"manifest": folder + MANIFEST, "rows": rows, "model_version": model_version, "parts": len(parts)}


def refresh_forecasts(event: ScheduledEvent, context: HandlerContext) -> dict:
    """Re-queue the precompute of every dataset whose results came from another model."""
    with _Runtime(context) as runtime:
        current = runtime.model_version()
    fs, root = context.objects.filesystem(BUCKET)
    try:
        paths = sorted(fs.find(posixpath.join(root, RESULTS_PREFIX)))
    except FileNotFoundError:
        paths = []
    requeued, checked = [], 0
    for path in paths:
        if posixpath.basename(path) != MANIFEST:
            continue
        checked += 1
        key = posixpath.relpath(path, root)
        try:
            with context.objects.open(BUCKET, key) as stream:
                manifest = msgspec.json.decode(stream.read(), type=ForecastManifest)
        except msgspec.DecodeError as exc:
            context.log.warning("skipped %s: not a forecast manifest (%s)", key, exc)
            continue
        if manifest.model_version == current:
            continue
        source = _source_event(context, manifest)
        if source is None:
            context.log.warning("%s names %s/%s, which no longer exists; not reprocessed", key,
                                manifest.source_bucket, manifest.source_key)
            continue
        context.state.enqueue(TaskSpec(
            name=task_name(FUNCTION),
            args=Invocation(function=FUNCTION, source="reprocess", event=source),
            max_attempts=MAX_ATTEMPTS,
            # Once per manifest and model, however often the schedule fires meanwhile.
            idempotency_key=f"{REFRESH.name}:{manifest.source_bucket}/{manifest.source_key}@{manifest.written_at}->{current}"))
        requeued.append(manifest.source_key)
    context.log.info("model %s: %d result set(s) checked, %d re-queued", current, checked, len(requeued))
    return {"model_version": current, "checked": checked, "requeued": requeued}


def _source_event(context: HandlerContext, manifest: ForecastManifest) -> ObjectEvent | None:
    fs, root = context.objects.filesystem(manifest.source_bucket)
    try:
        info = fs.info(posixpath.join(root, manifest.source_key))
    except FileNotFoundError:
        return None
    size = int(info.get("size") or 0)
    version = str(info.get("VersionId") or info.get("ETag", "").strip('"') or f"{info.get('mtime')}-{size}")
    return ObjectEvent(bucket=manifest.source_bucket, key=manifest.source_key, raw_key=manifest.source_key, size=size,
                       etag=version, version_id=version, sequencer=None, event_name="ObjectCreated:Reprocess",
                       event_time=datetime.now(UTC).isoformat(), source="reprocess")


def _read(context: HandlerContext, event: ObjectEvent, digest: hashlib._Hash) -> Iterator[bytes]:
    """The object in chunks (streamed on to the runtime), hashed on the way."""
    with context.objects.open(event.bucket, event.key) as stream:
        while chunk := stream.read(READ_CHUNK_BYTES):
            digest.update(chunk)
            yield chunk


def _frame(chunk: _Range) -> pl.DataFrame:
    """One row per (index, series, horizon step)."""
    columns: dict[str, list] = {name: [] for name in ("index", "origin", "series", "step", "timestamp", "mean", "std")}
    quantiles: list[list[float]] = [[] for _ in chunk.levels]
    for forecast in chunk.forecasts:
        steps = len(forecast.timestamps)
        for series in forecast.series:
            columns["index"] += [forecast.index] * steps
            columns["origin"] += [forecast.origin] * steps
            columns["series"] += [series.name] * steps
            columns["step"] += range(1, steps + 1)
            columns["timestamp"] += forecast.timestamps
            columns["mean"] += series.mean
            columns["std"] += series.std
            for values, level_values in zip(quantiles, series.quantiles, strict=False):
                values += level_values
    frame = pl.DataFrame(columns, schema_overrides={"index": pl.Int64, "step": pl.Int32})
    return frame.with_columns(
        pl.col("origin", "timestamp").str.to_datetime(time_unit="us"),
        *[pl.Series(f"q{round(level * 100, 4):g}", values, dtype=pl.Float64)
          for level, values in zip(chunk.levels, quantiles, strict=False)],
        model_version=pl.lit(chunk.model_version),
    )


class _Runtime:
    """The few runtime calls this job makes, with timeouts inside the invocation's deadline
    and errors sorted into retryable (runtime down or busy) and permanent (the CSV)."""

    def __init__(self, context: HandlerContext) -> None:
        self._context = context
        self._http = httpx.Client(base_url=context.runtime_url)

    def __enter__(self) -> _Runtime:
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def model_version(self) -> str:
        return self._answer(self._call("GET", "/health", wait=0), _Health, "the health check").model_version

    def upload(self, content: Iterator[bytes], *, what: str) -> _Dataset:
        # precompute=false: the range requests below queue exactly what this job takes, so a
        # dataset larger than the runtime's result cache is computed once, not walked ahead.
        response = self._call("POST", "/datasets", wait=0, content=content, params={"precompute": "false"},
                              headers={"content-type": "text/csv"})
        return self._answer(response, _Dataset, what)

    def forecast_range(self, handle: str, start: int, stop: int) -> _Range:
        while True:
            wait = min(MAX_WAIT_S, self._context.remaining_seconds() - DEADLINE_MARGIN_S - CONNECT_TIMEOUT_S)
            if wait <= 0:
                raise RuntimeUnavailable(f"the invocation ran out of time waiting for forecasts {start}..{stop - 1} "
                                         f"of dataset {handle[:12]} (the runtime is busy); the next attempt goes on")
            response = self._call("GET", f"/datasets/{handle}/forecasts", wait=wait,
                                  params={"start": start, "stop": stop, "wait": wait})
            if response.status_code != 504:  # 504: the background lane was busy, ask again
                return self._answer(response, _Range, f"forecasts {start}..{stop - 1} of dataset {handle[:12]}",
                                    retry_on=(404,))  # 404: evicted or the runtime restarted

    def _call(self, method: str, path: str, *, wait: float, **kwargs: object) -> httpx.Response:
        read = min(self._context.remaining_seconds() - DEADLINE_MARGIN_S, wait + MAX_WAIT_S)
        try:
            return self._http.request(method, path, timeout=httpx.Timeout(max(read, 1.0), connect=CONNECT_TIMEOUT_S),
                                      **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise RuntimeUnavailable(f"the forecast runtime at {self._context.runtime_url} did not answer {method} "
                                     f"{path} ({type(exc).__name__}: {exc}); is `dropwire runtime serve` running?") from None

    @staticmethod
    def _answer(response: httpx.Response, body: type[T], what: str, retry_on: tuple[int, ...] = ()) -> T:
        if response.is_success:
            return msgspec.json.decode(response.content, type=body)
        try:
            message = msgspec.json.decode(response.content, type=_Error).message
        except msgspec.DecodeError:
            message = response.text[:500]
        status = response.status_code
        if status >= 500 or status in retry_on:
            raise RuntimeUnavailable(f"the forecast runtime answered {status} for {what}: {message}")
        raise PermanentTaskError(f"the forecast runtime refused {what} ({status}): {message}")

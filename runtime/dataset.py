"""Parse and validate an uploaded time-series CSV into a Dataset (values + per-series scaler).

Rules: one timestamp column (named timestamp/time/date/datetime/ds, else the first column
if it holds dates), at least one numeric value column, timestamps strictly increasing on a
regular step (a fixed duration or whole calendar months), no missing or non-finite values,
and enough rows for the model's context. Every error names the line (header = line 1) and
column at fault and what was expected.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import io
import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import torch

from dropwire.runtime.errors import IndexOutOfRange, InvalidUpload

TIMESTAMP_NAMES = ("timestamp", "time", "date", "datetime", "ds")
# The first data row is line 2 of the file (line 1 is the header).
FIRST_DATA_LINE = 2


def content_handle(content: bytes) -> str:
    """The data cache key: SHA256 of exactly what was uploaded."""
    return hashlib.sha256(content).hexdigest()


@dataclass(frozen=True)
class Step:
    """The series' regular spacing: a fixed duration, or a number of calendar months."""

    fixed: timedelta | None = None
    months: int = 0

    def after(self, origin: datetime, k: int) -> datetime:
        if self.fixed is not None:
            return origin + k * self.fixed
        return add_months(origin, k * self.months)

    def describe(self) -> str:
        return _duration(self.fixed) if self.fixed is not None else f"{self.months} month(s)"


@dataclass(frozen=True, eq=False)
class Dataset:
    handle: str
    series_names: tuple[str, ...]
    timestamps: tuple[datetime, ...]
    step: Step
    values: np.ndarray  # float64 [rows, series], as uploaded
    mean: np.ndarray  # float64 [series]
    scale: np.ndarray  # float64 [series]; 1 for a constant series
    scaled: torch.Tensor  # float32 [rows, series], standardized: what the model sees
    context_length: int

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    @property
    def first_index(self) -> int:
        """The first forecast origin with a full context behind it."""
        return self.context_length - 1

    @property
    def last_index(self) -> int:
        return self.rows - 1

    @property
    def index_count(self) -> int:
        return self.rows - self.first_index

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.scaled.numel() * 4 + len(self.timestamps) * 48

    def check_index(self, index: int) -> None:
        if not self.first_index <= index <= self.last_index:
            raise IndexOutOfRange(
                f"index {index} is out of range for dataset {self.handle[:12]}: valid indices are "
                f"{self.first_index}..{self.last_index} (each forecast needs the "
                f"{self.context_length} rows up to and including its index as context)",
                index=index,
                first=self.first_index,
                last=self.last_index,
            )

    def future_timestamps(self, index: int, horizon: int) -> list[datetime]:
        origin = self.timestamps[index]
        return [self.step.after(origin, k) for k in range(1, horizon + 1)]


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar month arithmetic, clamping the day (Jan 31 + 1 month = Feb 28/29)."""
    month_index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(month_index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def parse_csv(content: bytes, *, context_length: int, max_series: int) -> Dataset:
    text = _decode(content)
    header = _header(text)
    try:
        frame = pl.read_csv(io.StringIO(text), infer_schema=False)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise InvalidUpload(_ragged_line(text, len(header)) or f"not a CSV: {str(exc).splitlines()[0]}") from None
    if frame.height == 0:
        raise InvalidUpload("the CSV has a header but no data rows")
    frame.columns = header
    ts_column = _timestamp_column(frame)
    value_columns = [name for name in header if name != ts_column]
    if not value_columns:
        raise InvalidUpload(
            f"the CSV has only the timestamp column {ts_column!r}; expected one or more value columns"
        )
    if len(value_columns) > max_series:
        raise InvalidUpload(
            f"the CSV has {len(value_columns)} value columns; at most {max_series} series are "
            "allowed (setting runtime.max_series)"
        )
    timestamps = _timestamps(frame[ts_column], ts_column)
    step = _step(timestamps, ts_column)
    values = np.column_stack([_numbers(frame[name], name) for name in value_columns])
    if frame.height < context_length:
        raise InvalidUpload(
            f"the series has {frame.height} rows; the model needs at least {context_length} "
            f"(its context length) to forecast from the last row",
            rows=frame.height,
            context_length=context_length,
        )
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    scale = np.where(std > 0, std, 1.0)
    scaled = torch.from_numpy(((values - mean) / scale).astype(np.float32))
    return Dataset(
        handle=content_handle(content),
        series_names=tuple(value_columns),
        timestamps=tuple(timestamps),
        step=step,
        values=values,
        mean=mean,
        scale=scale,
        scaled=scaled,
        context_length=context_length,
    )


def _decode(content: bytes) -> str:
    if not content.strip():
        raise InvalidUpload("the upload is empty; expected a CSV with a header line and data rows")
    if b"\x00" in content[:4096]:
        raise InvalidUpload("not a CSV: the upload is binary (it contains NUL bytes)")
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidUpload(f"not a CSV: the upload is not UTF-8 text (invalid byte at offset {exc.start})") from None


def _header(text: str) -> list[str]:
    first_line = text.splitlines()[0]
    names = [name.strip() for name in next(csv.reader([first_line]))]
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name:
            raise InvalidUpload(f"line 1: column {position} has no name; every column needs a header")
        if name in seen:
            raise InvalidUpload(f"line 1: column name {name!r} appears twice; column names must be unique")
        seen.add(name)
    return names


def _ragged_line(text: str, width: int) -> str | None:
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if row and len(row) != width:
            return f"not a CSV: line {line} has {len(row)} fields but the header has {width}"
    return None


def _timestamp_column(frame: pl.DataFrame) -> str:
    for name in frame.columns:
        if name.lower() in TIMESTAMP_NAMES:
            return name
    first = frame.columns[0]
    parsed = _to_datetimes(frame[first].head(1).str.strip_chars())
    if parsed is not None and parsed.null_count() == 0:
        return first
    raise InvalidUpload(
        f"no timestamp column: expected a column named one of {', '.join(TIMESTAMP_NAMES)}, or a "
        f"first column of dates/times; found columns {frame.columns}"
    )


def _timestamps(column: pl.Series, name: str) -> list[datetime]:
    text = column.str.strip_chars()
    parsed = _to_datetimes(text)
    bad = [0] if parsed is None else parsed.is_null().arg_true()
    if len(bad):
        row = int(bad[0])
        raise InvalidUpload(
            f"line {row + FIRST_DATA_LINE}, column {name!r}: {text[row]!r} is not a date/time "
            "(expected ISO 8601 such as 2024-01-31 or 2024-01-31T12:00:00)",
            line=row + FIRST_DATA_LINE,
            column=name,
        )
    if parsed.dtype.time_zone is not None:  # type: ignore[union-attr]
        parsed = parsed.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return parsed.to_list()


def _to_datetimes(text: pl.Series) -> pl.Series | None:
    """Dates/times with the format inferred from the first value; None when it has none."""
    try:
        return text.str.to_datetime(strict=False, time_unit="us")
    except pl.exceptions.ComputeError:
        return None


def _duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return str(delta)


def _step(timestamps: list[datetime], name: str) -> Step:
    if len(timestamps) < 2:
        return Step(fixed=timedelta(0))
    diffs = [b - a for a, b in itertools.pairwise(timestamps)]
    for row, diff in enumerate(diffs, start=1):
        line = row + FIRST_DATA_LINE
        if diff == timedelta(0):
            raise InvalidUpload(
                f"line {line}, column {name!r}: duplicate timestamp {timestamps[row].isoformat()} "
                f"(also on line {line - 1}); each timestamp may appear once",
                line=line,
                column=name,
            )
        if diff < timedelta(0):
            raise InvalidUpload(
                f"line {line}, column {name!r}: timestamp {timestamps[row].isoformat()} comes before "
                f"{timestamps[row - 1].isoformat()} on line {line - 1}; rows must be in time order",
                line=line,
                column=name,
            )
    step = min(diffs)
    if all(diff == step for diff in diffs):
        return Step(fixed=step)
    months = _month_step(timestamps)
    if months:
        return Step(months=months)
    row = next(row for row, diff in enumerate(diffs, start=1) if diff != step)
    raise InvalidUpload(
        f"line {row + FIRST_DATA_LINE}, column {name!r}: timestamp {timestamps[row].isoformat()} "
        f"follows {timestamps[row - 1].isoformat()} after {_duration(diffs[row - 1])}, but the series "
        f"steps by {_duration(step)}; gaps and irregular spacing are not allowed",
        line=row + FIRST_DATA_LINE,
        column=name,
    )


def _month_step(timestamps: list[datetime]) -> int:
    """The month count between rows when the series is regular in calendar months, else 0."""
    first, second = timestamps[0], timestamps[1]
    months = (second.year - first.year) * 12 + second.month - first.month
    if months <= 0:
        return 0
    if all(add_months(first, k * months) == moment for k, moment in enumerate(timestamps)):
        return months
    return 0


def _numbers(column: pl.Series, name: str) -> np.ndarray:
    text = column.str.strip_chars().fill_null("")
    # Nulls (missing or unparsable cells) become NaN here, so one finiteness test finds all.
    values = text.cast(pl.Float64, strict=False).to_numpy().astype(np.float64)
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    row = int(np.argmax(bad))
    raw = text[row]
    if raw == "":
        what = "a missing value (expected a number)"
    elif pl.Series([raw]).cast(pl.Float64, strict=False)[0] is None:
        what = f"{raw!r} is not a number"
    else:
        what = f"{raw!r} is not a finite number"
    raise InvalidUpload(
        f"line {row + FIRST_DATA_LINE}, column {name!r}: {what}",
        line=row + FIRST_DATA_LINE,
        column=name,
    )

"""CSV validation: every kind of bad input gets an error naming the line, column and what was
expected; every regular series parses to exactly its values."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropwire.runtime.dataset import add_months, content_handle, parse_csv
from dropwire.runtime.errors import IndexOutOfRange, InvalidUpload


def parse(text: str | bytes, context: int = 2, max_series: int = 4):
    return parse_csv(text.encode() if isinstance(text, str) else text, context_length=context, max_series=max_series)


@pytest.mark.parametrize(
    ("upload", "expected"),
    [
        ("", "the upload is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
        ("timestamp,a\n2024-01-01,\xe9\n".encode("latin-1"), "not UTF-8"),
        ("timestamp,a\n", "no data rows"),
        ("timestamp,a\n2024-01-01,1,3\n", "line 2 has 3 fields but the header has 2"),
        ("timestamp,,b\n2024-01-01,1,2\n", "line 1: column 2 has no name"),
        ("timestamp,a,a\n2024-01-01,1,2\n", "column name 'a' appears twice"),
        ("x,a\nfoo,1\nbar,2\n", "no timestamp column"),
        ("timestamp\n2024-01-01\n2024-01-02\n", "expected one or more value columns"),
        ("timestamp,a\n2024-01-01,1\nnope,2\n", "line 3, column 'timestamp': 'nope' is not a date/time"),
        ("timestamp,a\n2024-01-01,1\n2024-01-02,x\n", "line 3, column 'a': 'x' is not a number"),
        ("timestamp,a\n2024-01-01,1\n2024-01-02,\n", "line 3, column 'a': a missing value"),
        ("timestamp,a\n2024-01-01,1\n2024-01-02,inf\n", "line 3, column 'a': 'inf' is not a finite number"),
        ("timestamp,a\n2024-01-01,1\n2024-01-01,2\n", "line 3, column 'timestamp': duplicate timestamp"),
        ("timestamp,a\n2024-01-02,1\n2024-01-01,2\n", "comes before 2024-01-02T00:00:00 on line 2"),
        ("timestamp,a\n2024-01-01,1\n2024-01-02,2\n2024-01-04,3\n", "after 2 days, but the series steps by 1 day"),
        ("timestamp,a\n2024-01-01,1\n", "the series has 1 rows; the model needs at least 2"),
        ("timestamp,a,b,c,d,e\n2024-01-01,1,2,3,4,5\n", "at most 4 series"),
    ],
)
def test_bad_input_is_named(upload: str | bytes, expected: str) -> None:
    with pytest.raises(InvalidUpload) as caught:
        parse(upload)
    assert expected in caught.value.message
    assert caught.value.http_status == 422


def test_accepted_forms() -> None:
    monthly = parse("date,sales\n2024-01-31,1\n2024-02-29,2\n2024-03-31,3\n")
    assert monthly.step.describe() == "1 month(s)"
    assert monthly.future_timestamps(2, 2) == [datetime(2024, 4, 30), datetime(2024, 5, 31)]
    offsets = parse("time,a\n2024-01-01T00:00:00+02:00,1\n2024-01-01T01:00:00+02:00,2\n")
    assert offsets.timestamps[0] == datetime(2023, 12, 31, 22)  # converted to UTC
    first_column = parse("when,a,b\n2024-01-01 00:00,1,5\n2024-01-01 00:15,2,6\n")
    assert first_column.series_names == ("a", "b")
    assert first_column.step.describe() == "15 minutes"


def test_index_range_names_the_valid_indices() -> None:
    data = parse("timestamp,a\n" + "".join(f"2024-01-{d:02d},{d}\n" for d in range(1, 11)), context=4)
    assert (data.first_index, data.last_index) == (3, 9)
    for index in (3, 9):
        data.check_index(index)
    for index in (2, 10, -1):
        with pytest.raises(IndexOutOfRange, match=r"valid indices are 3\.\.9"):
            data.check_index(index)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=2, max_size=2),
        min_size=3,
        max_size=40,
    ),
    step_minutes=st.integers(min_value=1, max_value=60 * 24 * 7),
    start=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1)),
)
def test_any_regular_series_parses_to_its_values(values: list[list[float]], step_minutes: int, start: datetime) -> None:
    step = timedelta(minutes=step_minutes)
    lines = ["timestamp,x,y"] + [f"{(start + i * step).isoformat()},{a!r},{b!r}" for i, (a, b) in enumerate(values)]
    content = ("\n".join(lines) + "\n").encode()
    data = parse(content)
    np.testing.assert_array_equal(data.values, np.asarray(values))
    assert data.step.fixed == step
    assert data.handle == content_handle(content)
    scaled = data.scaled.double().numpy()
    np.testing.assert_allclose(scaled * data.scale + data.mean, data.values, rtol=1e-5, atol=1e-6 * data.scale.max())


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(min_value=3, max_value=30),
    data=st.data(),
    junk=st.sampled_from(["abc", "", "1.2.3", "nan", "-inf", "12e"]),
)
def test_any_bad_cell_is_reported_at_its_line_and_column(rows: int, data: st.DataObject, junk: str) -> None:
    bad_row = data.draw(st.integers(min_value=0, max_value=rows - 1))
    bad_column = data.draw(st.sampled_from(["x", "y"]))
    lines = ["timestamp,x,y"]
    for i in range(rows):
        cells = {"x": str(i), "y": str(2 * i)}
        if i == bad_row:
            cells[bad_column] = junk
        lines.append(f"{(datetime(2024, 1, 1) + timedelta(hours=i)).isoformat()},{cells['x']},{cells['y']}")
    with pytest.raises(InvalidUpload) as caught:
        parse("\n".join(lines) + "\n")
    assert caught.value.details == {"line": bad_row + 2, "column": bad_column}


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)), st.integers(-300, 300))
def test_month_arithmetic_clamps_the_day(moment: datetime, months: int) -> None:
    moved = add_months(moment, months)
    assert (moved.year * 12 + moved.month) - (moment.year * 12 + moment.month) == months
    assert moved.day == moment.day or (moved.day < moment.day and (moved + timedelta(days=1)).day == 1)

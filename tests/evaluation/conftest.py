"""Fixtures for the evaluation core: a config covering every field type and rule, and
writers for dataset files in any format, layout and encoding."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from dropwire.functions.evaluation.core import EvaluationConfig, load_config

FIELDS = [
    {"name": "name", "type": "string", "required": True, "match": {"kind": "normalized_text"}},
    {"name": "total", "type": "number", "min": 0, "match": {"kind": "numeric", "abs_tolerance": 0.01}},
    {"name": "qty", "type": "integer", "match": {"kind": "exact"}},
    {"name": "day", "type": "date", "dayfirst": True, "match": {"kind": "date"}},
    {"name": "cur", "type": "category", "categories": ["EUR", "USD"], "match": {"kind": "category"}},
    {"name": "paid", "type": "boolean", "match": {"kind": "exact"}},
]

HEADER = ["record_id"] + [f"{f['name']}_{side}" for f in FIELDS for side in ("true", "pred")]

# Four clean records: r1 all right, r2 two wrong values, r3 a missing prediction and a
# prediction where the truth is empty, r4 right in other spellings.
GOOD_ROWS = [
    ["r1", "ACME Inc.", "ACME Inc.", "10.00", "10.00", "3", "3", "31/01/2024", "31/01/2024", "EUR", "EUR", "true", "true"],
    ["r2", "Foo", "Bar", "5", "7", "1", "1", "01/02/2024", "01/02/2024", "USD", "EUR", "no", "no"],
    ["r3", "Baz", "baz", "", "4", "2", "", "05/03/2024", "05/03/2024", "EUR", "EUR", "yes", "y"],
    ["r4", "The  Shop", "the shop!", "99.5", "99.504", "7", "7.0", "1/4/2024", "2024-04-01", "usd", " USD ", "0", "false"],
]
# Per-field F1 = 2tp / (2tp + fp + fn) of GOOD_ROWS, from the counts test_metrics.py checks by hand.
EXPECTED_FIELD_F1 = {"name": 6 / 8, "total": 4 / 7, "qty": 6 / 7, "day": 1.0, "cur": 6 / 8, "paid": 1.0}


@pytest.fixture
def config_dict() -> dict:
    return {"use_case": "invoices", "fields": copy.deepcopy(FIELDS)}


@pytest.fixture
def make_config(config_dict: dict) -> Callable[..., EvaluationConfig]:
    """The standard config with top-level options replaced (``dataset`` merges)."""

    def make(**overrides: object) -> EvaluationConfig:
        raw = copy.deepcopy(config_dict)
        for key, value in overrides.items():
            raw[key] = {**raw.get(key, {}), **value} if key == "dataset" else value
        return load_config(json.dumps(raw), "test-config.json")

    return make


@pytest.fixture
def config(make_config) -> EvaluationConfig:
    return make_config()


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., str]:
    def write(name: str, rows: list[list[str]], delimiter: str = ",", encoding: str = "utf-8") -> str:
        path = tmp_path / name
        text = "\n".join(delimiter.join(row) for row in rows) + "\n"
        path.write_bytes(text.encode(encoding))
        return str(path)

    return write


@pytest.fixture
def good_csv(write_csv) -> str:
    return write_csv("good.csv", [HEADER, *GOOD_ROWS])


def frame_of(rows: list[list[str]]) -> pl.DataFrame:
    """Header + rows as a text frame, empty cells null (as the CSV reader reads them)."""
    header, body = rows[0], rows[1:]
    return pl.DataFrame({c: [r[i] or None for r in body] for i, c in enumerate(header)}, schema={c: pl.String for c in header})

"""Metrics under the extraction rules: by hand, against scikit-learn, and rules that hold for
every dataset; and the same results whichever file format the data came in."""

from __future__ import annotations

import json
import uuid

import fsspec
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from dropwire.functions.evaluation.core import DatasetFiles, check_quality, evaluate, load_config
from tests.evaluation.conftest import GOOD_ROWS, HEADER, frame_of


def test_extraction_rules_by_hand(config, good_csv):
    evaluation = evaluate(config, DatasetFiles(dataset=good_csv))
    metrics = evaluation.metrics
    counts = {m.field: (m.tp, m.fp, m.fn, m.tn) for m in metrics.fields}
    # r2 has three wrong values (fp + fn each); r3 a prediction where the truth is empty
    # (total: fp) and a missing prediction (qty: fn); r4 matches in other spellings.
    assert counts == {"name": (3, 1, 1, 0), "total": (2, 2, 1, 0), "qty": (3, 0, 1, 0),
                      "day": (4, 0, 0, 0), "cur": (3, 1, 1, 0), "paid": (4, 0, 0, 0)}  # fmt: skip
    total = next(m for m in metrics.fields if m.field == "total")
    assert (total.accuracy, total.precision, total.recall, total.f1) == (0.5, 0.5, 2 / 3, pytest.approx(4 / 7))
    micro = metrics.micro
    assert (micro.tp, micro.fp, micro.fn, micro.tn) == (19, 4, 4, 0)
    assert micro.accuracy == 19 / 24 and micro.precision == 19 / 23 and micro.f1 == pytest.approx(38 / 46)
    assert metrics.macro.f1 == pytest.approx(np.mean([m.f1 for m in metrics.fields]))
    assert metrics.records == 4 and metrics.records_all_matched == 0.5
    assert evaluation.per_record.rows() == [
        ("r1", True, True, True, True, True, True, True),
        ("r2", False, False, True, True, False, True, False),
        ("r3", True, False, False, True, True, True, False),
        ("r4", True, True, True, True, True, True, True),
    ]
    assert evaluation.per_record.columns == ["record_id", "name", "total", "qty", "day", "cur", "paid", "all_matched"]
    assert evaluation.mismatches.select("record_id", "field", "truth", "prediction", "outcome", "truth_row").rows() == [
        ("r2", "name", "Foo", "Bar", "wrong value", 3),
        ("r2", "total", "5", "7", "wrong value", 3),
        ("r3", "total", None, "4", "prediction where the truth is empty", 4),
        ("r3", "qty", "2", None, "missing prediction", 4),
        ("r2", "cur", "USD", "EUR", "wrong value", 3),
    ]


def slots(truth: str, prediction: str, same: bool) -> list[tuple[int, int]]:
    """The extraction rules as (y_true, y_pred) label pairs."""
    if truth and prediction:
        return [(1, 1)] if same else [(1, 0), (0, 1)]
    if truth:
        return [(1, 0)]
    return [(0, 1)] if prediction else [(0, 0)]


values = st.sampled_from(["", "a", "b", "c"])
amounts = st.sampled_from(["", "1", "1.004", "1.02", "2"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.tuples(values, values, values, values, amounts, amounts), min_size=1, max_size=40))
def test_metrics_equal_scikit_learn(records):
    config = load_config(json.dumps({"use_case": "u", "record_id": None, "fields": [
        {"name": "a"}, {"name": "b"},
        {"name": "n", "type": "number", "match": {"kind": "numeric", "abs_tolerance": 0.01}}]}))  # fmt: skip
    url = f"memory://sk/{uuid.uuid4().hex}.csv"
    with fsspec.open(url, "wb") as f:
        f.write(("a_true,a_pred,b_true,b_pred,n_true,n_pred\n" + "".join(",".join(r) + "\n" for r in records)).encode())
    metrics = evaluate(config, DatasetFiles(dataset=url)).metrics

    # The same rules computed in plain Python, then scored by scikit-learn: one label column
    # per field, one row per (record, field) outcome slot.
    def same(k: int, t: str, p: str) -> bool:
        return abs(float(t) - float(p)) <= 0.01 if k == 2 and t and p else t == p

    y_true, y_pred = [], []
    for r in records:
        for k in range(3):
            t, p = r[2 * k], r[2 * k + 1]
            for yt, yp in slots(t, p, same(k, t, p)):
                y_true.append([yt if j == k else 0 for j in range(3)])
                y_pred.append([yp if j == k else 0 for j in range(3)])
    y_true, y_pred = np.array(y_true), np.array(y_pred)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    for k, m in enumerate(metrics.fields):
        assert (m.precision, m.recall, m.f1) == pytest.approx((precision[k], recall[k], f1[k]))
        # A prediction the rule accepts is scored as the truth's own label.
        truth = [r[2 * k] for r in records]
        judged = [r[2 * k] if same(k, r[2 * k], r[2 * k + 1]) else r[2 * k + 1] for r in records]
        assert m.accuracy == pytest.approx(accuracy_score(truth, judged))
    for average, ours in (("micro", metrics.micro), ("macro", metrics.macro)):
        expected = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)[:3]
        assert (ours.precision, ours.recall, ours.f1) == pytest.approx(expected)


cells = st.sampled_from(["", "x", "y", "NA", " x "])


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(cells, cells, cells, cells), min_size=1, max_size=30))
def test_counts_follow_the_rules_and_a_passing_dataset_keeps_every_row(rows):
    config = load_config(json.dumps({"use_case": "u", "fields": [{"name": "f"}, {"name": "g"}]}))
    body = [[f"id{i}", *r] for i, r in enumerate(rows)]
    url = f"memory://prop/{uuid.uuid4().hex}.csv"
    with fsspec.open(url, "wb") as f:
        f.write(("record_id,f_true,f_pred,g_true,g_pred\n" + "".join(",".join(r) + "\n" for r in body)).encode())
    files = DatasetFiles(dataset=url)
    assert check_quality(config, files).passed
    evaluation = evaluate(config, files)
    assert evaluation.per_record["record_id"].to_list() == [r[0] for r in body]
    present = lambda v: v.strip() not in ("", "NA")
    for k, m in enumerate(evaluation.metrics.fields):
        truths = sum(present(r[2 * k]) for r in rows)
        predictions = sum(present(r[2 * k + 1]) for r in rows)
        assert m.tp + m.fn == truths and m.tp + m.fp == predictions
        assert m.tn == sum(not present(r[2 * k]) and not present(r[2 * k + 1]) for r in rows)
        assert evaluation.per_record[m.field].sum() == m.tp + m.tn
    assert evaluation.mismatches.height == sum(m.records - m.tp - m.tn for m in evaluation.metrics.fields)


def test_csv_parquet_and_excel_give_identical_results(config, good_csv, tmp_path):
    text = frame_of([HEADER, *GOOD_ROWS])
    text.write_parquet(tmp_path / "data.parquet")
    text.write_excel(tmp_path / "data.xlsx")
    # Typed columns, as a team's own tools would write them.
    typed = text.with_columns(
        pl.col("total_true", "total_pred", "qty_true", "qty_pred").cast(pl.Float64),
        pl.col("paid_true", "paid_pred").str.to_lowercase().replace_strict(
            {"true": True, "yes": True, "y": True, "no": False, "0": False, "false": False}, return_dtype=pl.Boolean),
    )  # fmt: skip
    typed.write_parquet(tmp_path / "typed.parquet")
    typed.write_excel(tmp_path / "typed.xlsx")

    baseline = evaluate(config, DatasetFiles(dataset=good_csv))
    for name in ("data.parquet", "data.xlsx", "typed.parquet", "typed.xlsx"):
        other = evaluate(config, DatasetFiles(dataset=(tmp_path / name).as_uri()))
        assert other.metrics == baseline.metrics, name
        assert other.per_record.equals(baseline.per_record), name
        if name.startswith("data"):
            columns = ["record_id", "field", "truth", "prediction", "outcome"]
            assert other.mismatches.select(columns).equals(baseline.mismatches.select(columns)), name
    xlsx_rows = evaluate(config, DatasetFiles(dataset=str(tmp_path / "data.xlsx"))).mismatches["truth_row"]
    parquet_rows = evaluate(config, DatasetFiles(dataset=str(tmp_path / "data.parquet"))).mismatches["truth_row"]
    assert xlsx_rows.to_list() == baseline.mismatches["truth_row"].to_list() == [r + 1 for r in parquet_rows]


def test_an_excel_bad_row_is_reported_on_its_excel_row(config, tmp_path):
    rows = [list(r) for r in GOOD_ROWS]
    rows[2][HEADER.index("qty_true")] = "lots"
    frame_of([HEADER, *rows]).write_excel(tmp_path / "bad.xlsx")
    (issue,) = check_quality(config, DatasetFiles(dataset=str(tmp_path / "bad.xlsx"))).issues
    assert (issue.check, issue.rows, issue.column) == ("invalid_type", [4], "qty_true")

"""Quality check + evaluation of N records x 10 fields (every type and rule), ours (polars)
against a straightforward pandas implementation of the same rules, in the same run, from the
same CSV file. Both sides read the file, run every check, and build the per-field counts, the
per-record frame and the mismatches; neither writes results. The pandas side uses pandas'
vectorised string and numeric methods where they exist and a per-row function for
multi-format dates. The two must agree on every count, or the run stops.

Target: ours at least 10x faster at 10^6, time growing linearly with rows."""

from __future__ import annotations

import json
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from dropwire.functions.evaluation.core import DatasetFiles, check_dataset, evaluate_dataset, load_config, load_dataset
from dropwire.functions.evaluation.core.matching import BOOLEAN_WORDS

SIZES = (10_000, 100_000, 1_000_000)
TOKENS = ["na", "n/a", "null", "none", "nan"]
CONFIG = {
    "use_case": "bench",
    "record_id": "record_id",
    "fields": [
        {"name": "invoice_number", "type": "string", "required": True, "match": {"kind": "exact"}},
        {"name": "supplier", "type": "string", "match": {"kind": "normalized_text"}},
        {"name": "description", "type": "string", "match": {"kind": "normalized_text", "punctuation": False}},
        {"name": "total", "type": "number", "min": 0, "match": {"kind": "numeric", "abs_tolerance": 0.01}},
        {"name": "tax", "type": "number", "match": {"kind": "numeric", "rel_tolerance": 0.01}},
        {"name": "qty", "type": "integer", "min": 0, "max": 1000, "match": {"kind": "exact"}},
        {"name": "invoice_date", "type": "date", "dayfirst": True, "match": {"kind": "date"}},
        {"name": "due_date", "type": "date", "match": {"kind": "date", "tolerance_days": 1}},
        {"name": "currency", "type": "category", "categories": ["EUR", "USD", "GBP", "CHF"], "match": {"kind": "category"}},
        {"name": "paid", "type": "boolean", "match": {"kind": "exact"}},
    ],
}
# The pandas side parses dates with the same formats, in the same order, as ours.
DAYFIRST = ["%Y-%m-%d", "%d %b %Y", "%d/%m/%Y", "%d.%m.%Y"]
MONTHFIRST = ["%Y-%m-%d", "%d %b %Y", "%m/%d/%Y"]


# --- data


def generate(n: int, path: Path) -> None:
    """n records, most predictions right in another spelling, some wrong, some missing."""
    rng = np.random.default_rng(42)
    suppliers = pl.Series([f"{a} {b}{s}" for a in ("Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay")
                           for b in ("Supplies", "Trading", "Holdings", "Logistics", "Foods") for s in (" Ltd.", ", Inc.", " & Co.", "")])  # fmt: skip
    words = pl.Series(["office chairs", "consulting services", "fresh produce", "steel beams", "cloud hosting", "printer paper"])
    frame = pl.DataFrame({
        "i": np.arange(n),
        "supplier": suppliers.gather(rng.integers(0, len(suppliers), n)),
        "description": words.gather(rng.integers(0, len(words), n)),
        "total": np.round(rng.uniform(0, 5000, n), 2),
        "qty": rng.integers(0, 1000, n),
        # Days since 1970-01-01: 2020-01-01 onwards.
        "inv": pl.Series(rng.integers(18_262, 19_762, n)).cast(pl.Date),
        "due_shift": rng.integers(0, 3, n),
        "currency": pl.Series(["EUR", "USD", "GBP", "CHF"]).gather(rng.integers(0, 4, n)),
        "paid": rng.integers(0, 2, n).astype(bool),
        # One choice per field and row, in 5% steps, of how the prediction is written.
        **{f"r{k}": rng.integers(0, 20, n) for k in range(10)},
    })  # fmt: skip
    c = [pl.col(f"r{k}") for k in range(10)]
    inv_date = pl.col("inv")
    due = inv_date + pl.duration(days=30)
    out = frame.select(
        pl.format("R{}", pl.col("i").cast(pl.String).str.zfill(8)).alias("record_id"),
        inv_t := pl.format("INV-{}", (pl.col("i") * 7919 % 1_000_003).cast(pl.String)).alias("invoice_number_true"),
        pl.when(c[0] < 18).then(inv_t).when(c[0] == 18).then(pl.lit("INV-0")).otherwise(None).alias("invoice_number_pred"),
        pl.when(c[1] == 0).then(None).otherwise(pl.col("supplier")).alias("supplier_true"),
        pl.when(c[1] < 8).then(pl.col("supplier").str.to_uppercase())
        .when(c[1] < 14).then(pl.col("supplier").str.replace_all(r"[.,&]", "").str.replace_all(" ", "  "))
        .when(c[1] < 18).then(pl.col("supplier"))
        .when(c[1] == 18).then(pl.lit("Someone Else"))
        .otherwise(None).alias("supplier_pred"),
        pl.col("description").alias("description_true"),
        pl.when(c[2] < 10).then(pl.col("description").str.to_titlecase())
        .when(c[2] < 18).then(pl.format(" {} ", pl.col("description")))
        .otherwise(pl.format("{}.", pl.col("description"))).alias("description_pred"),
        pl.col("total").round(2).cast(pl.String).alias("total_true"),
        pl.when(c[3] < 14).then(pl.col("total").cast(pl.String))
        .when(c[3] < 17).then((pl.col("total") + 0.004).round(3).cast(pl.String))
        .when(c[3] < 19).then((pl.col("total") + 1.5).cast(pl.String))
        .otherwise(pl.lit("abc")).alias("total_pred"),
        (pl.col("total") * 0.2).round(2).cast(pl.String).alias("tax_true"),
        pl.when(c[4] < 15).then((pl.col("total") * 0.2).round(2).cast(pl.String))
        .when(c[4] < 18).then((pl.col("total") * 0.2 * 1.005).round(2).cast(pl.String))
        .otherwise((pl.col("total") * 0.2 * 1.05 + 1).round(2).cast(pl.String)).alias("tax_pred"),
        pl.col("qty").cast(pl.String).alias("qty_true"),
        pl.when(c[5] < 12).then(pl.col("qty").cast(pl.String))
        .when(c[5] < 17).then(pl.format("{}.0", pl.col("qty")))
        .when(c[5] < 19).then((pl.col("qty") + 1).cast(pl.String))
        .otherwise(None).alias("qty_pred"),
        inv_date.dt.strftime("%d/%m/%Y").alias("invoice_date_true"),
        pl.when(c[6] < 8).then(inv_date.dt.strftime("%Y-%m-%d"))
        .when(c[6] < 14).then(inv_date.dt.strftime("%d %b %Y"))
        .when(c[6] < 18).then(inv_date.dt.strftime("%d.%m.%Y"))
        .otherwise((inv_date + pl.duration(days=2)).dt.strftime("%d/%m/%Y")).alias("invoice_date_pred"),
        due.dt.strftime("%Y-%m-%d").alias("due_date_true"),
        pl.when(c[7] < 12).then((due + pl.duration(days=pl.col("due_shift"))).dt.strftime("%m/%d/%Y"))
        .when(c[7] < 19).then(due.dt.strftime("%Y-%m-%d"))
        .otherwise(pl.lit("13/45/2024")).alias("due_date_pred"),
        pl.col("currency").alias("currency_true"),
        pl.when(c[8] < 12).then(pl.col("currency"))
        .when(c[8] < 17).then(pl.format(" {}", pl.col("currency").str.to_lowercase()))
        .when(c[8] < 19).then(pl.lit("USD"))
        .otherwise(pl.lit("JPY")).alias("currency_pred"),
        pl.col("paid").cast(pl.String).alias("paid_true"),
        pl.when(c[9] < 10).then(pl.col("paid").cast(pl.String))
        .when(c[9] < 18).then(pl.when(pl.col("paid")).then(pl.lit("yes")).otherwise(pl.lit("no")))
        .otherwise(pl.when(pl.col("paid")).then(pl.lit("0")).otherwise(pl.lit("1"))).alias("paid_pred"),
    )  # fmt: skip
    out.write_csv(path)


# --- the pandas implementation


def _parse_date(formats: list[str]):
    def parse(text: str) -> date | None:
        text = text.strip()
        for fmt in formats:
            try:
                return datetime.strptime(text, fmt).date()
            except ValueError:
                continue
        return None

    return parse


def pandas_run(path: Path, config: dict) -> tuple[dict, dict]:
    """QC counts and per-field outcome counts, computed the plain pandas way."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    qc: dict[tuple[str, str], int] = {}

    def missing(s: pd.Series) -> pd.Series:
        stripped = s.str.strip()
        return stripped.eq("") | stripped.str.lower().isin(TOKENS)

    def parse(field: dict, s: pd.Series) -> pd.Series:
        kind = field["type"]
        if kind in ("number", "integer"):
            number = pd.to_numeric(s.str.strip(), errors="coerce")
            number = number.where(np.isfinite(number))
            return number.where(number == number.round()) if kind == "integer" else number
        if kind == "boolean":
            return s.str.strip().str.lower().map(BOOLEAN_WORDS)
        if kind == "date":
            return s.map(_parse_date(DAYFIRST if field.get("dayfirst") else MONTHFIRST))
        if kind == "category":
            return s.str.strip().str.replace(r"\s+", " ", regex=True).str.lower()
        return s.str.strip()

    def normalise(s: pd.Series, rule: dict) -> pd.Series:
        if rule.get("punctuation", True):
            s = s.str.replace(r"[^\w\s]", "", regex=True)
        s = s.str.replace(r"\s+", " ", regex=True).str.strip()
        return s.str.lower()

    ids = df["record_id"]
    qc[("missing_record_id", "record_id")] = int(missing(ids).sum())
    qc[("duplicate_record_id", "record_id")] = int((~missing(ids) & ids.str.strip().duplicated(keep=False)).sum())

    outcomes: dict[str, np.ndarray] = {}
    for field in config["fields"]:
        name, rule = field["name"], field["match"]
        truth, pred = df[f"{name}_true"], df[f"{name}_pred"]
        parsed = {}
        for side, s in (("true", truth), ("pred", pred)):
            column = f"{name}_{side}"
            present = ~missing(s)
            value = parse(field, s)
            parsed[side] = value
            if field.get("required") and side == "true":
                qc[("missing_required", column)] = int((~present).sum())
            if field["type"] in ("number", "integer", "boolean", "date"):
                qc[("invalid_type", column)] = int((present & value.isna()).sum())
            if field["type"] == "category":
                allowed = [c.lower() for c in field["categories"]]
                qc[("unknown_category", column)] = int((present & ~value.isin(allowed)).sum())
            if "min" in field or "max" in field:
                low = value < field["min"] if "min" in field else False
                high = value > field["max"] if "max" in field else False
                qc[("out_of_range", column)] = int((low | high).sum())

        has_t, has_p = ~missing(truth), ~missing(pred)
        kind = rule["kind"]
        if kind == "normalized_text":
            same = normalise(truth, rule) == normalise(pred, rule)
        elif kind == "numeric":
            t, p = parsed["true"], parsed["pred"]
            same = (t - p).abs() <= np.maximum(rule.get("abs_tolerance", 0.0), rule.get("rel_tolerance", 0.0) * t.abs())
        elif kind == "date":
            t, p = pd.to_datetime(parsed["true"]), pd.to_datetime(parsed["pred"])
            same = (t - p).abs().dt.days <= rule.get("tolerance_days", 0)
        elif kind == "category":
            same = (parsed["true"] == parsed["pred"]) & parsed["pred"].isin([c.lower() for c in field["categories"]])
        else:
            same = parsed["true"] == parsed["pred"]
        same = same.fillna(False).astype(bool)
        outcomes[name] = np.select(
            [has_t & has_p & same, has_t & has_p, has_t, has_p], [1, 2, 3, 4], default=0
        )

    per_record = pd.DataFrame({"record_id": ids, **{n: o <= 1 for n, o in outcomes.items()}})
    per_record["all_matched"] = per_record[list(outcomes)].all(axis=1)
    labels = {2: "wrong value", 3: "missing prediction", 4: "prediction where the truth is empty"}
    mismatches = pd.concat(
        pd.DataFrame({"record_id": ids[o > 1], "field": n, "truth": df.loc[o > 1, f"{n}_true"],
                      "prediction": df.loc[o > 1, f"{n}_pred"], "outcome": pd.Series(o[o > 1]).map(labels).values})
        for n, o in outcomes.items()
    )  # fmt: skip
    counts = {n: tuple(int((o == k).sum()) for k in range(5)) for n, o in outcomes.items()}
    counts["mismatches"] = len(mismatches)
    counts["all_matched"] = int(per_record["all_matched"].sum())
    return {k: v for k, v in qc.items() if v}, counts


# --- ours


def ours_run(path: Path, config) -> tuple[dict, dict]:
    dataset = load_dataset(config, DatasetFiles(dataset=str(path)))
    report = check_dataset(dataset)
    evaluation = evaluate_dataset(dataset)
    qc = {(i.check, i.column): i.row_count for i in report.issues}
    # The five outcome counts (tn, tp, wrong, missed, spurious), re-derived from tp/fp/fn/tn:
    # a wrong value is in both fp and fn, so fp + fn exceeds the mismatched cells by it.
    counts: dict[str, object] = {}
    for m in evaluation.metrics.fields:
        wrong = m.fp + m.fn - (m.records - m.tp - m.tn)
        counts[m.field] = (m.tn, m.tp, wrong, m.fn - wrong, m.fp - wrong)
    counts["mismatches"] = evaluation.mismatches.height
    counts["all_matched"] = int(evaluation.per_record["all_matched"].sum())
    return qc, counts


def timed(run, *args, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run(*args)
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    config = load_config(json.dumps(CONFIG), "bench.json")
    print(f"{'records':>10} {'ours s':>8} {'pandas s':>9} {'ratio':>7} {'ours rec/s':>12} {'pandas rec/s':>13} {'ours s/1e5':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            path = Path(tmp) / f"bench-{n}.csv"
            generate(n, path)
            repeats = 3 if n <= 100_000 else 1
            ours_s, (ours_qc, ours_counts) = timed(ours_run, path, config, repeats=repeats)
            pandas_s, (pandas_qc, pandas_counts) = timed(pandas_run, path, CONFIG, repeats=repeats)
            if ours_qc != pandas_qc or ours_counts != pandas_counts:
                raise SystemExit(f"the implementations disagree at {n} records:\nours   {ours_qc} {ours_counts}\npandas {pandas_qc} {pandas_counts}")
            print(f"{n:>10,} {ours_s:>8.2f} {pandas_s:>9.2f} {pandas_s / ours_s:>6.1f}x {n / ours_s:>12,.0f} {n / pandas_s:>13,.0f} "
                  f"{ours_s / n * 1e5:>11.3f}", flush=True)  # fmt: skip
            path.unlink()

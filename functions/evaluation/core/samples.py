"""Generated sample data for an invoice-extraction use case: a config and datasets of a model
whose predictions are right (often in another spelling), wrong, or missing at chosen rates.
`dropwire demo` runs the evaluation workflow on these."""

from __future__ import annotations

import numpy as np
import polars as pl

CURRENCIES = ["EUR", "USD", "GBP"]
SUPPLIERS = ["Acme Supplies Ltd.", "Globex Trading", "Initech Holdings", "Umbrella Logistics", "Stark Foods, Inc."]


def sample_config(use_case: str) -> dict:
    """A config over six fields, one of each kind of rule."""
    return {
        "use_case": use_case,
        "record_id": "record_id",
        "fields": [
            {"name": "invoice_number", "type": "string", "required": True, "match": {"kind": "exact"}},
            {"name": "supplier", "type": "string", "match": {"kind": "normalized_text"}},
            {"name": "total", "type": "number", "min": 0, "match": {"kind": "numeric", "abs_tolerance": 0.01}},
            {"name": "invoice_date", "type": "date", "dayfirst": True, "match": {"kind": "date"}},
            {"name": "currency", "type": "category", "categories": CURRENCIES, "match": {"kind": "category"}},
            {"name": "paid", "type": "boolean", "match": {"kind": "exact"}},
        ],
        "dataset": {"min_rows": 10, "max_missing_share": 0.2},
    }


def sample_dataset(records: int, *, error_rate: float, seed: int, broken: bool = False) -> pl.DataFrame:
    """One file with `<field>_true` / `<field>_pred` columns (layout single). A prediction is
    wrong with probability `error_rate`, missing with a fifth of that, else right (half the
    time in another spelling). `broken` adds what a quality check must catch: missing
    required truth values, a currency outside the allowed set, a repeated record id."""
    rng = np.random.default_rng(seed)
    n = records
    ids = [f"INV-{i:07d}" for i in range(n)]
    supplier = pl.Series(SUPPLIERS).gather(rng.integers(0, len(SUPPLIERS), n))
    total = np.round(rng.uniform(5, 5000, n), 2)
    day = pl.Series(rng.integers(19_000, 19_700, n)).cast(pl.Date)  # days since 1970: 2022-2023
    currency = pl.Series(CURRENCIES).gather(rng.integers(0, len(CURRENCIES), n))
    paid = pl.Series(rng.integers(0, 2, n).astype(bool))
    truth = pl.DataFrame({
        "invoice_number": [f"N{(i * 7919) % 1_000_003:07d}" for i in range(n)], "supplier": supplier,
        "total": total, "invoice_date": day, "currency": currency, "paid": paid,
    })

    def outcome() -> np.ndarray:
        """Per row: 0 right as written, 1 right in another spelling, 2 wrong, 3 missing."""
        draw = rng.uniform(0, 1, n)
        return np.select([draw < error_rate / 5, draw < error_rate * 1.2, draw < 0.5 + error_rate * 0.6],
                         [3, 2, 1], default=0)

    columns: dict[str, pl.Series] = {"record_id": pl.Series(ids)}
    spellings = {
        "invoice_number": (pl.col("invoice_number"), pl.col("invoice_number"), pl.lit("N0000000")),
        "supplier": (pl.col("supplier"), pl.col("supplier").str.to_uppercase(), pl.lit("Unknown Vendor")),
        "total": (pl.col("total").cast(pl.String), pl.format("{} ", pl.col("total").round(2)),
                  (pl.col("total") + 10).cast(pl.String)),
        "invoice_date": (pl.col("invoice_date").dt.strftime("%d/%m/%Y"), pl.col("invoice_date").dt.strftime("%Y-%m-%d"),
                         (pl.col("invoice_date") + pl.duration(days=3)).dt.strftime("%d/%m/%Y")),
        "currency": (pl.col("currency"), pl.col("currency").str.to_lowercase(),
                     pl.when(pl.col("currency") == "EUR").then(pl.lit("USD")).otherwise(pl.lit("EUR"))),
        "paid": (pl.col("paid").cast(pl.String), pl.when(pl.col("paid")).then(pl.lit("yes")).otherwise(pl.lit("no")),
                 (~pl.col("paid")).cast(pl.String)),
    }
    for name, (as_written, respelled, wrong) in spellings.items():
        picked = pl.Series("o", outcome())
        written = truth.with_columns(picked).select(
            as_written.alias("t"),
            pl.when(pl.col("o") == 0).then(as_written).when(pl.col("o") == 1).then(respelled)
            .when(pl.col("o") == 2).then(wrong).otherwise(None).alias("p"))
        columns[f"{name}_true"] = written["t"]
        columns[f"{name}_pred"] = written["p"]
    frame = pl.DataFrame(columns)
    if broken:
        row = pl.int_range(pl.len())
        frame = frame.with_columns(
            pl.when(row % 97 == 5).then(None).otherwise(pl.col("invoice_number_true")).alias("invoice_number_true"),
            pl.when(row == 11).then(pl.lit("YEN")).otherwise(pl.col("currency_true")).alias("currency_true"),
            pl.when(row == 3).then(pl.lit(ids[2])).otherwise(pl.col("record_id")).alias("record_id"),
        )
    return frame

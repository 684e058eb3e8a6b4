"""Reviewed tasks back as an evaluation dataset: per record (the batch line's custom_id) the
reviewer's values as truth columns and the model's prediction as prediction columns, in layout
`single` of the evaluation workflow (`<field>_true`, `<field>_pred`), and the evaluation config
that reads it."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import polars as pl

from dropwire.functions.curation.schemas import SchemaSpec

RECORD_ID = "record_id"


def reviewed_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's latest submitted (not skipped) annotation, or None."""
    done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
    return max(done, key=lambda a: (a.get("updated_at") or "", a.get("id") or 0)) if done else None


def dataset_rows(spec: SchemaSpec, annotated: list[dict[str, Any]],
                 predictions: dict[str, list[dict[str, Any]]]) -> tuple[list[dict[str, str]], str]:
    """One row per reviewed task (sorted by custom_id), and a fingerprint of the annotations read
    (the same reviews give the same fingerprint, so an unchanged project is not evaluated again)."""
    rows, seen = [], []
    for task in annotated:
        annotation = reviewed_annotation(task)
        custom_id = (task.get("data") or {}).get("custom_id")
        if annotation is None or custom_id not in predictions:
            continue
        truth = spec.values(annotation.get("result") or [])
        predicted = spec.values(predictions[custom_id])
        row = {RECORD_ID: str(custom_id)}
        for name in truth:
            row[f"{name}_true"] = truth[name]
            row[f"{name}_pred"] = predicted.get(name, "")
        rows.append(row)
        seen.append((str(custom_id), annotation.get("id"), annotation.get("updated_at")))
    rows.sort(key=lambda r: r[RECORD_ID])
    fingerprint = hashlib.sha256(json.dumps(sorted(seen, key=str)).encode()).hexdigest()[:32]
    return rows, fingerprint


def dataset_csv(spec: SchemaSpec, rows: list[dict[str, str]]) -> bytes:
    columns = [RECORD_ID] + [f"{f['name']}_{side}" for f in spec.evaluation_fields() for side in ("true", "pred")]
    frame = pl.DataFrame({c: [r.get(c, "") for r in rows] for c in columns}, schema={c: pl.String for c in columns})
    out = io.BytesIO()
    frame.write_csv(out)
    return out.getvalue()


def evaluation_config(spec: SchemaSpec, use_case: str) -> dict[str, Any]:
    """The evaluation config that reads this dataset (upload it as use-cases/<uc>/config.json)."""
    return {"use_case": use_case, "layout": "single", "record_id": RECORD_ID,
            "columns": {"truth_suffix": "_true", "prediction_suffix": "_pred"},
            "dataset": {"min_rows": 1, "max_missing_share": 1.0}, "fields": spec.evaluation_fields()}

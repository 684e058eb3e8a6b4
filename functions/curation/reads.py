"""What the curation domain reads from the committed state (migration 0008's tables, and the
batches it exports): one place for the domain's SQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from dropwire.functions.curation.states import KIND
from dropwire.functions.kit.errors import NotFound

Query = Callable[[str, list], list[tuple]]


class UnknownExport(NotFound):
    code = "export_not_found"


class ExportInfo(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    batch_id: str
    schema_name: str
    schema: dict[str, Any]
    project_title: str
    export_key: str
    tasks: int
    evaluate_use_case: str | None
    evaluate_model: str | None
    project_id: int | None
    imported: int
    last_error: str | None
    retryable: bool
    state: str | None


_COLUMNS = ("e.id, batch_id, schema_name, schema, project_title, export_key, tasks, evaluate_use_case, evaluate_model, "
            "project_id, imported, last_error, retryable, s.state")
_FROM = f"FROM curation_exports e LEFT JOIN entity_states s ON s.kind = '{KIND}' AND s.entity_id = e.id"


def _export(row: tuple) -> ExportInfo:
    return ExportInfo(id=row[0], batch_id=row[1], schema_name=row[2], schema=msgspec.json.decode(row[3]),
                      project_title=row[4], export_key=row[5], tasks=row[6], evaluate_use_case=row[7],
                      evaluate_model=row[8], project_id=row[9], imported=row[10], last_error=row[11],
                      retryable=row[12], state=row[13])


def export(query: Query, export_id: str) -> ExportInfo:
    rows = query(f"SELECT {_COLUMNS} {_FROM} WHERE e.id = ?", [export_id])
    if not rows:
        raise UnknownExport(f"no curation export with id {export_id!r}")
    return _export(rows[0])


def exports(query: Query, states: tuple[str, ...]) -> list[ExportInfo]:
    marks = ", ".join("?" for _ in states)
    return [_export(r) for r in query(f"SELECT {_COLUMNS} {_FROM} WHERE s.state IN ({marks}) ORDER BY e.id", list(states))]


def pulled(query: Query, export_id: str, fingerprint: str) -> bool:
    return bool(query("SELECT 1 FROM curation_pulls WHERE export_id = ? AND fingerprint = ?", [export_id, fingerprint]))


def batch_of_output(query: Query, key: str) -> str | None:
    """The batch whose output file is `key` (known once its finalize step recorded the file)."""
    rows = query("SELECT b.id FROM batches b JOIN batch_files f ON f.id = b.output_file_id WHERE f.\"key\" = ?", [key])
    return rows[0][0] if rows else None

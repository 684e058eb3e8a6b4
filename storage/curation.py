"""The curation tables (migration 0008) as a store facet (`store.curation`).

Promises:
- `record(op, payload)` stages the named operation (OPS: an export written or written again,
  its Label Studio project, the tasks imported so far, its last error, a pull of reviewed
  annotations) into the writer's group commit and returns once it is durable. It is the only
  write; handlers reach it through their context's `records` port (ops named `curation.*`).
- An export written again keeps what Label Studio already has (project_id, imported); a pull
  is first-wins on (export, fingerprint), so the same reviews are recorded once.
- Reads are plain SELECTs over committed data (store.query; functions/curation/reads.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from dropwire.functions.kit.errors import DropwireError
from dropwire.storage.commit_group import CommitGroup
from dropwire.storage.writer import Facet


class ExportRow(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    batch_id: str
    schema_name: str
    schema: dict[str, Any]
    project_title: str
    export_key: str
    tasks: int
    problems: list[dict[str, str]]
    failed_requests: int
    evaluate_use_case: str | None = None
    evaluate_model: str | None = None


class ProjectRow(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    project_id: int


class Imported(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    imported: int


class ExportError(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    #: None clears the last error (the export went through)
    error: str | None
    retryable: bool = False


class Pulled(msgspec.Struct, kw_only=True, frozen=True):
    export_id: str
    fingerprint: str
    reviewed: int
    dataset_key: str


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _export(row: ExportRow, batch: CommitGroup, now: float) -> None:
    batch.execute(
        "INSERT INTO curation_exports (id, batch_id, schema_name, schema, project_title, export_key, tasks, problems, "
        "failed_requests, evaluate_use_case, evaluate_model, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?), to_timestamp(?)) "
        "ON CONFLICT (id) DO UPDATE SET schema_name = excluded.schema_name, schema = excluded.schema, "
        "project_title = excluded.project_title, export_key = excluded.export_key, tasks = excluded.tasks, "
        "problems = excluded.problems, failed_requests = excluded.failed_requests, "
        "evaluate_use_case = excluded.evaluate_use_case, evaluate_model = excluded.evaluate_model, "
        "updated_at = excluded.updated_at",
        (row.id, row.batch_id, row.schema_name, _json(row.schema), row.project_title, row.export_key, row.tasks,
         _json(row.problems), row.failed_requests, row.evaluate_use_case, row.evaluate_model, now, now))


def _project(row: ProjectRow, batch: CommitGroup, now: float) -> None:
    batch.execute("UPDATE curation_exports SET project_id = ?, updated_at = to_timestamp(?) WHERE id = ?",
                  (row.project_id, now, row.id))


def _imported(row: Imported, batch: CommitGroup, now: float) -> None:
    batch.execute("UPDATE curation_exports SET imported = ?, updated_at = to_timestamp(?) WHERE id = ?",
                  (row.imported, now, row.id))


def _error(row: ExportError, batch: CommitGroup, now: float) -> None:
    batch.execute("UPDATE curation_exports SET last_error = ?, retryable = ?, updated_at = to_timestamp(?) WHERE id = ?",
                  (row.error, row.retryable, now, row.id))


def _pulled(row: Pulled, batch: CommitGroup, now: float) -> None:
    batch.execute("INSERT INTO curation_pulls VALUES (?, ?, ?, ?, to_timestamp(?)) ON CONFLICT DO NOTHING",
                  (row.export_id, row.fingerprint, row.reviewed, row.dataset_key, now))


#: op name -> (payload type, how it stages its rows)
OPS: dict[str, tuple[type, Callable[[Any, CommitGroup, float], None]]] = {
    "curation.export": (ExportRow, _export),
    "curation.project": (ProjectRow, _project),
    "curation.imported": (Imported, _imported),
    "curation.error": (ExportError, _error),
    "curation.pulled": (Pulled, _pulled),
}


class UnknownCurationRecord(DropwireError):
    code = "unknown_record"


class Curation(Facet):
    """The curation domain's records port, in the process that owns the store."""

    def record(self, op: str, payload: Any) -> None:
        try:
            kind, stage = OPS[op]
        except KeyError:
            raise UnknownCurationRecord(f"no record operation {op!r}; known: {sorted(OPS)}") from None
        value = payload if isinstance(payload, kind) else msgspec.convert(payload, kind)
        self.writer.call(lambda batch, now: stage(value, batch, now))

"""The quality report's shapes: what was read, and every issue found in it."""

from __future__ import annotations

from typing import Literal

import msgspec

Severity = Literal["error", "warning"]

# How many row numbers one issue lists; row_count always has the full number.
MAX_ROWS_LISTED = 20


class SourceFile(msgspec.Struct, frozen=True, kw_only=True):
    """One file read for a dataset, and how it was read."""

    # dataset (layout single), truth or predictions (layout separate).
    role: str
    url: str
    format: str
    rows: int = 0
    # CSV only: the delimiter used (detected when the config says auto).
    delimiter: str | None = None
    encoding: str | None = None
    # The row number a person sees for the first record: 2 for CSV (line 2, under the header)
    # and Excel (row 2); 1 for Parquet, which has no header row.
    first_data_row: int = 1


class QualityIssue(msgspec.Struct, frozen=True, kw_only=True):
    # Machine name: missing_required, invalid_type, duplicate_record_id, ...
    check: str
    severity: Severity
    file: str
    # None for issues about the whole file or dataset.
    column: str | None
    # Row numbers as a person sees them in the file (see SourceFile.first_data_row), the
    # first MAX_ROWS_LISTED of row_count.
    rows: list[int]
    row_count: int
    message: str
    expected: str


class QualityReport(msgspec.Struct, frozen=True, kw_only=True):
    passed: bool
    rows_checked: int
    issues: list[QualityIssue]
    files: list[SourceFile]

    @property
    def errors(self) -> list[QualityIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[QualityIssue]:
        return [i for i in self.issues if i.severity == "warning"]


def file_issue(check: str, url: str, message: str, expected: str, column: str | None = None) -> QualityIssue:
    """An error about a whole file (or one of its columns), with no rows to point at."""
    return QualityIssue(check=check, severity="error", file=url, column=column, rows=[], row_count=0, message=message, expected=expected)


def row_text(rows: list[int], count: int) -> str:
    """'row 7', 'rows 3, 9', 'rows 3, 9, 12, ... (40 in all)'."""
    listed = ", ".join(str(r) for r in rows)
    if count == 1:
        return f"row {listed}"
    return f"rows {listed}" + (f", ... ({count} in all)" if count > len(rows) else "")

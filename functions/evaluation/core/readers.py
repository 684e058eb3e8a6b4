"""Dataset files (CSV, Parquet, Excel) read as tables of text, so that the quality check can
say which rows do not parse as their type. A file that cannot be read becomes quality issues
(empty, binary, wrong encoding, wrong delimiter, missing columns), never a bare exception."""

from __future__ import annotations

import codecs
import csv
import io
import posixpath
from collections import Counter
from typing import Any, cast

import fastexcel
import msgspec
import polars as pl
from fsspec.implementations.local import LocalFileSystem

from dropwire.functions.evaluation.core.config import DatasetRules
from dropwire.functions.evaluation.core.errors import DatasetUnreadable
from dropwire.functions.evaluation.core.issues import SourceFile, file_issue
from dropwire.functions.platform.objects import url_to_fs

ROW = "__row"
CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
SAMPLE_BYTES = 64 * 1024
CHUNK_BYTES = 1 << 20
FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
           ".xlsx": "excel", ".xlsm": "excel", ".xls": "excel"}  # fmt: skip
DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
# First bytes of files that are not text tables, and what they are.
MAGIC = ((b"PK\x03\x04", "excel", "an Excel workbook (or another zip archive)"),
         (b"PAR1", "parquet", "a Parquet file"),
         (b"\xd0\xcf\x11\xe0", "excel", "a legacy Excel .xls workbook"),
         (b"%PDF", None, "a PDF document"))  # fmt: skip


class Table(msgspec.Struct, frozen=True):
    """A file's cells as text, plus ``__row``: the row number a person sees in the file."""

    source: SourceFile
    frame: pl.DataFrame


def read_table(url: str, rules: DatasetRules, role: str, expected_columns: list[str],
               storage_options: dict[str, dict] | None = None) -> Table:
    """Read ``url`` (a local path, ``file://`` or ``s3://`` URL; `storage_options` per
    protocol) as text columns; raise DatasetUnreadable with the quality issues when it cannot
    be used."""
    fs, path = url_to_fs(url, storage_options)
    try:
        size = fs.size(path)
        with fs.open(path, "rb") as f:
            head = cast(bytes, f.read(SAMPLE_BYTES))  # mode "rb"; fsspec types the file as text or binary
    except FileNotFoundError:
        raise _unreadable("unreadable_file", url, f"file {url} does not exist", "an uploaded dataset file") from None
    except OSError as exc:  # permissions, a folder, an unreachable bucket
        raise _unreadable("unreadable_file", url, f"file {url} cannot be opened: {exc}", "a readable dataset file") from None
    if not size:
        raise _unreadable("empty_file", url, f"file {url} is empty (0 bytes)", "a header row and at least one data row")
    fmt = _format(url, head)
    if fmt == "csv":
        table = _read_csv(fs, path, url, head, rules, role)
    elif fmt == "parquet":
        table = _read_parquet(fs, path, url, role)
    else:
        table = _read_excel(fs, path, url, rules, role)
    if table.frame.height == 0:
        raise _unreadable("empty_file", url, f"file {url} has a header but no data rows", "at least one data row")
    _check_columns(table, expected_columns)
    return table


def _unreadable(check: str, url: str, message: str, expected: str) -> DatasetUnreadable:
    return DatasetUnreadable([file_issue(check, url, message, expected)])


def _format(url: str, head: bytes) -> str:
    ext = posixpath.splitext(url.lower())[1]
    by_extension = FORMATS.get(ext)
    magic = next(((fmt, what) for prefix, fmt, what in MAGIC if head.startswith(prefix)), None)
    if magic is None and _is_binary(head):
        magic = (None, "binary data")
    if magic is None:
        if by_extension in (None, "csv"):
            return "csv"
        raise _unreadable("not_a_table", url, f"file {url} is named {ext} but holds text, not {by_extension.title()} data; "
                          "rename it to .csv if it is a CSV file", f"a {ext} file")
    fmt, what = magic
    if fmt is not None and by_extension in (None, fmt):
        return fmt
    named = f"is named {ext} but" if ext else "has no extension and"
    hint = {"excel": "; rename it to .xlsx", "parquet": "; rename it to .parquet"}.get(fmt or "", "")
    raise _unreadable("not_a_table", url, f"file {url} {named} looks like {what}, not a table{hint}",
                      "a CSV (.csv), Parquet (.parquet) or Excel (.xlsx) table")


def _is_binary(head: bytes) -> bool:
    # UTF-16 text has NULs too but is reported as an encoding problem, with its own advice.
    return b"\x00" in head and not head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))


def _with_rows(frame: pl.DataFrame, first_data_row: int) -> pl.DataFrame:
    # Stray spaces around header names are invisible in a spreadsheet; drop them unless two
    # headers would then collide.
    stripped = [c.strip() for c in frame.columns]
    if len(set(stripped)) == len(stripped):
        frame = frame.rename(dict(zip(frame.columns, stripped, strict=False)))
    return frame.with_row_index(ROW, offset=first_data_row).with_columns(pl.col(ROW).cast(pl.Int64))


# --- CSV


def _read_csv(fs, path: str, url: str, head: bytes, rules: DatasetRules, role: str) -> Table:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _unreadable("encoding", url, f"file {url} is UTF-16 encoded, not UTF-8; save it as CSV UTF-8", "UTF-8 text")
    encoding = "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
    sample = head.decode("utf-8-sig", errors="replace")
    delimiter = _choose_delimiter(url, sample, rules)
    try:
        if isinstance(fs, LocalFileSystem):
            frame = pl.read_csv(path, separator=delimiter, infer_schema=False)
        else:
            with fs.open(path, "rb") as f:
                frame = pl.read_csv(f, separator=delimiter, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        # polars refuses invalid UTF-8 without saying where; find the byte only then, so a
        # good file is not read twice.
        _raise_if_not_utf8(fs, path, url)
        detail = str(exc).splitlines()[0]
        raise _unreadable("unreadable_file", url, f"file {url} cannot be read as CSV with delimiter "
                          f"{DELIMITER_NAMES[delimiter]}: {detail}", "the same number of cells on every line") from None
    source = SourceFile(role=role, url=url, format="csv", rows=frame.height, delimiter=delimiter, encoding=encoding, first_data_row=2)
    return Table(source, _with_rows(frame, 2))


def _raise_if_not_utf8(fs, path: str, url: str) -> None:
    """Stream the file through a UTF-8 decoder (never all of it in memory); on the first bad
    byte, say where it is and what the file probably is."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines_before = 0
    with fs.open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            # Error positions count from any bytes of a character split across chunks.
            data = decoder.getstate()[0] + chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line = lines_before + data.count(b"\n", 0, exc.start) + 1
                bad = data[exc.start : exc.start + 1]
                raise _unreadable("encoding", url, f"file {url} is not UTF-8: byte 0x{bad.hex().upper()} on line {line} "
                                  f"{_guess_encoding(chunk)}; save it as UTF-8 (in Excel: 'CSV UTF-8')", "UTF-8 text") from None
            lines_before += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _unreadable("encoding", url, f"file {url} is not UTF-8: it ends inside a multi-byte character",
                              "UTF-8 text") from None


def _guess_encoding(chunk: bytes) -> str:
    try:
        chunk.decode("cp1252")
    except UnicodeDecodeError:
        return "(the encoding is not recognised)"
    return "(looks like latin-1/cp1252)"


def sniff_delimiter(sample: str) -> tuple[str, int] | None:
    """The candidate delimiter that splits the sample's lines into the same number (> 1) of
    cells most consistently, with that number; None when none splits the header."""
    lines = sample.splitlines()[:50]
    if len(sample) >= SAMPLE_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the sample may end mid-line
    best: tuple[float, int, str] | None = None
    for delimiter in CANDIDATE_DELIMITERS:
        counts = [len(row) for row in csv.reader(lines, delimiter=delimiter) if row]
        if not counts or counts[0] < 2:
            continue
        columns, agreeing = Counter(counts).most_common(1)[0]
        score = (agreeing / len(counts), columns, delimiter)
        if best is None or score[:2] > best[:2]:
            best = score
    return (best[2], best[1]) if best else None


def _choose_delimiter(url: str, sample: str, rules: DatasetRules) -> str:
    found = sniff_delimiter(sample)
    if rules.delimiter == "auto":
        return found[0] if found else ","
    header = sample.splitlines()[0] if sample else ""
    configured_columns = len(next(csv.reader([header], delimiter=rules.delimiter), []))
    if found and found[0] != rules.delimiter and configured_columns < 2:
        raise _unreadable("delimiter", url, f"file {url} is delimited by {DELIMITER_NAMES[found[0]]} (its header splits into "
                          f"{found[1]} columns on it), but the config says delimiter {DELIMITER_NAMES[rules.delimiter]}",
                          f"cells separated by {DELIMITER_NAMES[rules.delimiter]}, or delimiter: auto in the config")
    return rules.delimiter


# --- Parquet and Excel


def _read_parquet(fs, path: str, url: str, role: str) -> Table:
    try:
        if isinstance(fs, LocalFileSystem):
            frame = pl.read_parquet(path)
        else:
            with fs.open(path, "rb") as f:
                frame = pl.read_parquet(f)
        frame = frame.select(pl.all().cast(pl.String))
    except (pl.exceptions.PolarsError, OSError) as exc:
        detail = str(exc).splitlines()[0]
        raise _unreadable("unreadable_file", url, f"file {url} is not a readable Parquet table: {detail}",
                          "a Parquet file with one plain (not nested) column per value") from None
    return Table(SourceFile(role=role, url=url, format="parquet", rows=frame.height, first_data_row=1), _with_rows(frame, 1))


def _read_excel(fs, path: str, url: str, rules: DatasetRules, role: str) -> Table:
    with fs.open(path, "rb") as f:
        data = f.read()  # a workbook is a zip archive: it has to be read whole
    sheet: dict[str, Any] = {"sheet_name": rules.sheet} if rules.sheet else {"sheet_id": 1}
    try:
        # infer_schema_length=0 reads every cell as text; keeping empty rows keeps row numbers
        # equal to Excel's.
        frame = pl.read_excel(io.BytesIO(data), **sheet, infer_schema_length=0, drop_empty_rows=False,
                              drop_empty_cols=False, raise_if_empty=False)
    except (fastexcel.FastExcelError, pl.exceptions.PolarsError, ValueError) as exc:  # ValueError: no such sheet
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        which = f"sheet '{rules.sheet}'" if rules.sheet else "the first sheet"
        raise _unreadable("unreadable_file", url, f"file {url}: {which} cannot be read as a table: {detail}",
                          "an .xlsx workbook with a header row on row 1") from None
    frame = frame.select(pl.all().cast(pl.String))
    return Table(SourceFile(role=role, url=url, format="excel", rows=frame.height, first_data_row=2), _with_rows(frame, 2))


def _check_columns(table: Table, expected: list[str]) -> None:
    present = [c for c in table.frame.columns if c != ROW]
    missing = [c for c in dict.fromkeys(expected) if c not in present]
    if not missing:
        return
    url = table.source.url
    if len(present) == 1 and any(c in present[0] for c in missing):
        raise _unreadable("delimiter", url, f"file {url} has a single column '{present[0][:80]}': its cells are not "
                          "separated by a delimiter this reader knows", "cells separated by ',', ';', tab or '|'")
    shown = ", ".join(present[:30]) + (", ..." if len(present) > 30 else "")
    raise DatasetUnreadable([
        file_issue("missing_column", url, f"file {url} has no column '{c}' (its columns: {shown})", f"a column named '{c}'", column=c)
        for c in missing
    ])


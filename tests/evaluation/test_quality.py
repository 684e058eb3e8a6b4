"""Every bad input the quality check knows, each with the message a team reads."""

from __future__ import annotations

import io
import zipfile

import polars as pl
import pytest
import xlsxwriter

from dropwire.functions.evaluation.core import (
    DatasetFiles,
    DatasetInvalid,
    DatasetUnreadable,
    check_quality,
    evaluate,
    load_dataset,
)
from tests.evaluation.conftest import GOOD_ROWS, HEADER


def single(path: str) -> DatasetFiles:
    return DatasetFiles(dataset=path)


def only_issue(report, check: str):
    found = [i for i in report.issues if i.check == check]
    assert len(found) == 1, report.issues
    return found[0]


def with_cell(rows, row: int, column: str, value: str) -> list[list[str]]:
    copied = [list(r) for r in rows]
    copied[row][HEADER.index(column)] = value
    return copied


def test_clean_dataset_passes_and_says_how_it_was_read(config, good_csv):
    report = check_quality(config, single(good_csv))
    assert report.passed and report.issues == [] and report.rows_checked == 4
    (source,) = report.files
    assert (source.format, source.delimiter, source.encoding, source.rows, source.first_data_row) == ("csv", ",", "utf-8", 4, 2)


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters_are_detected_and_reported(config, write_csv, delimiter):
    path = write_csv("semi.csv", [HEADER, *GOOD_ROWS], delimiter=delimiter)
    report = check_quality(config, single(path))
    assert report.passed and report.files[0].delimiter == delimiter


def test_wrong_delimiter_against_the_config(make_config, write_csv):
    path = write_csv("semi.csv", [HEADER, *GOOD_ROWS], delimiter=";")
    report = check_quality(make_config(dataset={"delimiter": ","}), single(path))
    issue = only_issue(report, "delimiter")
    assert not report.passed and issue.file == path
    assert issue.message == (f"file {path} is delimited by ';' (its header splits into 13 columns on it), "
                             "but the config says delimiter ','")  # fmt: skip
    assert issue.expected == "cells separated by ',', or delimiter: auto in the config"


def test_unknown_delimiter_gives_a_single_column(config, write_csv):
    path = write_csv("colon.csv", [HEADER, *GOOD_ROWS], delimiter=":")
    issue = only_issue(check_quality(config, single(path)), "delimiter")
    assert issue.message.startswith(f"file {path} has a single column 'record_id:name_true:name_pred:")
    assert issue.message.endswith("its cells are not separated by a delimiter this reader knows")


def test_latin1_file_is_named_with_the_line_of_the_first_bad_byte(config, write_csv):
    rows = with_cell(GOOD_ROWS, 1, "name_true", "Café Müller")
    path = write_csv("latin1.csv", [HEADER, *rows], encoding="latin-1")
    report = check_quality(config, single(path))
    issue = only_issue(report, "encoding")
    assert not report.passed
    assert issue.message == (f"file {path} is not UTF-8: byte 0xE9 on line 3 (looks like latin-1/cp1252); "
                             "save it as UTF-8 (in Excel: 'CSV UTF-8')")  # fmt: skip
    assert issue.expected == "UTF-8 text"


def test_bad_byte_past_the_first_chunk_is_found(config, write_csv, monkeypatch):
    import dropwire.functions.evaluation.core.readers as readers

    monkeypatch.setattr(readers, "CHUNK_BYTES", 64)  # the file streams through in many chunks
    rows = with_cell(GOOD_ROWS, 3, "name_pred", "Ø")
    path = write_csv("late.csv", [HEADER, *rows], encoding="cp1252")
    assert "byte 0xD8 on line 5 " in only_issue(check_quality(config, single(path)), "encoding").message


def test_utf8_with_bom_and_utf16(config, write_csv):
    bom = write_csv("bom.csv", [HEADER, *GOOD_ROWS], encoding="utf-8-sig")
    report = check_quality(config, single(bom))
    assert report.passed and report.files[0].encoding == "utf-8-sig"
    utf16 = write_csv("utf16.csv", [HEADER, *GOOD_ROWS], encoding="utf-16")
    issue = only_issue(check_quality(config, single(utf16)), "encoding")
    assert issue.message == f"file {utf16} is UTF-16 encoded, not UTF-8; save it as CSV UTF-8"


def test_empty_file_and_header_only(config, tmp_path, write_csv):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    issue = only_issue(check_quality(config, single(str(empty))), "empty_file")
    assert issue.message == f"file {empty} is empty (0 bytes)"
    header_only = write_csv("header.csv", [HEADER])
    issue = only_issue(check_quality(config, single(header_only)), "empty_file")
    assert issue.message == f"file {header_only} has a header but no data rows"


def test_files_that_are_not_tables(config, tmp_path, good_csv):
    pdf = tmp_path / "scan.csv"
    pdf.write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    assert only_issue(check_quality(config, single(str(pdf))), "not_a_table").message == (
        f"file {pdf} is named .csv but looks like a PDF document, not a table")
    workbook = tmp_path / "data.csv"
    pl.read_csv(good_csv, infer_schema=False).write_excel(workbook)
    assert only_issue(check_quality(config, single(str(workbook))), "not_a_table").message == (
        f"file {workbook} is named .csv but looks like an Excel workbook (or another zip archive), not a table; rename it to .xlsx")
    binary = tmp_path / "blob.csv"
    binary.write_bytes(b"\x00\x01\x02garbage\x00" * 10)
    assert "looks like binary data, not a table" in only_issue(check_quality(config, single(str(binary))), "not_a_table").message
    text_xlsx = tmp_path / "data.xlsx"
    text_xlsx.write_text("record_id,name_true\n1,a\n")
    assert only_issue(check_quality(config, single(str(text_xlsx))), "not_a_table").message == (
        f"file {text_xlsx} is named .xlsx but holds text, not Excel data; rename it to .csv if it is a CSV file")


def test_corrupt_parquet_and_workbook(config, tmp_path):
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"PAR1" + b"\x15\x00" * 20)
    issue = only_issue(check_quality(config, single(str(parquet))), "unreadable_file")
    assert issue.message.startswith(f"file {parquet} is not a readable Parquet table: ")
    book = tmp_path / "broken.xlsx"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "not a workbook")
    book.write_bytes(buffer.getvalue())
    issue = only_issue(check_quality(config, single(str(book))), "unreadable_file")
    assert issue.message.startswith(f"file {book}: the first sheet cannot be read as a table: ")


def test_ragged_csv_and_missing_file(config, write_csv, tmp_path):
    rows = [HEADER, GOOD_ROWS[0], GOOD_ROWS[1] + ["extra"]]
    path = write_csv("ragged.csv", rows)
    issue = only_issue(check_quality(config, single(path)), "unreadable_file")
    assert issue.message.startswith(f"file {path} cannot be read as CSV with delimiter ',': ")
    assert issue.expected == "the same number of cells on every line"
    gone = tmp_path / "gone.csv"
    assert only_issue(check_quality(config, single(str(gone))), "unreadable_file").message == f"file {gone} does not exist"
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert only_issue(check_quality(config, single(str(folder))), "unreadable_file").message.startswith(
        f"file {folder} cannot be opened: ")


def test_missing_columns_are_each_named_with_the_columns_found(config, write_csv):
    header = [c for c in HEADER if c not in ("qty_pred", "cur_true")]
    rows = [[v for c, v in zip(HEADER, row, strict=False) if c in header] for row in GOOD_ROWS]
    path = write_csv("cols.csv", [header, *rows])
    report = check_quality(config, single(path))
    assert [(i.check, i.column) for i in report.issues] == [("missing_column", "cur_true"), ("missing_column", "qty_pred")]
    assert report.issues[1].message == f"file {path} has no column 'qty_pred' (its columns: {', '.join(header)})"
    assert report.issues[1].expected == "a column named 'qty_pred'"


def test_field_level_truth_errors_name_column_rows_and_expectation(config, write_csv):
    rows = [list(r) for r in GOOD_ROWS * 2]
    rows = with_cell(rows, 1, "name_true", "")          # line 3
    rows = with_cell(rows, 5, "name_true", "NA")        # line 7: a missing-value marker
    rows = with_cell(rows, 2, "qty_true", "2.5")        # line 4
    rows = with_cell(rows, 3, "total_true", '"12,50"')  # line 5, quoted
    rows = with_cell(rows, 4, "day_true", "31/02/2024")  # line 6
    rows = with_cell(rows, 6, "paid_true", "maybe")     # line 8
    rows = with_cell(rows, 7, "cur_true", "GBP")        # line 9
    rows = with_cell(rows, 0, "total_true", "-3")       # line 2
    for i, row in enumerate(rows):
        row[0] = f"r{i}"
    path = write_csv("bad.csv", [HEADER, *rows])
    report = check_quality(config, single(path))
    assert not report.passed
    got = {(i.check, i.column): (i.severity, i.rows, i.message, i.expected) for i in report.issues}
    where = lambda column, field: f"file {path} column '{column}' (field {field})"
    assert got == {
        ("missing_required", "name_true"): ("error", [3, 7], f"{where('name_true', 'name, string')}: 2 required value(s) missing: rows 3, 7 (e.g. 'NA')",
                                            "a truth value on every row (the field is required)"),
        ("invalid_type", "qty_true"): ("error", [4], f"{where('qty_true', 'qty, integer')}: 1 value(s) that do not parse as integer: row 4 (e.g. '2.5')",
                                       "a whole number such as 42"),
        ("invalid_type", "total_true"): ("error", [5], f"{where('total_true', 'total, number')}: 1 value(s) that do not parse as number: row 5 (e.g. '12,50')",
                                         "a number such as 12.5 (dot as decimal separator)"),
        ("invalid_type", "day_true"): ("error", [6], f"{where('day_true', 'day, date')}: 1 value(s) that do not parse as date: row 6 (e.g. '31/02/2024')",
                                       "a date such as 2024-12-31 or 31/12/2024 (day first; set dayfirst: false for the other order)"),
        ("invalid_type", "paid_true"): ("error", [8], f"{where('paid_true', 'paid, boolean')}: 1 value(s) that do not parse as boolean: row 8 (e.g. 'maybe')",
                                        "true/false, yes/no, y/n or 1/0"),
        ("unknown_category", "cur_true"): ("error", [9], f"{where('cur_true', 'cur, category')}: 1 value(s) outside the allowed categories: row 9 (e.g. 'GBP')",
                                           "one of EUR, USD"),
        ("out_of_range", "total_true"): ("error", [2], f"{where('total_true', 'total, number')}: 1 value(s) not >= 0: row 2 (e.g. '-3')",
                                         "a value >= 0"),
    }  # fmt: skip


def test_prediction_problems_are_warnings_and_still_evaluated(config, write_csv):
    rows = with_cell(GOOD_ROWS, 0, "total_pred", "-1")
    rows = with_cell(rows, 1, "qty_pred", "three")
    rows = with_cell(rows, 2, "cur_pred", "GBP")
    path = write_csv("preds.csv", [HEADER, *rows])
    report = check_quality(config, single(path))
    assert report.passed and report.errors == [] and report.warnings == report.issues
    assert {(i.check, i.column, i.severity, tuple(i.rows)) for i in report.issues} == {
        ("out_of_range", "total_pred", "warning", (2,)),
        ("invalid_type", "qty_pred", "warning", (3,)),
        ("unknown_category", "cur_pred", "warning", (4,)),
    }
    wrong = evaluate(config, single(path)).mismatches.filter(pl.col("prediction").is_in(["-1", "three", "GBP"]))
    assert wrong.height == 3 and set(wrong["outcome"]) == {"wrong value"}


def test_too_many_missing_values(make_config, write_csv):
    rows = with_cell(with_cell(GOOD_ROWS, 0, "qty_true", ""), 1, "qty_true", "n/a")
    path = write_csv("sparse.csv", [HEADER, *rows])
    assert check_quality(make_config(dataset={"max_missing_share": 0.5}), single(path)).passed  # 2 of 4 is allowed
    report = check_quality(make_config(dataset={"max_missing_share": 0.25}), single(path))
    issue = only_issue(report, "too_many_missing")
    assert not report.passed and issue.rows == [2, 3]
    assert issue.message == f"file {path} column 'qty_true' (field qty, integer): 2 missing value(s), more than 25% of 4 rows: rows 2, 3 (e.g. 'n/a')"
    assert issue.expected == "at most 25% of values missing (dataset.max_missing_share)"


def test_too_few_rows(make_config, good_csv):
    report = check_quality(make_config(dataset={"min_rows": 10}), single(good_csv))
    issue = only_issue(report, "too_few_rows")
    assert not report.passed and issue.file == good_csv and issue.row_count == 4
    assert issue.message == "the dataset has 4 record(s); the config asks for at least 10 (dataset.min_rows)"


def test_duplicate_and_missing_record_ids(config, write_csv):
    rows = [list(r) for r in GOOD_ROWS]
    rows[2][0] = "r1"
    rows[3][0] = ""
    path = write_csv("dups.csv", [HEADER, *rows])
    report = check_quality(config, single(path))
    dup = only_issue(report, "duplicate_record_id")
    assert dup.rows == [2, 4] and dup.column == "record_id"
    assert dup.message == f"file {path} column 'record_id': 2 rows share their record id with another row: rows 2, 4 (ids 'r1')"
    missing = only_issue(report, "missing_record_id")
    assert missing.rows == [5] and missing.message == f"file {path} column 'record_id': 1 row(s) have no record id: row 5"


def test_many_bad_rows_are_listed_up_to_a_limit_with_the_full_count(config, write_csv):
    rows = [[f"r{i}", "n", "n", "x", "1", "1", "1", "01/01/2024", "01/01/2024", "EUR", "EUR", "y", "y"] for i in range(30)]
    path = write_csv("many.csv", [HEADER, *rows])
    issue = only_issue(check_quality(config, single(path)), "invalid_type")
    assert issue.rows == list(range(2, 22)) and issue.row_count == 30
    assert issue.message.endswith(": rows 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, ... (30 in all) (e.g. 'x')")


def separate_files(write_csv, truth_ids: list[str], pred_ids: list[str]) -> DatasetFiles:
    names = ["record_id", "name", "total", "qty", "day", "cur", "paid"]
    by_id = {r[0]: r for r in GOOD_ROWS}
    truth = [[i, *by_id.get(i, GOOD_ROWS[0])[1::2]] for i in truth_ids]
    preds = [[i, *by_id.get(i, GOOD_ROWS[0])[2::2]] for i in pred_ids]
    return DatasetFiles(truth=write_csv("truth.csv", [names, *truth]), predictions=write_csv("preds.parquet.csv", [names, *preds]))


def test_separate_layout_joins_on_the_record_id(make_config, write_csv):
    files = separate_files(write_csv, ["r1", "r2", "r3", "r4"], ["r4", "r3", "r1", "r2"])
    config = make_config(layout="separate")
    assert check_quality(config, files).passed
    evaluation = evaluate(config, files)
    assert evaluation.per_record["record_id"].to_list() == ["r1", "r2", "r3", "r4"]
    assert evaluation.per_record["all_matched"].to_list() == [True, False, False, True]


def test_separate_layout_reports_unmatched_ids_both_ways(make_config, write_csv):
    files = separate_files(write_csv, ["r1", "r2", "r3", "x9"], ["r2", "r1", "zz", "r3", "yy"])
    report = check_quality(make_config(layout="separate"), files)
    assert not report.passed
    missing_pred = only_issue(report, "truth_without_prediction")
    assert (missing_pred.file, missing_pred.rows) == (files.truth, [5])
    assert missing_pred.message == f"file {files.truth}: 1 record(s) have no prediction in {files.predictions}: row 5 (ids 'x9')"
    assert missing_pred.expected == f"a row in {files.predictions} for every record id of the truth file"
    no_truth = only_issue(report, "prediction_without_truth")
    assert (no_truth.file, no_truth.rows) == (files.predictions, [4, 6])
    assert no_truth.message == f"file {files.predictions}: 2 prediction(s) have no truth in {files.truth}: rows 4, 6 (ids 'zz', 'yy')"


def test_separate_layout_reports_both_files_problems_at_once(make_config, tmp_path, write_csv):
    config = make_config(layout="separate")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    report = check_quality(config, DatasetFiles(truth=str(empty), predictions=write_csv("p.csv", [["record_id", "name"], ["r1", "a"]])))
    assert [i.check for i in report.issues] == ["empty_file"] + ["missing_column"] * 5
    report = check_quality(config, DatasetFiles(truth=str(empty)))
    assert report.issues[-1].message == "no predictions file was given; layout 'separate' needs it"


def test_separate_layout_duplicates_are_counted_in_their_own_file(make_config, write_csv):
    files = separate_files(write_csv, ["r1", "r2", "r2", "r3"], ["r1", "r2", "r3"])
    dup = only_issue(check_quality(make_config(layout="separate"), files), "duplicate_record_id")
    assert (dup.file, dup.rows) == (files.truth, [3, 4])


def test_evaluating_a_failing_dataset_is_refused_with_the_reasons(make_config, good_csv, tmp_path):
    with pytest.raises(DatasetInvalid) as caught:
        evaluate(make_config(dataset={"min_rows": 5}), single(good_csv))
    assert caught.value.message == ("dataset fails the quality check with 1 error(s): "
                                    "the dataset has 4 record(s); the config asks for at least 5 (dataset.min_rows)")  # fmt: skip
    with pytest.raises(DatasetUnreadable) as caught:
        load_dataset(make_config(), single(str(tmp_path / "nope.csv")))
    assert caught.value.issues[0].check == "unreadable_file"


def test_without_record_ids_rows_name_the_records(make_config, write_csv):
    header = HEADER[1:]
    path = write_csv("noid.csv", [header, *(r[1:] for r in GOOD_ROWS)])
    evaluation = evaluate(make_config(record_id=None), single(path))
    assert evaluation.per_record["record_id"].to_list() == ["2", "3", "4", "5"]


def test_a_named_sheet_and_spaces_around_headers(make_config, tmp_path):
    path = tmp_path / "book.xlsx"
    with xlsxwriter.Workbook(path) as book:
        book.add_worksheet("Notes").write(0, 0, "read me")
        data = book.add_worksheet("Data")
        data.write_row(0, 0, [f" {c} " for c in HEADER])
        for r, row in enumerate(GOOD_ROWS, start=1):
            data.write_row(r, 0, row)
    report = check_quality(make_config(dataset={"sheet": "Data"}), single(str(path)))
    assert report.passed and report.rows_checked == 4
    issue = only_issue(check_quality(make_config(dataset={"sheet": "Results"}), single(str(path))), "unreadable_file")
    assert issue.message.startswith(f"file {path}: sheet 'Results' cannot be read as a table: ")

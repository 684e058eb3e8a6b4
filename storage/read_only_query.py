"""Ad-hoc SQL over the state database that cannot change anything.

Read-only is a property of how the query runs, not of reading its text:

- DuckDB's own parser must find exactly one statement, and it must be a SELECT. That refuses
  what a transaction cannot undo or contain: COPY ... TO and EXPORT (files), ATTACH, INSTALL,
  LOAD, SET, PRAGMA, CALL, and EXPLAIN (EXPLAIN ANALYZE runs the statement it explains).
- The SELECT runs on a cursor of its own in a READ ONLY transaction that is always rolled
  back. DuckDB refuses every write a SELECT can still carry (a data-modifying CTE, nextval)
  before it touches a row, so the store's writer thread never meets a conflicting change.
"""

from __future__ import annotations

import duckdb

from dropwire.storage.errors import DropwireError


class QueryRefused(DropwireError):
    """The query is not one SELECT, so it could change the database or the files around it."""

    code = "query_refused"


def run_read_only_query(con: duckdb.DuckDBPyConnection, sql: str, params: list | tuple = ()) -> list[tuple]:
    """Rows of one SELECT over what `con` has committed; anything that could write is refused."""
    return run_read_only_table(con, sql, params)[1]


def run_read_only_table(con: duckdb.DuckDBPyConnection, sql: str,
                        params: list | tuple = ()) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of one SELECT, as run_read_only_query: a result shown to a person
    is read by its header, an empty one too."""
    cursor = con.cursor()
    try:
        try:
            statements = cursor.extract_statements(sql)
        except duckdb.Error as exc:
            raise DropwireError(f"the query does not parse: {exc}") from None
        kinds = [statement.type for statement in statements]
        if kinds != [duckdb.StatementType.SELECT]:
            raise QueryRefused("a query must be exactly one SELECT (read-only); got "
                               + (", ".join(k.name for k in kinds) or "nothing"), statements=[k.name for k in kinds])
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        try:
            rows = cursor.execute(sql, params).fetchall()
            return [column[0] for column in cursor.description], rows
        except duckdb.Error as exc:  # a write attempt included: DuckDB names the read-only mode that refused it
            raise DropwireError(f"the query failed and changed nothing: {exc}") from None
        finally:
            cursor.execute("ROLLBACK")
    finally:
        cursor.close()

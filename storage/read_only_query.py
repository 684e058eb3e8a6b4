"""Ad-hoc SQL over the state database that cannot change anything.

Read-only is a property of how the query runs, not of reading its text:

- DuckDB's own parser must find exactly one statement, and it must be a SELECT. That refuses
  what a transaction cannot undo or contain: COPY ... TO and EXPORT (files), ATTACH, INSTALL,
  LOAD, SET, PRAGMA, CALL, and EXPLAIN (EXPLAIN ANALYZE runs the statement it explains).
- The SELECT runs on a cursor of its own in a READ ONLY transaction that is always rolled
  back. DuckDB refuses every write a SELECT can still carry (a data-modifying CTE, nextval)
  before it touches a row, so the store's writer thread never meets a conflicting change.
  Only once it has refused one is the query's parse tree read, to name the write (DuckDB's
  own message speaks of the SELECT); a query that runs pays nothing for it.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from dropwire.functions.kit.errors import DropwireError


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
        except duckdb.Error as exc:
            failure = exc
        finally:
            cursor.execute("ROLLBACK")
        raise _refusal(cursor, sql, failure) from None
    finally:
        cursor.close()


# Sequence functions: a SELECT that calls one writes (DuckDB's read-only mode refuses it).
SEQUENCE_WRITERS = ("nextval", "setval")


def _refusal(cursor: duckdb.DuckDBPyConnection, sql: str, exc: duckdb.Error) -> DropwireError:
    """The error for a query DuckDB did not run: the write it carries, named, when its
    read-only mode refused it (stopped database or read-only transaction), else DuckDB's word."""
    if "read-only mode" not in str(exc):
        return DropwireError(f"the query failed and changed nothing: {exc}")
    nodes: set[str] = set()
    functions: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("type", "")).endswith("_QUERY_NODE"):  # DELETE_/UPDATE_/INSERT_QUERY_NODE
                nodes.add(node["type"].removesuffix("_QUERY_NODE"))
            if node.get("function_name") in SEQUENCE_WRITERS:
                functions.add(node["function_name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(cursor.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0]))  # pyright: ignore[reportOptionalSubscript]  # a scalar SELECT answers one row
    if nodes:
        writes = " and ".join(f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind}" for kind in sorted(nodes))
        return QueryRefused(f"a query only reads; this one runs {writes} inside its WITH clause (a data-modifying "
                            "CTE), so it was refused and changed nothing", writes=sorted(nodes))
    if functions:
        return QueryRefused(f"a query only reads; this one calls {', '.join(sorted(functions))}, which advances a "
                            "sequence, so it was refused and changed nothing", writes=sorted(functions))
    return QueryRefused(f"a query only reads; DuckDB refused this one as a write and nothing changed ({exc})")

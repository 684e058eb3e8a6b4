"""`dropwire db query` cannot change anything: not the database, not a file beside it, neither
on a stopped database nor through a running control plane's socket."""

from __future__ import annotations

import signal
import subprocess
import tempfile
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dropwire.functions.evaluation.states import MACHINES
from dropwire.functions.kit.errors import DropwireError
from dropwire.local_emulator.cli import app
from dropwire.local_emulator.control import ControlClient
from dropwire.local_emulator.settings import load_settings
from dropwire.storage.read_only_query import QueryRefused, run_read_only_query
from dropwire.storage.records import TaskSpec
from dropwire.storage.store import Store
from tests.conftest import DROPWIRE, REPO, wait_for

pytestmark = pytest.mark.slow

# Each way in, and the words of the one line that refuses it ({out} is an empty directory).
REFUSED = [
    ("DELETE FROM tasks", "got DELETE"),
    ("EXPLAIN ANALYZE DELETE FROM tasks", "got EXPLAIN"),
    ("EXPLAIN ANALYZE DELETE FROM state_history", "got EXPLAIN"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}/explained.csv'", "got EXPLAIN"),
    ("EXPLAIN SELECT 1", "got EXPLAIN"),
    ("COPY (SELECT 1) TO '{out}/copied.csv'", "got COPY"),
    ("COPY tasks TO '{out}/tasks.parquet'", "got COPY"),
    ("EXPORT DATABASE '{out}/exported'", "got EXPORT"),
    ("ATTACH '{out}/other.duckdb' AS other", "got ATTACH"),
    ("LOAD json", "got LOAD"),
    ("CALL checkpoint()", "got CALL"),
    ("PRAGMA enable_profiling", "got PRAGMA"),
    ("SET threads = 1", "got SET"),
    ("SELECT 1; DROP TABLE tasks", "got SELECT, DROP"),
    ("", "got nothing"),
    # SELECTs by DuckDB's parser that still write: DuckDB's read-only mode refuses them, and
    # the line names the write (not "SELECT", which DuckDB's own message names).
    ("WITH gone AS (DELETE FROM tasks RETURNING id) SELECT * FROM gone",
     "a query only reads; this one runs a DELETE inside its WITH clause (a data-modifying CTE)"),
    ("WITH gone AS (DELETE FROM state_history RETURNING seq) SELECT count(*) FROM gone", "runs a DELETE inside"),
    ("WITH u AS (UPDATE tasks SET priority = 9 RETURNING id) SELECT * FROM u", "runs an UPDATE inside"),
    ("SELECT nextval('probe')", "a query only reads; this one calls nextval, which advances a sequence"),
]


def seed(path: Path) -> None:
    with Store.open(path, MACHINES) as store:
        store.states.create("model", "m1", triggered_by="test")
        store.states.transition("model", "m1", trigger="dataset_uploaded", triggered_by="test")
        store.queue.enqueue(TaskSpec(name="anything", args={}))
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SEQUENCE probe")


def snapshot(path: Path) -> dict[str, object]:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        sequences = con.execute("SELECT sequence_name, last_value FROM duckdb_sequences()").fetchall()
    return {"counts": counts, "sequences": sequences}


def refuse_every_way(env: dict[str, str], out: Path) -> None:
    """The real `db query` command, in this process; it goes through the socket if one answers."""
    runner = CliRunner()
    for sql, words in REFUSED:
        result = runner.invoke(app, ["db", "query", sql.format(out=out)], env=env)
        assert isinstance(result.exception, DropwireError), (sql, result.output, result.exception)
        assert words in result.exception.message and "\n" not in result.exception.message, (sql, result.exception.message)
    assert "1" in runner.invoke(app, ["db", "query", "SELECT count(*) FROM tasks"], env=env).output


def check_nothing_changed(run_cli, data_dir: Path, before: dict[str, object], out: Path) -> None:
    assert snapshot(data_dir / "dropwire.duckdb") == before
    assert list(out.iterdir()) == []
    assert run_cli("db", "check").returncode == 0


def test_a_stopped_database_is_opened_read_only_and_nothing_gets_through(run_cli, dropwire_env, data_dir, tmp_path):
    seed(data_dir / "dropwire.duckdb")
    before = snapshot(data_dir / "dropwire.duckdb")
    out = tmp_path / "out"
    out.mkdir()
    refuse_every_way(dropwire_env, out)
    refused = run_cli("db", "query", "EXPLAIN ANALYZE DELETE FROM state_history")
    assert refused.returncode == 1 and refused.stderr.startswith("error: a query must be exactly one SELECT")
    assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
    check_nothing_changed(run_cli, data_dir, before, out)


def test_through_a_running_control_plane_nothing_gets_through(run_cli, dropwire_env, data_dir, tmp_path):
    seed(data_dir / "dropwire.duckdb")
    before = snapshot(data_dir / "dropwire.duckdb")
    out = tmp_path / "out"
    out.mkdir()
    log = tmp_path / "control.log"
    control = subprocess.Popen([*DROPWIRE, "control", "--tasks", "tests.storage.helpers:no_tasks"], env=dropwire_env,
                               cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    settings = load_settings(environ=dropwire_env)

    def answering() -> bool:
        client = ControlClient.try_connect(settings.control_socket_path, settings.control_key())
        if client is not None:
            client.close()
        return client is not None

    try:
        wait_for(answering, what="the control plane to answer on its socket")
        refuse_every_way(dropwire_env, out)
        refused = run_cli("db", "query", "WITH gone AS (DELETE FROM tasks RETURNING id) SELECT * FROM gone")
        assert refused.returncode == 1 and "runs a DELETE inside its WITH clause" in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
    finally:
        control.send_signal(signal.SIGTERM)
        assert control.wait(timeout=30) == 0, log.read_text()
    check_nothing_changed(run_cli, data_dir, before, out)


WRITES = {"DELETE": "DELETE FROM tasks RETURNING id", "UPDATE": "UPDATE tasks SET priority = 1 RETURNING id",
          "INSERT": "INSERT INTO tasks (id) VALUES (99) RETURNING id"}


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.sampled_from(sorted(WRITES)), min_size=1, max_size=3),
       names=st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=3, max_size=3, unique=True),
       read_only_file=st.booleans())
def test_every_data_modifying_cte_is_refused_by_the_write_it_runs(kinds, names, read_only_file):
    """Whatever writes a WITH clause carries, on a stopped file (opened read-only) or a live
    connection (read-only transaction): refused naming each write, nothing changed."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "db.duckdb"
        with duckdb.connect(str(path)) as con:
            con.execute("CREATE TABLE tasks (id INTEGER, priority INTEGER); INSERT INTO tasks VALUES (1, 0)")
        ctes = ", ".join(f'"{name}" AS ({WRITES[kind]})' for name, kind in zip(names, kinds, strict=False))
        sql = f'WITH {ctes} SELECT * FROM "{names[0]}"'
        with duckdb.connect(str(path), read_only=read_only_file) as con:
            with pytest.raises(QueryRefused) as refused:
                run_read_only_query(con, sql)
            assert con.execute("SELECT * FROM tasks").fetchall() == [(1, 0)]
    message = refused.value.message
    assert "inside its WITH clause" in message and "SELECT" not in message, message
    assert all(f" {kind}" in message for kind in kinds), message

"""`dropwire db query` cannot change anything: not the database, not a file beside it, neither
on a stopped database nor through a running control plane's socket."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from dropwire.functions.evaluation.states import MACHINES
from dropwire.local_emulator.cli import app
from dropwire.local_emulator.control import ControlClient
from dropwire.local_emulator.settings import load_settings
from dropwire.storage.errors import DropwireError
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
    # SELECTs by DuckDB's parser that still write: DuckDB's read-only mode refuses them.
    ("WITH gone AS (DELETE FROM tasks RETURNING id) SELECT * FROM gone", "read-only mode"),
    ("WITH gone AS (DELETE FROM state_history RETURNING seq) SELECT count(*) FROM gone", "read-only mode"),
    ("SELECT nextval('probe')", "read-only mode"),
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
        assert refused.returncode == 1 and "read-only mode" in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1
    finally:
        control.send_signal(signal.SIGTERM)
        assert control.wait(timeout=30) == 0, log.read_text()
    check_nothing_changed(run_cli, data_dir, before, out)

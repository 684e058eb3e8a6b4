"""The `dropwire` command as a person runs it: real subprocesses, real files."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from dropwire.storage import migrate
from tests.conftest import DROPWIRE, REPO


def test_settings_shows_effective_values_with_secrets_masked(run_cli, dropwire_env, data_dir):
    result = run_cli("settings", env={**dropwire_env, "DROPWIRE_CONTROL_AUTHKEY": "hunter2"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["db_path"] == f"{data_dir}/dropwire.duckdb"
    assert shown["control_authkey"] == "****" and "hunter2" not in result.stdout


def test_errors_print_one_line_and_no_traceback(run_cli, dropwire_env, data_dir):
    bad = run_cli("settings", env={**dropwire_env, "DROPWIRE_QUEUE__WORKERS": "lots"})
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: invalid settings") and "Traceback" not in bad.stderr
    (data_dir / "dropwire.duckdb").write_text("not a database at all" * 100)
    foreign = run_cli("db", "check")
    assert foreign.returncode == 1 and "is not a dropwire database" in foreign.stderr
    assert "Traceback" not in foreign.stderr


def test_db_commands_upgrade_downgrade_and_report(run_cli, data_dir):
    assert run_cli("db", "upgrade").returncode == 0
    current = run_cli("db", "current")
    last = migrate.load_migrations()[-1]
    assert f"schema version {migrate.LATEST}" in current.stdout and f"{last.version:04d}_{last.name}" in current.stdout
    assert run_cli("db", "downgrade", "1").returncode == 0
    assert "schema version 1" in run_cli("db", "current").stdout
    with duckdb.connect(str(data_dir / "dropwire.duckdb")) as con:
        con.execute("INSERT INTO schema_migrations VALUES (?, 'future', 'x', now())", [migrate.LATEST + 1])
    newer = run_cli("db", "upgrade")
    assert newer.returncode == 1 and f"schema version {migrate.LATEST + 1}, newer than this dropwire knows" in newer.stderr


@pytest.mark.slow
@pytest.mark.timeout(660)  # the runtime's first start builds its models; the box may be busy
def test_demo_runs_the_evaluation_workflow_and_a_batch_and_leaves_a_consistent_database(run_cli, data_dir):
    demo = run_cli("demo", timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    rows = {line.split("│")[1].split()[0]: line for line in demo.stdout.splitlines()
            if line.startswith("│ ") and line.split("│")[1].strip().split(" ")[0] in ("gpt-4o", "claude-3.5", "llama-3.1")}
    assert "EVALUATION_COMPLETED" in rows["gpt-4o"] and "EVALUATION_COMPLETED" in rows["claude-3.5"]
    assert "llama-3.1" in rows  # still at work at the summary, or done: either is stated
    assert "AWAITING_DATA_FIX" in demo.stdout and "'YEN'" in demo.stdout and "record id" in demo.stdout
    reports = re.findall(r"report (\S+report\.xlsx)", demo.stdout)
    assert len(reports) == 2 and all(Path(r).read_bytes()[:2] == b"PK" for r in reports)
    assert "is consistent" in run_cli("db", "check").stdout
    kinds = run_cli("notifications", "list").stdout
    assert all(kind in kinds for kind in ("template_sent", "qc_failed", "qc_passed", "evaluation_completed"))
    assert run_cli("dlq", "list").returncode == 0
    # The batch part: dropped as a file, run on the runtime's test model, the runtime stopped.
    assert "a tiny TEST model" in demo.stdout
    assert re.search(r"batch_\w+: completed\n", demo.stdout), demo.stdout
    assert "requests: 20 total, 20 completed, 0 failed" in demo.stdout
    output = Path(re.search(r"(\S+\.output\.jsonl)", demo.stdout).group(1)).read_text().splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == [f"req-{i}" for i in range(20)]
    assert len(re.findall(r"req-\d+: \"", demo.stdout)) == 3
    listed = [line for line in run_cli("batches", "list").stdout.splitlines() if "batch_" in line]
    assert len(listed) == 1 and re.search(r"completed .* 20 .* 20 .* 0 ", listed[0]), listed
    assert "shutdown: flushed queues" in (data_dir / "demo-runtime.log").read_text()


def test_db_query_is_read_only(run_cli):
    assert run_cli("db", "upgrade").returncode == 0
    assert "0" in run_cli("db", "query", "SELECT count(*) FROM tasks").stdout
    for sql, kind in (("DELETE FROM tasks", "DELETE"), ("SELECT 1; DROP TABLE tasks", "SELECT, DROP")):
        refused = run_cli("db", "query", sql)
        assert refused.returncode == 1 and f"must be exactly one SELECT (read-only); got {kind}" in refused.stderr
    assert run_cli("db", "check").returncode == 0


def test_cli_modules_read_top_down_and_never_import_the_assembling_module():
    """cli.py assembles the sub-apps; they share cli_context and never reach back into cli.py."""
    imported_by: dict[str, set[str]] = {}
    for path in (REPO / "local_emulator").glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        imported_by[path.stem] = names
    reaching_back = sorted(module for module, names in imported_by.items() if "dropwire.local_emulator.cli" in names)
    assert reaching_back == ["__main__"]  # the entry point, nothing else
    assert {"dropwire.local_emulator.cli_platform", "dropwire.local_emulator.cli_store",
            "dropwire.local_emulator.runtime_cli"} <= imported_by["cli"]
def test_db_export_is_read_back_by_duckdb(run_cli, data_dir, tmp_path):
    from dropwire.functions.evaluation.states import MACHINES
    from dropwire.storage.records import TaskSpec
    from dropwire.storage.store import Store

    with Store.open(data_dir / "dropwire.duckdb", MACHINES) as store:
        store.states.create("model", "m1", triggered_by="test")
        store.queue.enqueue(TaskSpec(name="exported", args={"n": 1}))
    target = tmp_path / "snapshot"
    exported = run_cli("db", "export", str(target))
    assert exported.returncode == 0, exported.stderr
    with duckdb.connect() as con:
        con.execute(f"IMPORT DATABASE '{target}'")
        assert con.execute("SELECT kind, entity_id, state FROM entity_states").fetchall() == [("model", "m1", "REGISTERED")]
        assert con.execute("SELECT name, args->>'n' FROM tasks").fetchall() == [("exported", "1")]
        assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(target / "state_history.parquet")]).fetchone() == (1,)
    again = run_cli("db", "export", str(target))
    assert again.returncode == 1 and "is not empty; choose a new one" in again.stderr


def test_db_query_prints_the_column_names_and_says_when_no_row_matched(run_cli):
    """A result is read by its header: the query's own column names, also over an empty result."""
    assert run_cli("db", "upgrade").returncode == 0
    empty = run_cli("db", "query", "SELECT id, name AS task_name, status FROM tasks")
    assert empty.returncode == 0, empty.stderr
    assert ["id", "task_name", "status"] in _rows(empty.stdout), empty.stdout
    assert "no rows" in empty.stdout
    counted = run_cli("db", "query", "SELECT count(*) AS n, 'x' AS label FROM tasks")
    assert _rows(counted.stdout) == [["n", "label"], ["0", "x"]], counted.stdout


def _rows(printed: str) -> list[list[str]]:
    """The cells of each line of a printed table (header included), without its rules."""
    return [[cell.strip() for cell in re.split(r"[│┃]", line)[1:-1]] for line in printed.splitlines()
            if line.startswith(("│", "┃"))]


# Every command that only reads the database, with arguments that make it run. A command
# added to the CLI must be named here or in WRITING (the test below fails otherwise).
READ_ONLY = {
    "db current": (), "db check": (), "db query": ("SELECT 1",), "db export": ("{tmp}/snapshot",),
    "queue stats": (), "queue status": ("1",), "queue invocations": (), "dlq list": (), "dlq show": ("1",), "notifications list": (),
    "batches list": (), "batches workers": (), "batches benchmarks": (), "workflow status": (),
    "quota usage": ("batch-upstream",), "schedule list": (), "bucket unadmitted": (),
}
# Commands that write the database on purpose (or run a process that owns it), and two that
# never open it.
WRITING = {"db upgrade", "db downgrade", "queue cleanup", "dlq replay", "workflow suspend", "workflow resume",
           "workflow resume-quota-exceeded", "schedule run", "invoke", "reprocess", "emulate", "control", "worker",
           "demo", "runtime serve", "runtime serve-ray", "runtime train", "runtime make-default-model"}
NO_DATABASE = {"settings", "events s3"}


def test_every_command_is_classed_as_read_only_or_writing():
    import typer.main

    from dropwire.local_emulator.cli import app

    def leaves(command, prefix=()):
        for name, sub in getattr(command, "commands", {}).items():
            yield from leaves(sub, (*prefix, name)) if hasattr(sub, "commands") else [" ".join((*prefix, name))]

    assert set(leaves(typer.main.get_command(app))) == set(READ_ONLY) | WRITING | NO_DATABASE


@pytest.mark.slow  # a real process or server: not in the fast tier
@pytest.mark.parametrize("command", sorted(READ_ONLY))
def test_a_read_only_command_without_a_database_refuses_and_creates_nothing(command, dropwire_env, tmp_path):
    """In a directory where nothing has run: one line naming the database and what to do,
    exit 1, and no data dir, database or control key made."""
    here = tmp_path / "fresh"
    here.mkdir()
    env = {k: v for k, v in dropwire_env.items() if k != "DROPWIRE_DATA_DIR"}  # the default: ./.dropwire
    args = [a.format(tmp=tmp_path) for a in READ_ONLY[command]]
    result = subprocess.run([*DROPWIRE, *command.split(), *args], env=env, cwd=here, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    database = here / ".dropwire/dropwire.duckdb"
    assert result.stderr.splitlines() == [
        f"error: database {database} does not exist yet: nothing has run with data dir {here / '.dropwire'}; "
        "`dropwire emulate` (or `dropwire demo`) there creates it, or set DROPWIRE_DATA_DIR to the data dir that "
        "has one"], result.stderr
    assert result.stdout == ""
    assert list(here.iterdir()) == [] and not (tmp_path / "snapshot").exists()


@pytest.mark.slow
def test_the_cli_loads_no_heavy_library_before_a_command_runs():
    """`dropwire --help` (and every command's start) imports the CLI alone: the store, polars,
    pyarrow, DuckDB, torch and MLflow load inside the command that uses them."""
    probe = ("import sys; from dropwire.local_emulator.cli import app; "
             "print(sorted({'polars', 'pyarrow', 'duckdb', 'torch', 'mlflow'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]", loaded.stdout

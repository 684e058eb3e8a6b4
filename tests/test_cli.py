"""The `dropwire` command as a person runs it: real subprocesses, real files."""

from __future__ import annotations

import json

import duckdb


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
    assert "schema version 4" in current.stdout and "0004_notifications" in current.stdout
    assert run_cli("db", "downgrade", "1").returncode == 0
    assert "schema version 1" in run_cli("db", "current").stdout
    with duckdb.connect(str(data_dir / "dropwire.duckdb")) as con:
        con.execute("INSERT INTO schema_migrations VALUES (7, 'future', 'x', now())")
    newer = run_cli("db", "upgrade")
    assert newer.returncode == 1 and "schema version 7, newer than this dropwire knows" in newer.stderr


def test_demo_runs_the_walkthrough_and_leaves_a_consistent_database(run_cli):
    demo = run_cli("demo", timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    model_rows = [line for line in demo.stdout.splitlines() if line.startswith("│ model ")]
    assert len(model_rows) == 3 and all("EVALUATION_COMPLETED" in row for row in model_rows)
    assert "AWAITING_DATA_FIX" in demo.stdout and "dead letter: task" in demo.stdout
    assert "is consistent" in run_cli("db", "check").stdout
    letters = run_cli("dlq", "list")
    assert "demo.quality_check" in letters.stdout
    task_id = letters.stdout.split("│")[1].strip() if "│" in letters.stdout else "1"
    shown = json.loads(run_cli("dlq", "show", task_id).stdout)
    assert "do not decode" in shown["last_error"] and shown["history"][0]["outcome"] == "failed"
    assert "replayed as task" in run_cli("dlq", "replay", task_id).stdout
    stats = json.loads(run_cli("queue", "stats").stdout)
    assert stats["by_status"]["queued"] == 1 and stats["dead_letters"] == 0


def test_db_query_is_read_only(run_cli):
    assert run_cli("db", "upgrade").returncode == 0
    assert "0" in run_cli("db", "query", "SELECT count(*) FROM tasks").stdout
    for sql, kind in (("DELETE FROM tasks", "DELETE"), ("SELECT 1; DROP TABLE tasks", "SELECT, DROP")):
        refused = run_cli("db", "query", sql)
        assert refused.returncode == 1 and f"must be exactly one SELECT (read-only); got {kind}" in refused.stderr
    assert run_cli("db", "check").returncode == 0
